"""dlt load packages a killed run left completed but not archived: finish archiving them.

dlt completes a package in three steps: it records the load in the destination (`_dlt_loads`),
writes `package_completed.json` into `load/normalized/<load_id>`, then moves the folder to
`load/loaded/`. A process killed between the last two leaves a package that dlt's loader
refuses for good ("already completed, but another complete was requested"), on every later
run. This module recognises that package and finishes it: archived when the destination holds
its load, or handed back to dlt's loader (marker removed) when it does not.
"""

from __future__ import annotations

import logging
import os

import dlt
from dlt.common.storages.load_package import PackageStorage
from dlt.common.storages.load_storage import LoadStorage

from connector.warehouse import read_table

logger = logging.getLogger(__name__)

LOADED = "loaded"  # the marker's text for a package whose jobs all ran (else "aborted")


def finish_archiving(pipeline: dlt.Pipeline) -> list[str]:
    """Archive the packages a kill left completed in `load/normalized/`; returns their load ids.

    A package marked loaded whose jobs all ran and whose load the destination records is moved
    to `load/loaded/`, as dlt would have. One whose load the destination does not record (or
    that still has jobs to run) loses its marker, so that dlt's loader loads what is missing
    and completes it. An aborted package is archived as it is.
    """
    storage = pipeline._get_load_storage()
    if not storage.storage.has_folder(LoadStorage.NORMALIZED_FOLDER):
        return []  # nothing was ever normalized here
    packages = storage.normalized_packages
    archived = []
    for load_id in storage.list_normalized_packages():
        if not packages.is_package_completed(load_id):
            continue
        marker = os.path.join(packages.get_package_path(load_id), PackageStorage.PACKAGE_COMPLETED_FILE_NAME)
        state = packages.storage.load(marker).strip()
        unfinished = packages.list_new_jobs(load_id) or packages.list_started_jobs(load_id)
        if state == LOADED and (unfinished or not load_recorded(pipeline, load_id)):
            logger.warning("Load package %s was marked complete before it was: loading it again", load_id)
            packages.storage.delete(marker)
            continue
        storage.storage.rename_tree(
            storage.get_normalized_package_path(load_id), storage.get_loaded_package_path(load_id)
        )
        storage.maybe_remove_completed_jobs(load_id)
        logger.info("Archived load package %s, which a killed run had completed", load_id)
        archived.append(load_id)
    return archived


def load_recorded(pipeline: dlt.Pipeline, load_id: str) -> bool:
    """Whether the destination records the load (`_dlt_loads`); False where it cannot be asked.

    dlt records a load only once every job of its package has run, so a recorded load has all
    of the package's rows. Destinations without SQL (files) are not asked: completing their
    load again writes the same record again.
    """
    if not pipeline.default_schema_name:
        return False
    rows = read_table(
        pipeline,
        pipeline.default_schema.loads_table_name,
        lambda table: f"SELECT COUNT(*) FROM {table} WHERE load_id = %s",
        load_id,
        what=f"Load {load_id} not looked up in the destination",
    )
    return bool(rows and rows[0][0])
