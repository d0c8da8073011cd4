"""Attachment files saved to a local folder or any fsspec URL, under paths built from ids only."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import fsspec

from connector.disk import describe_full_disk, full_disk_path
from connector.errors import InvalidOption
from connector.pacing import DISK_FULL
from connector.records import Json

if TYPE_CHECKING:
    from connector.client import CodatClient
    from connector.status import RunReport


def safe_segment(value: str) -> str:
    """An id as one harmless path segment: no separators, no `.` or `..`, nothing to expand."""
    return quote(value, safe="-_").replace(".", "%2E") or "%00"


class FileStore:
    """Downloads attachment bytes once per version, recording path, size and sha256 on the row.

    `index` (the source state's) remembers each stored file's `dateCreated`, size and
    sha256, so an unchanged file is not downloaded again.
    """

    def __init__(self, url: str, max_size: int, index: dict[str, Any]) -> None:
        if max_size < 1:
            raise InvalidOption(f"max_file_size must be a positive number of bytes; got {max_size}")
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.url = url
        self.max_size = max_size
        self.index = index
        self._lock = threading.Lock()

    def path_for(self, row: Json) -> str:
        """Where a row's file lives: company/connection/customer/attachment, ids only."""
        parts = [row["companyId"], row["connectionId"], row["customerId"], row["id"]]
        return "/".join([self.root.rstrip("/"), *(safe_segment(str(p)) for p in parts)])

    def fetch(self, client: CodatClient, row: Json, report: RunReport) -> Json:
        """Download the row's file unless it is too large or already stored unchanged.

        Raises:
            RunStopped: The files folder is full: the run sends no more requests.
        """
        path = self.path_for(row)
        key = path.removeprefix(self.root.rstrip("/") + "/")
        version = f"{row.get('dateCreated')}|{row.get('fileSize')}"
        reported = row.get("fileSize")
        with self._lock:
            known = self.index.get(key)
        row = {**row, "filePath": path, "sha256": None}
        if isinstance(reported, int) and reported > self.max_size:
            return {**row, "fileStatus": "too_large"}
        if known and known.get("version") == version and self.fs.exists(path):
            return {**row, "sha256": known["sha256"], "fileStatus": "unchanged"}
        data = client.download_customer_attachment(
            row["companyId"], row["connectionId"], row["customerId"], row["id"]
        )
        if len(data) > self.max_size:
            return {**row, "fileStatus": "too_large"}
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path + ".part", data)
            self.fs.mv(path + ".part", path)
        except OSError as exc:
            written = full_disk_path(exc)
            if written is None:
                raise
            with contextlib.suppress(OSError):  # the part written before the disk filled
                self.fs.rm(path + ".part")
            # No more downloads (nor requests) in this run: the listing waits for the next.
            folder = {"the attachment files folder": Path(self.root)}
            client.pacer.stop.trip(DISK_FULL, describe_full_disk(written or path, folder))
            client.pacer.stop.check()
        with self._lock:
            self.index[key] = {"version": version, "sha256": digest}
        report.company(row["companyId"]).files_downloaded += 1
        return {**row, "sha256": digest, "fileStatus": "downloaded"}
