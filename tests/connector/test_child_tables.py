"""Child tables written as Arrow: exact after changes and deletes, upgraded, no field lost."""

from __future__ import annotations

import json
import logging

import dlt

from connector.emulator.emulator import Emulator
from tests.synctools import Warehouse, readable

CHILD_TABLES = ("customers__addresses", "customers__contacts", "customers__contacts__phone")
ORPHANS = (
    "SELECT COUNT(*) FROM codat.{table} x "
    "WHERE NOT EXISTS (SELECT 1 FROM codat.customers c WHERE c._dlt_id = x._dlt_root_id)"
)


def expected_children(emulator: Emulator, keep=lambda record: True) -> dict[str, int]:
    records = [r for c in readable(emulator) for r in c.customers.values() if keep(r)]
    contacts = [k for r in records for k in r.get("contacts") or []]
    return {
        "customers__addresses": sum(len(r.get("addresses") or []) for r in records),
        "customers__contacts": len(contacts),
        "customers__contacts__phone": sum(len(k.get("phone") or []) for k in contacts),
    }


def loaded_children(warehouse: Warehouse) -> dict[str, int]:
    return {t: warehouse.rows(f"SELECT COUNT(*) FROM codat.{t}")[0][0] for t in CHILD_TABLES}


def is_deleted(record: dict) -> bool:
    metadata = record.get("metadata")
    return isinstance(metadata, dict) and bool(metadata.get("isDeleted"))


def test_changed_customers_keep_only_their_latest_child_rows(emulator: Emulator, base_url: str, tmp_path):
    emulator.reset(7, 3, 300)
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(attachments=False)
    company = readable(emulator)[0]
    changed = emulator.store.mutate(company.id, "modify", count=30)
    record = company.customers[changed[0]]
    emulator.store.put_customer(company, {**record, "addresses": [], "contacts": None})

    warehouse.sync(attachments=False)

    assert loaded_children(warehouse) == expected_children(emulator)
    for table in CHILD_TABLES:
        assert warehouse.rows(ORPHANS.format(table=table)) == [(0,)], table
    emptied = warehouse.rows(
        "SELECT COUNT(*) FROM codat.customers__addresses a JOIN codat.customers c "
        f"ON c._dlt_id = a._dlt_parent_id WHERE c.id = '{changed[0]}'"
    )
    assert emptied == [(0,)]


def test_hard_deleted_customers_leave_no_child_rows(emulator: Emulator, base_url: str, tmp_path):
    emulator.reset(7, 3, 300)
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(attachments=False, hard_delete=True)
    emulator.store.mutate(readable(emulator)[0].id, "delete", count=25)

    warehouse.sync(attachments=False, hard_delete=True)

    assert loaded_children(warehouse) == expected_children(emulator, keep=lambda r: not is_deleted(r))
    for table in CHILD_TABLES:
        assert warehouse.rows(ORPHANS.format(table=table)) == [(0,)], table


def test_a_warehouse_nested_by_dlts_normaliser_is_upgraded(emulator: Emulator, base_url: str, tmp_path):
    emulator.reset(7, 3, 300)
    warehouse = Warehouse(tmp_path, base_url)
    company = readable(emulator)[0]
    stale = next(iter(company.customers.values()))

    @dlt.source(name="codat")
    def earlier_version():  # how the connector wrote customers before Arrow pages
        row = {
            "companyId": company.id,
            "id": stale["id"],
            "isDeleted": False,
            "addresses": [{"type": "Billing", "city": "Old"}],
        }
        yield dlt.resource(
            [row], name="customers", primary_key=("company_id", "id"), write_disposition="merge"
        )

    pipeline = warehouse.pipeline()
    pipeline.run(earlier_version())
    assert pipeline.default_schema.tables["customers__addresses"]["parent"] == "customers"

    summary = warehouse.sync(attachments=False)

    assert summary.failed == [] or set(summary.failed) <= {c.id for c in emulator.store.companies.values()}
    assert "parent" not in warehouse.pipeline().default_schema.tables["customers__addresses"]
    assert loaded_children(warehouse) == expected_children(emulator)
    assert warehouse.rows("SELECT COUNT(*) FROM codat.customers__addresses WHERE city = 'Old'") == [(0,)]


def test_unknown_fields_and_odd_types_are_kept_not_dropped(
    emulator: Emulator, base_url: str, tmp_path, caplog
):
    emulator.reset(7, 3, 300)
    company = readable(emulator)[0]
    record = next(iter(company.customers.values()))
    odd = {
        **record,
        "customerName": 12345,
        "loyaltyTier": {"level": "gold"},
        "addresses": [{"type": "Billing", "city": "Leeds", "unit": "4B"}],
    }
    emulator.store.put_customer(company, odd)
    warehouse = Warehouse(tmp_path, base_url)

    with caplog.at_level(logging.WARNING, logger="connector.batches"):
        warehouse.sync(attachments=False)

    rows = warehouse.rows(
        "SELECT customer_name, unmapped_fields FROM codat.customers "
        f"WHERE company_id = '{company.id}' AND id = '{record['id']}'"
    )
    assert len(rows) == 1
    name, unmapped = rows[0]
    assert name == "12345"
    assert json.loads(unmapped) == {"loyaltyTier": {"level": "gold"}, "addresses[0].unit": "4B"}
    others = warehouse.rows("SELECT COUNT(*) FROM codat.customers WHERE unmapped_fields IS NOT NULL")
    assert others == [(1,)]
    warnings = [r.getMessage() for r in caplog.records if "does not map" in r.getMessage()]
    assert len(warnings) == 1
    assert "loyaltyTier" in warnings[0]
    assert "addresses[0].unit" in warnings[0]


def test_an_unreadable_date_is_stored_as_null_with_one_warning_naming_it(
    emulator: Emulator, base_url: str, tmp_path, caplog
):
    emulator.reset(7, 3, 300)
    company = readable(emulator)[0]
    first, second, third = list(company.customers.values())[:3]
    emulator.store.put_customer(company, {**first, "modifiedDate": "last Tuesday"})
    emulator.store.put_customer(company, {**second, "modifiedDate": "2024-13-45T00:00:00Z"})
    emulator.store.put_customer(company, {**third, "sourceModifiedDate": "soon"})
    warehouse = Warehouse(tmp_path, base_url)

    with caplog.at_level(logging.WARNING, logger="connector.batches"):
        warehouse.sync(attachments=False)

    rows = warehouse.rows(
        "SELECT id, modified_date, source_modified_date FROM codat.customers "
        f"WHERE company_id = '{company.id}' AND id IN ('{first['id']}', '{second['id']}', '{third['id']}')"
    )
    by_id = {row[0]: row[1:] for row in rows}
    assert set(by_id) == {first["id"], second["id"], third["id"]}
    assert by_id[first["id"]][0] is None
    assert by_id[second["id"]][0] is None
    assert by_id[third["id"]][0] is not None
    assert by_id[third["id"]][1] is None
    warnings = [r.getMessage() for r in caplog.records if "is not a date" in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per field, however many customers have one
    modified = next(w for w in warnings if "has a modifiedDate" in w)
    assert company.id in modified
    assert repr(first["id"]) in modified or repr(second["id"]) in modified
    source = next(w for w in warnings if "has a sourceModifiedDate" in w)
    assert repr(third["id"]) in source
    assert "'soon'" in source
