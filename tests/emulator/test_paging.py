"""Paging over HTTP: each record once on a still set, documented skips on a changing one, ordering."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.utils import assert_error, customers_path

PAGE_SIZES = [1, 7, 100, 5000]
SELECTIONS = {
    "everything": {},
    "query": {"query": "status=Active && metadata.isDeleted!=true"},
    "order": {"orderBy": "modifiedDate"},
    "query-and-order": {"query": "modifiedDate>=2024-06-01T00:00:00Z || status=Archived", "orderBy": "-id"},
}
FAR_FUTURE = "2099-01-01T00:00:00Z"


def instant(value):
    """A Codat date as an aware instant (zone-less dates are UTC), or None."""
    if not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expected_matches(records, selection):
    """What each selection's query selects, evaluated here without the emulator's query module.

    A null or missing field matches no comparison, `!=` included (Codat cannot query nulls).
    """
    query = selection.get("query")
    if query is None:
        return records
    if query.startswith("status"):
        return [
            r
            for r in records
            if r.get("status") == "Active" and (r.get("metadata") or {}).get("isDeleted") is False
        ]
    cutoff = instant("2024-06-01T00:00:00Z")
    return [
        r
        for r in records
        if (instant(r.get("modifiedDate")) or cutoff.replace(year=1)) >= cutoff
        or r.get("status") == "Archived"
    ]


def smallest_company(emulator) -> str:
    return min(emulator.store.companies.values(), key=lambda c: len(c.customers)).id


def all_customers(codat, company_id):
    page = codat.get(customers_path(company_id), params={"pageSize": 5000}).json()
    assert "next" not in page["_links"]
    return page["results"]


def page_through(codat, company_id, params, page_size):
    """Follow `_links.next` from page 1 and check each page's envelope; return ids and page count."""
    path = customers_path(company_id)
    url = path
    request_params = {**params, "pageSize": page_size}
    ids, pages, total = [], 0, None
    while True:
        response = codat.get(url, params=request_params)
        assert response.status_code == 200
        page = response.json()
        pages += 1
        assert page["pageNumber"] == pages
        assert page["pageSize"] == page_size
        total = page["totalResults"] if total is None else total
        assert page["totalResults"] == total
        links = page["_links"]
        assert links["self"] == {"href": path}
        current = parse_qs(urlsplit(links["current"]["href"]).query)
        assert current["page"] == [str(pages)]
        assert current["pageSize"] == [str(page_size)]
        for name in ("query", "orderBy"):
            assert current.get(name) == ([params[name]] if name in params else None)
        assert ("previous" in links) == (pages > 1)
        ids.extend(r["id"] for r in page["results"])
        if "next" not in links:
            assert len(page["results"]) == total - (pages - 1) * page_size
            return ids, pages, total
        assert len(page["results"]) == page_size
        assert links["next"]["href"].startswith(path + "?")
        url, request_params = links["next"]["href"], None


@pytest.mark.parametrize("page_size", PAGE_SIZES, ids=lambda size: f"size-{size}")
@pytest.mark.parametrize("selection", SELECTIONS.values(), ids=SELECTIONS.keys())
def test_paging_a_still_set_returns_each_match_exactly_once(codat, emulator, selection, page_size):
    company_id = smallest_company(emulator) if page_size == 1 else next(iter(emulator.store.companies))
    expected = [r["id"] for r in expected_matches(all_customers(codat, company_id), selection)]
    ids, pages, total = page_through(codat, company_id, selection, page_size)
    assert total == len(expected)
    assert sorted(ids) == sorted(expected)
    assert len(set(ids)) == len(ids)
    assert pages == max(1, math.ceil(total / page_size))
    requests = [e for e in emulator.request_log if e["operation"] == "list-customers"]
    assert [e["params"].get("page", "1") for e in requests[1:]] == [str(n) for n in range(1, pages + 1)]


@pytest.mark.parametrize("page_size", ["0", "5001", "-1", "ten"])
def test_page_size_out_of_range_is_400(codat, emulator, page_size):
    response = codat.get(customers_path(next(iter(emulator.store.companies))), params={"pageSize": page_size})
    body = assert_error(response, 400)
    assert body["error"].startswith("Error processing request - not valid.")


@pytest.mark.parametrize("page", ["0", "-3", "first"])
def test_page_below_one_is_400(codat, emulator, page):
    response = codat.get(customers_path(next(iter(emulator.store.companies))), params={"page": page})
    assert_error(response, 400)


def test_page_size_limits_are_inclusive(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    total = len(emulator.store.companies[company_id].customers)
    for size, count in [(1, 1), (5000, total)]:
        page = codat.get(customers_path(company_id), params={"pageSize": size}).json()
        assert len(page["results"]) == count


def test_default_page_is_one_of_one_hundred(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    page = codat.get(customers_path(company_id)).json()
    assert (page["pageNumber"], page["pageSize"], len(page["results"])) == (1, 100, 100)
    assert page["_links"]["current"]["href"] == f"{customers_path(company_id)}?page=1&pageSize=100"
    assert page["_links"]["next"]["href"] == f"{customers_path(company_id)}?page=2&pageSize=100"


def test_page_beyond_the_end_is_empty(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    total = len(emulator.store.companies[company_id].customers)
    beyond = math.ceil(total / 7) + 1
    response = codat.get(customers_path(company_id), params={"page": beyond, "pageSize": 7})
    assert response.status_code == 200
    page = response.json()
    assert page["results"] == []
    assert page["totalResults"] == total
    assert page["pageNumber"] == beyond
    assert "next" not in page["_links"]
    previous = parse_qs(urlsplit(page["_links"]["previous"]["href"]).query)
    assert previous["page"] == [str(beyond - 1)]


def test_query_matching_nothing_is_one_empty_page(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    page = codat.get(customers_path(company_id), params={"query": f"modifiedDate>{FAR_FUTURE}"}).json()
    assert (page["results"], page["totalResults"]) == ([], 0)
    assert set(page["_links"]) == {"self", "current"}


# -- ordering ---------------------------------------------------------------------------------


def text_key(value):
    return (1, value.casefold(), value) if isinstance(value, str) else (0,)


SORT_KEYS = {
    "modifiedDate": lambda r: (
        (0,) if instant(r.get("modifiedDate")) is None else (1, instant(r["modifiedDate"]))
    ),
    "customerName": lambda r: text_key(r.get("customerName")),
    "id": lambda r: text_key(r["id"]),
}


def expected_order(records, field, descending):
    """Order by one field, nulls first ascending; ties always by id ascending (two stable sorts)."""
    by_id = sorted(records, key=lambda r: r["id"])
    return [r["id"] for r in sorted(by_id, key=SORT_KEYS[field], reverse=descending)]


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("field", SORT_KEYS)
def test_order_by_agrees_with_an_order_computed_here(codat, emulator, field, descending):
    company_id = next(iter(emulator.store.companies))
    records = all_customers(codat, company_id)
    order_by = f"-{field}" if descending else field
    expected = expected_order(records, field, descending)
    page = codat.get(customers_path(company_id), params={"pageSize": 5000, "orderBy": order_by}).json()
    assert [r["id"] for r in page["results"]] == expected
    paged, _, _ = page_through(codat, company_id, {"orderBy": order_by}, 7)
    assert paged == expected


def test_modified_date_ties_are_common_and_broken_by_id(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    page = codat.get(customers_path(company_id), params={"pageSize": 5000, "orderBy": "modifiedDate"}).json()
    results = page["results"]
    ties = [
        (a["id"], b["id"])
        for a, b in zip(results, results[1:], strict=False)
        if a["modifiedDate"] == b["modifiedDate"]
    ]
    assert len(ties) >= 10
    assert all(a < b for a, b in ties)


def test_dates_order_as_instants_not_as_text(codat, emulator):
    """Offsets and zone-less forms sort by the instant they denote."""
    company_id = next(iter(emulator.store.companies))
    company = emulator.store.companies[company_id]
    first, second = sorted(company.customers)[:2]
    emulator.store.put_customer(
        company, {**company.customers[first], "modifiedDate": "2030-01-01T06:00:00+05:00"}
    )
    emulator.store.put_customer(company, {**company.customers[second], "modifiedDate": "2030-01-01T02:00:00"})
    page = codat.get(
        customers_path(company_id), params={"query": "modifiedDate>=2030-01-01", "orderBy": "modifiedDate"}
    ).json()
    assert [r["id"] for r in page["results"]] == [first, second]


# -- a set that changes between pages ---------------------------------------------------------


def test_modified_record_moves_to_the_end_and_page_numbers_skip_one(codat, emulator):
    """Codat's documented hazard: paging by number while a record changes skips another one."""
    company_id = next(iter(emulator.store.companies))
    before = [
        r["id"]
        for r in codat.get(
            customers_path(company_id), params={"pageSize": 5000, "orderBy": "modifiedDate"}
        ).json()["results"]
    ]
    params = {"orderBy": "modifiedDate", "pageSize": 10}
    first = codat.get(customers_path(company_id), params={**params, "page": 1}).json()
    seen = [r["id"] for r in first["results"]]
    assert seen == before[:10]
    moved = seen[0]
    assert emulator.store.mutate(company_id, "modify", ids=[moved], timestamp=FAR_FUTURE) == [moved]
    page, total = 2, first["totalResults"]
    while True:
        body = codat.get(customers_path(company_id), params={**params, "page": page}).json()
        assert body["totalResults"] == total
        seen.extend(r["id"] for r in body["results"])
        if "next" not in body["_links"]:
            break
        page += 1
    skipped = before[10]
    assert skipped not in seen
    assert seen.count(moved) == 2
    assert seen[-1] == moved
    assert sorted(set(seen) | {skipped}) == sorted(before)
    assert len(seen) == total


def test_record_deleted_between_pages_stays_and_moves_like_a_modified_one(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    params = {"orderBy": "modifiedDate", "pageSize": 50}
    first = codat.get(customers_path(company_id), params={**params, "page": 1}).json()
    gone = first["results"][5]["id"]
    emulator.store.mutate(company_id, "delete", ids=[gone], timestamp=FAR_FUTURE)
    last_page = math.ceil(first["totalResults"] / 50)
    last = codat.get(customers_path(company_id), params={**params, "page": last_page}).json()
    assert last["totalResults"] == first["totalResults"]
    assert last["results"][-1]["id"] == gone
    assert last["results"][-1]["metadata"] == {"isDeleted": True}
    assert last["results"][-1]["modifiedDate"] == FAR_FUTURE


def test_incremental_query_sees_only_the_changes(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    changed = emulator.store.mutate(company_id, "modify", count=4, timestamp=FAR_FUTURE)
    added = emulator.store.mutate(company_id, "add", count=2, timestamp=FAR_FUTURE)
    page = codat.get(
        customers_path(company_id), params={"query": f"modifiedDate>={FAR_FUTURE}", "orderBy": "modifiedDate"}
    ).json()
    assert sorted(r["id"] for r in page["results"]) == sorted(changed + added)
    assert [r["id"] for r in page["results"]] == sorted(changed + added)
