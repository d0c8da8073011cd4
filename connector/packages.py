"""dlt load packages a killed run left between two of dlt's file steps: finish what dlt began.

dlt normalizes a package in two steps: it moves the package it built to `load/normalized/`, then
deletes the extracted package it built it from. A process killed between the two leaves both,
and every later normalize builds the package again and fails on the move ("Directory not
empty"). The move is atomic, so the normalized package is whole: `finish_normalizing` deletes the
extracted copy, as dlt would have.

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


def finish_kill_leftovers(pipeline: dlt.Pipeline) -> list[str]:
    """Finish both, before dlt normalizes or loads what is pending; returns the load ids archived."""
    finish_normalizing(pipeline)
    return finish_archiving(pipeline)


def finish_normalizing(pipeline: dlt.Pipeline) -> list[str]:
    """Delete the extracted copies of packages a kill left normalized; returns their load ids.

    Also deletes what a normalize that failed on the move left in `load/new/` (a run before
    this repair existed).
    """
    normalize = pipeline._get_normalize_storage()
    if not normalize.is_storage_ready():
        return []  # nothing was ever extracted here
    storage = pipeline._get_load_storage()
    finished = []
    for load_id in normalize.extracted_packages.list_packages():
        moved = (storage.get_normalized_package_path(load_id), storage.get_loaded_package_path(load_id))
        if not any(storage.storage.has_folder(path) for path in moved):
            continue
        normalize.extracted_packages.delete_package(load_id)
        storage.new_packages.delete_package(load_id, not_exists_ok=True)
        logger.info(
            "Deleted the extracted copy of load package %s, which a killed run had normalized", load_id
        )
        finished.append(load_id)
    return finished


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
