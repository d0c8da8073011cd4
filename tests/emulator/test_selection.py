"""Sorted views: bisected seek pages agree with the general filter, and follow every change."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.emulator.data import generate_account
from connector.emulator.query import InstantRange, QueryError, instant_range
from connector.emulator.selection import build_view, select
from connector.emulator.store import LOG_FLOOR, WARM_ORDER, Sizing, Store
from tests.emulator.test_query import (
    Cmp,
    Junction,
    Sample,
    dates,
    evaluate,
    queries,
    reference_key,
    render,
    render_date,
    samples,
)
from tests.emulator.test_writes import create_path, valid_body
from tests.utils import CodatSession, assert_error, customers_path

SIX = datetime(2021, 11, 15, 6, tzinfo=UTC)
FAR_FUTURE = "2099-01-01T00:00:00Z"


# -- reading a query as a range of instants ---------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("modifiedDate>2021-11-15T06:00:00Z", InstantRange(low=SIX, low_open=True), id="gt"),
        pytest.param("modifiedDate>=2021-11-15T01:00:00-05:00", InstantRange(low=SIX), id="ge-offset"),
        pytest.param("modifiedDate<2021-11-15T06:00:00", InstantRange(high=SIX, high_open=True), id="lt"),
        pytest.param("modifiedDate<=2021-11-15T06:00:00.0000009Z", InstantRange(high=SIX), id="le-7-digits"),
        pytest.param("modifiedDate=2021-11-15T06:00:00Z", InstantRange(SIX, False, SIX, False), id="eq"),
        pytest.param(
            "modifiedDate>=2021-11-15 && modifiedDate<2021-11-16",
            InstantRange(SIX.replace(hour=0), False, SIX.replace(day=16, hour=0), True),
            id="between-days",
        ),
        pytest.param(
            "{modifiedDate>2021-11-15T05:00:00Z} && {{ modifiedDate>=2021-11-15T06:00:00Z }}",
            InstantRange(low=SIX),
            id="braces-tighter-low-wins",
        ),
        pytest.param(
            "modifiedDate>=2021-11-15T06:00:00Z && modifiedDate>2021-11-15T06:00:00Z",
            InstantRange(low=SIX, low_open=True),
            id="same-bound-open-wins",
        ),
        pytest.param(
            "modifiedDate<2021-11-15T05:00:00Z && modifiedDate>2021-11-15T06:00:00Z",
            InstantRange(SIX, True, SIX - timedelta(hours=1), True),
            id="empty",
        ),
        pytest.param("modifiedDate!=2021-11-15", None, id="ne"),
        pytest.param("modifiedDate>2021-11-15 || modifiedDate<2020-01-01", None, id="or"),
        pytest.param("modifiedDate>2021-11-15 && status=Active", None, id="other-field"),
        pytest.param("sourceModifiedDate>2021-11-15", None, id="other-date-field"),
        pytest.param(
            "{modifiedDate>2021-11-15 || modifiedDate<2020-01-01} && modifiedDate<2030-01-01",
            None,
            id="or-inside",
        ),
    ],
)
def test_instant_range_reads_conjunctions_of_one_field(query, expected):
    assert instant_range(query, "modifiedDate") == expected


def test_instant_range_rejects_a_malformed_query():
    with pytest.raises(QueryError):
        instant_range("modifiedDate>2021-11-15 &&", "modifiedDate")


# -- the bisected path against `select`, and both against a reference model -----------------

POOL = list(generate_account(5, 1, 600)[0].customers.values())
DATE_FIELDS = ("modifiedDate", "sourceModifiedDate")
RANGE_OPS = ("=", ">", ">=", "<", "<=")


def reference_instant(text):
    """A Codat date as a UTC instant, read by slicing (a second, simple parser), or None."""
    if not isinstance(text, str):
        return None
    try:
        day, _, rest = text.partition("T")
        year, month, date = (int(part) for part in day.split("-"))
        if not rest:
            return datetime(year, month, date, tzinfo=UTC)
        zone = timedelta()
        if rest.endswith("Z"):
            rest = rest[:-1]
        elif len(rest) > 6 and rest[-6] in "+-":
            sign = -1 if rest[-6] == "-" else 1
            zone = sign * timedelta(hours=int(rest[-5:-3]), minutes=int(rest[-2:]))
            rest = rest[:-6]
        clock, _, fraction = rest.partition(".")
        hour, minute, second = (int(part) for part in clock.split(":"))
        micros = int((fraction + "000000")[:6])
        local = datetime(year, month, date, hour, minute, second, micros, tzinfo=timezone(zone))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def test_pool_has_every_odd_date_form():
    """What the property below relies on: the generator's dates come in every Codat form."""
    stamps = [r["modifiedDate"] for r in POOL]
    assert any(s.endswith("Z") and "." not in s for s in stamps)
    assert any(re.search(r"\.\d{7}", s) for s in stamps)
    assert any(re.fullmatch(r"[\d\-T:.]+", s) for s in stamps)  # zone-less
    assert any(re.search(r"[+-]\d{2}:\d{2}$", s) for s in stamps)  # an offset
    assert len(stamps) - len(set(stamps)) >= 20  # a batch of ties
    assert all(reference_instant(s) is not None for s in stamps)
    sources = [r.get("sourceModifiedDate", "missing") for r in POOL]
    assert {None, "missing", "0001-01-01T00:00:00"} <= set(sources)


@st.composite
def populations(draw):
    """A company's customers: generated ones and odd ones (null, missing, junk dates), ids unique."""
    chosen = draw(st.lists(st.sampled_from(range(len(POOL))), unique=True, max_size=40))
    population = [
        Sample(POOL[i], {f: reference_instant(POOL[i].get(f)) for f in DATE_FIELDS}) for i in chosen
    ]
    for number, sample in enumerate(draw(st.lists(samples(), max_size=25))):
        population.append(Sample({**sample.record, "id": f"odd-{number:02d}"}, sample.instants))
    return population


@st.composite
def range_queries(draw, population, path):
    """`&&`-joined comparisons of `path`, often at an instant the population holds."""
    held = [s.instants[path] for s in population if s.instants[path] and s.instants[path].year > 1]
    comparisons = []
    for _ in range(draw(st.integers(1, 3))):
        if held and draw(st.booleans()):
            form = draw(st.sampled_from(["z", "zoneless", "offset", "seven"]))
            text, instant = render_date(
                draw(st.sampled_from(held)), form, draw(st.sampled_from([-300, 330])), 9
            )
        else:
            text, instant = draw(dates)
        op = draw(st.sampled_from(RANGE_OPS))
        comparisons.append(Cmp(path, op, text, instant, draw(st.sampled_from(["", " "]))))
    if len(comparisons) == 1:
        return comparisons[0]
    return Junction("&&", tuple(comparisons), draw(st.booleans()))


def encode(record):
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def reference_order(population, path, descending):
    by_id = sorted(population, key=lambda s: s.record["id"])
    return sorted(by_id, key=lambda s: reference_key(s, path), reverse=descending)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), path=st.sampled_from(DATE_FIELDS), descending=st.booleans())
def test_bisected_selection_agrees_with_select_and_the_reference(data, path, descending):
    population = data.draw(populations())
    node = data.draw(range_queries(population, path))
    query, order_by = render(node), ("-" if descending else "") + path
    records = [s.record for s in population]
    view = build_view(records, order_by, encode)

    positions = view.select(query)

    assert isinstance(positions, range), query  # the bisected path, not the filter
    got = [view.records[i]["id"] for i in positions]
    assert got == [r["id"] for r in select(records, "customers", query, order_by)], query
    matches = [s for s in reference_order(population, path, descending) if evaluate(node, s)]
    assert got == [s.record["id"] for s in matches], query
    assert [view.encoded[i] for i in positions] == [encode(s.record) for s in matches]


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("op", RANGE_OPS)
@pytest.mark.parametrize("path", DATE_FIELDS)
def test_bisected_selection_at_the_pools_largest_tie_group(path, op, descending):
    """Every operator at the instant most records share: the bound splits no tie group."""
    population = [Sample(r, {f: reference_instant(r.get(f)) for f in DATE_FIELDS}) for r in POOL]
    instants = [s.instants[path] for s in population if s.instants[path] is not None]
    tied = max(set(instants) - {min(instants)}, key=instants.count)  # so that `<` selects some
    assert instants.count(tied) >= 2  # a tie group to split, if the bisection were off by one
    assert len(instants) < len(population) or path == "modifiedDate"  # nulls in sourceModifiedDate
    node = Cmp(path, op, render_date(tied, "offset", -300, 0)[0], tied, "")
    order_by = ("-" if descending else "") + path
    view = build_view(POOL, order_by, encode)

    positions = view.select(render(node))

    assert isinstance(positions, range)
    matches = [s.record["id"] for s in reference_order(population, path, descending) if evaluate(node, s)]
    assert matches  # every operator selects something here
    assert [view.records[i]["id"] for i in positions] == matches
    assert matches == [r["id"] for r in select(POOL, "customers", render(node), order_by)]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), order_by=st.sampled_from(["modifiedDate", "-modifiedDate", "id", None]))
def test_other_queries_filter_the_view_as_select_does(data, order_by):
    population = data.draw(populations())
    query = render(data.draw(queries))
    records = [s.record for s in population]
    view = build_view(records, order_by, encode)
    got = [view.records[i]["id"] for i in view.select(query)]
    assert got == [r["id"] for r in select(records, "customers", query, order_by)], query


def test_every_record_without_a_query_in_view_order():
    view = build_view(POOL, None, encode)
    assert view.select(None) == range(len(POOL))
    assert [r["id"] for r in view.records] == sorted(r["id"] for r in POOL)


# -- views kept up to date by merging changes in ---------------------------------------------

MERGED_ORDERS = ["modifiedDate", "-modifiedDate", None, "sourceModifiedDate", "-customerName"]


def assert_view_is_fresh(store, company, order_by):
    """The store's view equals one sorted afresh, and orders ids as `select` does."""
    view = store.view(company, order_by)
    records = list(company.customers.values())
    fresh = build_view(records, order_by, encode)
    assert [r["id"] for r in view.records] == [r["id"] for r in select(records, "customers", None, order_by)]
    assert view.records == fresh.records, order_by
    assert view.encoded == fresh.encoded == [encode(r) for r in view.records], order_by
    assert view.instants == fresh.instants, order_by
    assert view.keys == fresh.keys, order_by


@st.composite
def changes(draw, company_ids):
    """One change of a company's customers, as a sync, a push or an odd record would make it."""
    kind = draw(st.sampled_from(["modify", "delete", "add", "restamp", "odd"]))
    stamp = draw(st.one_of(st.none(), dates.map(lambda rendered: rendered[0])))
    if kind == "odd":  # null, missing or junk dates and names, for an existing id or a new one
        sample = draw(samples())
        return kind, {**sample.record, "id": draw(st.sampled_from([*company_ids, "odd-new"]))}
    return kind, (draw(st.integers(1, 12)), stamp)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=st.integers(0, 3))
def test_views_after_random_changes_equal_fresh_ones(data, seed):
    store = Store(Sizing(seed, 1, 60))
    company = next(iter(store.companies.values()))
    for order_by in MERGED_ORDERS:
        store.view(company, order_by)
    full_builds = store.full_builds
    for _ in range(data.draw(st.integers(1, 8))):
        kind, change = data.draw(changes(sorted(company.customers)))
        if kind == "odd":
            store.put_customer(company, change)
        else:
            count, stamp = change
            store.mutate(company.id, kind, count=count, timestamp=stamp)
        for order_by in data.draw(st.lists(st.sampled_from(MERGED_ORDERS), max_size=3)):
            assert_view_is_fresh(store, company, order_by)
    for order_by in MERGED_ORDERS:
        assert_view_is_fresh(store, company, order_by)
    assert store.full_builds == full_builds  # every view was merged, none sorted again


def test_reset_warms_the_connectors_order_and_a_change_is_merged_in():
    store = Store(Sizing(7, 3, 300))
    assert store.full_builds == 3  # one `modifiedDate` view per company, built by `reset`
    company = next(iter(store.companies.values()))
    warmed = store.view(company, WARM_ORDER)
    served = (list(warmed.records), list(warmed.encoded), list(warmed.keys))
    assert store.full_builds == 3
    store.mutate(company.id, "modify", count=5, timestamp="2030-01-01T00:00:00Z")
    merged = store.view(company, WARM_ORDER)
    assert (store.full_builds, store.merged_builds) == (3, 1)
    assert (warmed.records, warmed.encoded, warmed.keys) == served  # a served view never changes
    assert [r["modifiedDate"] for r in merged.records[-5:]] == ["2030-01-01T00:00:00Z"] * 5
    assert store.view(company, WARM_ORDER) is merged  # cached until the next change
    assert_view_is_fresh(store, company, WARM_ORDER)


def test_more_changes_than_the_log_holds_sort_the_company_again():
    store = Store(Sizing(7, 1, LOG_FLOOR + 50))
    company = next(iter(store.companies.values()))
    store.mutate(company.id, "restamp", timestamp=FAR_FUTURE)  # one change per customer
    assert_view_is_fresh(store, company, WARM_ORDER)
    assert (store.full_builds, store.merged_builds) == (2, 0)
    store.mutate(company.id, "add", count=3)  # the log starts again from the new view
    assert_view_is_fresh(store, company, WARM_ORDER)
    assert (store.full_builds, store.merged_builds) == (2, 1)


def test_a_write_through_a_company_replaced_by_reset_is_not_merged_in():
    store = Store(Sizing(7, 1, 80))
    stale = next(iter(store.companies.values()))
    store.reset(Sizing(7, 1, 80))
    company = store.companies[stale.id]
    assert company is not stale
    customer_id = next(iter(stale.customers))
    store.put_customer(stale, {**stale.customers[customer_id], "modifiedDate": FAR_FUTURE})
    assert company.customers[customer_id]["modifiedDate"] != FAR_FUTURE
    assert_view_is_fresh(store, company, WARM_ORDER)
    store.mutate(company.id, "modify", count=4)
    assert_view_is_fresh(store, company, WARM_ORDER)


# -- over HTTP: seek pages, and every kind of change ------------------------------------------


def seek_page(codat, company_id, query, page=1, page_size=5000):
    params = {"query": query, "orderBy": "modifiedDate", "page": page, "pageSize": page_size}
    response = codat.get(customers_path(company_id), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def matching(records, low=None, high=None):
    """Ids of records whose modifiedDate lies in [low, high), in Codat's order (instant, then id)."""
    dated = [(reference_instant(r.get("modifiedDate")), r["id"]) for r in records]
    return [
        cid
        for instant, cid in sorted(d for d in dated if d[0] is not None)
        if (low is None or instant >= low) and (high is None or instant < high)
    ]


def test_seek_pages_over_http_select_what_the_reference_selects(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    records = list(emulator.store.companies[company_id].customers.values())
    instants = sorted({reference_instant(r["modifiedDate"]) for r in records})
    low, high = instants[len(instants) // 4], instants[3 * len(instants) // 4]
    cases = [
        (f"modifiedDate>={low.isoformat()}", low, None),
        (f"modifiedDate>{low.isoformat()}", low + timedelta(microseconds=1), None),
        (f"modifiedDate>={low.isoformat()}&&modifiedDate<{high.isoformat()}", low, high),
        (f"modifiedDate={high.isoformat()}", high, high + timedelta(microseconds=1)),
    ]
    for query, start, stop in cases:
        expected = matching(records, start, stop)
        assert expected, query  # each case selects something
        ids, page, total = [], 1, None
        while True:
            body = seek_page(codat, company_id, query, page=page, page_size=7)
            total = body["totalResults"]
            ids += [r["id"] for r in body["results"]]
            if "next" not in body["_links"]:
                break
            page += 1
        assert (total, ids) == (len(expected), expected), query


def test_a_bad_query_is_reported_before_a_bad_order(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    params = {"query": "modifiedDate>soon", "orderBy": "addresses"}
    body = assert_error(codat.get(customers_path(company_id), params=params), 400)
    assert body["error"] == "Error parsing query - Malformed query."
    params = {"query": "modifiedDate>2020-01-01", "orderBy": "addresses"}
    body = assert_error(codat.get(customers_path(company_id), params=params), 400)
    assert body["error"] == "Error parsing query - Could not resolve property addresses on Customer"


def test_restamp_moves_every_customer_into_one_tie_group(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    total = len(emulator.store.companies[company_id].customers)
    assert seek_page(codat, company_id, f"modifiedDate>={FAR_FUTURE}")["totalResults"] == 0
    emulator.store.mutate(company_id, "restamp", timestamp=FAR_FUTURE)
    body = seek_page(codat, company_id, f"modifiedDate={FAR_FUTURE}", page_size=5000)
    assert body["totalResults"] == total
    assert [r["id"] for r in body["results"]] == sorted(emulator.store.companies[company_id].customers)


def test_reset_to_another_size_serves_the_new_customers(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    before = seek_page(codat, company_id, "modifiedDate>=2019-01-01")["totalResults"]
    emulator.reset(customers=600)
    assert company_id in emulator.store.companies  # the same seed keeps the company ids
    after = seek_page(codat, company_id, "modifiedDate>=2019-01-01")
    expected = matching(emulator.store.companies[company_id].customers.values())
    assert after["totalResults"] == len(expected) > before
    assert [r["id"] for r in after["results"]] == expected


def test_a_synced_push_appears_in_the_next_seek_page(codat, emulator):
    company = next(iter(emulator.store.companies.values()))
    connection = company.accounting_connections[0]
    since = "2020-01-01T00:00:00Z"
    first = seek_page(codat, company.id, f"modifiedDate>={since}")
    emulator.ledger.delay = 0.0  # settled as soon as it is created
    body = {**valid_body(connection.platform_name), "customerName": "Seek Test Ltd"}
    push = codat.post(create_path(company, connection), json=body).json()
    assert emulator.ledger.get(push["pushOperationKey"]).status == "Success"
    assert emulator.sync(company.id) == 1
    second = seek_page(codat, company.id, f"modifiedDate>={since}")
    assert second["totalResults"] == first["totalResults"] + 1
    assert second["results"][-1]["customerName"] == "Seek Test Ltd"


def test_pages_served_during_changes_end_consistent(base_url, emulator):
    """Paging while a background mutator changes customers; afterwards every page is current."""
    company_id = next(iter(emulator.store.companies))
    assert len(emulator.store.companies[company_id].customers) >= 4 * 20
    emulator.mutator.start([company_id], rate=500, duration=30, action="modify")
    with CodatSession(base_url) as codat:
        for turn in range(40):
            body = seek_page(codat, company_id, "modifiedDate>=2019-01-01", page=turn % 4 + 1, page_size=20)
            assert len(body["results"]) == 20
        emulator.mutator.stop()
        assert emulator.mutator.changes > 0
        served = seek_page(codat, company_id, "modifiedDate>=2019-01-01")["results"]
    assert {r["id"]: r for r in served} == emulator.store.companies[company_id].customers


@pytest.mark.parametrize("order_by", ["modifiedDate", "-modifiedDate"], ids=["ascending", "descending"])
def test_a_page_after_changes_is_what_select_computes(codat, emulator, order_by):
    company = next(iter(emulator.store.companies.values()))
    query = "modifiedDate>=2019-01-01"
    params = {"query": query, "orderBy": order_by, "pageSize": 5000}
    assert codat.get(customers_path(company.id), params=params).status_code == 200  # a cached view
    full_builds = emulator.store.full_builds
    emulator.store.mutate(company.id, "modify", count=7, timestamp="2019-06-01T12:00:00+01:00")
    emulator.store.mutate(company.id, "add", count=3)
    emulator.store.mutate(company.id, "delete", count=2)
    response = codat.get(customers_path(company.id), params=params)
    assert response.status_code == 200, response.text
    expected = select(list(company.customers.values()), "customers", query, order_by)
    assert response.json()["results"] == expected
    assert emulator.store.full_builds == full_builds
