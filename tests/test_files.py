"""Attachment files: id-only paths, sha256, no second download of an unchanged file, a size cap."""

from __future__ import annotations

import hashlib
from pathlib import Path

from connector.emulator.data import attachment_bytes
from connector.emulator.server import Emulator
from connector.files import safe_segment
from tests.synctools import Warehouse, readable, requests_by


def stored_attachments(emulator: Emulator) -> dict[tuple[str, str, str, str], bytes]:
    out = {}
    for company in readable(emulator):
        for (connection_id, customer_id), items in company.attachments.items():
            for attachment in items:
                out[(company.id, connection_id, customer_id, attachment.id)] = attachment_bytes(attachment)
    return out


def test_files_are_saved_under_id_paths_with_their_sha256(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync(download_files=True, files_url=str(files))

    expected = stored_attachments(emulator)
    assert summary.files == len(expected) > 0
    rows = warehouse.rows(
        "SELECT company_id, connection_id, customer_id, id, file_path, sha256, file_status "
        "FROM codat.customer_attachments"
    )
    assert len(rows) == len(expected)
    for company_id, connection_id, customer_id, attachment_id, path, sha256, status in rows:
        content = expected[(company_id, connection_id, customer_id, attachment_id)]
        relative = Path(path).relative_to(files)
        assert relative.parts == tuple(
            safe_segment(p) for p in (company_id, connection_id, customer_id, attachment_id)
        )
        assert Path(path).read_bytes() == content
        assert sha256 == hashlib.sha256(content).hexdigest()
        assert status == "downloaded"
    on_disk = [p for p in files.rglob("*") if p.is_file()]
    assert len(on_disk) == len(expected)
    assert all(files in p.resolve().parents for p in on_disk)


def test_unchanged_files_are_not_downloaded_again(emulator: Emulator, base_url: str, tmp_path: Path) -> None:
    files = tmp_path / "files"
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(download_files=True, files_url=str(files))
    company = readable(emulator)[0]
    with_files = [cid for (conn, cid), items in company.attachments.items() if items]
    emulator.store.mutate(company.id, "modify", ids=with_files)
    emulator.clear_log()

    summary = warehouse.sync(download_files=True, files_url=str(files))

    assert requests_by(emulator, "list-customer-attachments") == len(with_files)
    assert requests_by(emulator, "download-customer-attachment") == 0
    assert summary.files == 0
    statuses = warehouse.rows("SELECT DISTINCT file_status FROM codat.customer_attachments")
    assert sorted(statuses) == [("downloaded",), ("unchanged",)]


def test_files_over_the_size_cap_are_not_downloaded(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    warehouse = Warehouse(tmp_path, base_url)
    cap = 4096

    warehouse.sync(download_files=True, files_url=str(files), max_file_size=cap)

    expected = stored_attachments(emulator)
    rows = warehouse.rows(
        "SELECT company_id, connection_id, customer_id, id, file_status FROM codat.customer_attachments"
    )
    for *key, status in rows:
        size = len(expected[tuple(key)])
        assert status == ("too_large" if size > cap else "downloaded"), (key, size)
    assert all(p.stat().st_size <= cap for p in files.rglob("*") if p.is_file())
