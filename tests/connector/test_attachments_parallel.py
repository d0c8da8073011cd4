"""Attachment listings of many companies at once: nothing lost, nothing listed twice, state clean."""

from __future__ import annotations

from collections import Counter

from connector.emulator.emulator import Emulator
from tests.attachmenttools import attachment_rows, every_listing, listings, loaded
from tests.synctools import Warehouse, readable


def test_companies_are_listed_at_once_and_nothing_is_lost_or_listed_twice(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.reset(7, 8, 600)
    emulator.latency = 0.003
    companies = {c.id for c in readable(emulator)}
    assert len(companies) == 5
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync()

    order = [company for company, _, _ in listings(emulator)]
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert switches > 3 * len(companies), "companies must interleave: listed at once, not one by one"
    assert Counter(listings(emulator, status=None)).most_common(1)[0][1] == 1
    assert set(listings(emulator)) == every_listing(emulator)
    assert loaded(warehouse) == attachment_rows(emulator)
    assert summary.attachments == len(attachment_rows(emulator))
    assert warehouse.state()["attachment_watermarks"] == {}
    assert {r["attachments_deferred"] for r in summary.status_rows} == {0}
    emulator.clear_log()

    again = warehouse.sync()

    assert listings(emulator) == []
    assert again.attachments == 0


def test_ten_companies_with_a_flaky_api_still_load_every_attachment_once(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.reset(11, 14, 700)
    emulator.latency = 0.002
    emulator.add_fault("503", count=15, match="/attachments")
    emulator.add_fault("reset", count=5, match="/attachments")
    companies = readable(emulator)
    assert len(companies) == 11
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync(max_attempts=6)

    unread = {c.id for c in emulator.store.companies.values() if c.accounting_connections} - {
        c.id for c in companies
    }
    assert summary.failed == []
    not_ready = {r["company_id"] for r in summary.status_rows if r["status"] == "not_ready"}
    assert not_ready == unread  # Codat never read their customers (409): not ours to list
    assert [e["fault"] for e in emulator.request_log].count("503") == 15
    assert set(listings(emulator)) == every_listing(emulator)
    assert Counter(listings(emulator)).most_common(1)[0][1] == 1
    assert loaded(warehouse) == attachment_rows(emulator)
    assert warehouse.state()["attachment_watermarks"] == {}
