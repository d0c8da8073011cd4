"""Attachment files: id-only paths, sha256, no second download of an unchanged file, a size cap."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from connector.emulator.data import attachment_bytes
from connector.emulator.emulator import Emulator
from connector.files import safe_segment
from tests.synctools import Warehouse, readable, requests_by

# Ids of letters, digits, `-` and `_` (uuids, numbers, codes) are their own path segment.
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
# Every other id the emulator serves, beside the segment it must be stored under.
ESCAPED_SEGMENTS = {
    "ACME LTD": "ACME%20LTD",
    "A/B-001": "A%2FB-001",
    "what?1": "what%3F1",
    "hash#7": "hash%237",
    "100%": "100%25",
    "a+b": "a%2Bb",
    "Café-Ünïcödé": "Caf%C3%A9-%C3%9Cn%C3%AFc%C3%B6d%C3%A9",
    "東京-42": "%E6%9D%B1%E4%BA%AC-42",
    " leading-space": "%20leading-space",
    "trailing-dot.": "trailing-dot%2E",
    "semi;colon": "semi%3Bcolon",
    "%2F-already-encoded": "%252F-already-encoded",
    "ACME LTD #12": "ACME%20LTD%20%2312",
    ".": "%2E",
    "..": "%2E%2E",
    "...": "%2E%2E%2E",
    "%2E%2E": "%252E%252E",
}
SEGMENTS = {
    **ESCAPED_SEGMENTS,
    "../etc": "%2E%2E%2Fetc",
    "a\\b": "a%5Cb",
    "": "%00",
    "3fa85f64-5717-4562-b3fc-2c963f66afa6": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "SL_0042": "SL_0042",
}


def expected_segment(value: str) -> str:
    if PLAIN_ID.fullmatch(value):
        return value
    return ESCAPED_SEGMENTS[value]


def stored_attachments(emulator: Emulator) -> dict[tuple[str, str, str, str], bytes]:
    out = {}
    for company in readable(emulator):
        for (connection_id, customer_id), items in company.attachments.items():
            for attachment in items:
                out[(company.id, connection_id, customer_id, attachment.id)] = attachment_bytes(attachment)
    return out


@pytest.mark.parametrize(("value", "segment"), SEGMENTS.items(), ids=[repr(v) for v in SEGMENTS])
def test_safe_segment(value: str, segment: str) -> None:
    assert safe_segment(value) == segment


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
    assert {r[2] for r in rows} & set(ESCAPED_SEGMENTS), "no file of an id that needs escaping"
    for company_id, connection_id, customer_id, attachment_id, path, sha256, status in rows:
        content = expected[(company_id, connection_id, customer_id, attachment_id)]
        relative = Path(path).relative_to(files)
        key = (company_id, connection_id, customer_id, attachment_id)
        assert relative.parts == tuple(expected_segment(p) for p in key)
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
    stored = [a for c in readable(emulator) for files_of in c.attachments.values() for a in files_of]
    assert any(a.file_size <= cap for a in stored)
    assert any(a.file_size > cap and a.report_size for a in stored), "none refused by its fileSize"
    assert any(a.file_size > cap and not a.report_size for a in stored), "none refused once downloaded"

    warehouse.sync(download_files=True, files_url=str(files), max_file_size=cap)

    expected = stored_attachments(emulator)
    rows = warehouse.rows(
        "SELECT company_id, connection_id, customer_id, id, file_status FROM codat.customer_attachments"
    )
    assert len(rows) == len(expected)
    for *key, status in rows:
        size = len(expected[tuple(key)])
        assert status == ("too_large" if size > cap else "downloaded"), (key, size)
    assert all(p.stat().st_size <= cap for p in files.rglob("*") if p.is_file())
