"""The emulator's query language: table-driven cases and properties against a reference model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.emulator.query import (
    COMPANY_SCHEMA,
    CONNECTION_SCHEMA,
    CUSTOMER_SCHEMA,
    QueryError,
    Schema,
    compile_order,
    compile_query,
    parse_instant,
)

MALFORMED = "Error parsing query - Malformed query."


def unresolved(path, type_name="Customer"):
    return f"Error parsing query - Could not resolve property {path} on {type_name}"


ACME = {
    "id": "c-1",
    "customerName": "Acme (UK) Ltd",
    "contactName": None,
    "emailAddress": "ops@acme.example",
    "status": "Active",
    "addresses": [{"type": "Billing", "city": "London"}],
    "metadata": {"isDeleted": False},
    "supplementalData": {"content": {"x": {"y": 1}}},
    "modifiedDate": "2021-11-15T06:00:00Z",
    "sourceModifiedDate": "2021-11-15T01:00:00-05:00",
}
NUMBERS: Schema = {"amount": "number", "nested": {"count": "number"}}


def params(cases):
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


def customer(**changes):
    record = dict(ACME)
    for key, value in changes.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


MATCH_CASES = [
    # strings
    ("str-eq", "customerName=Acme (UK) Ltd", ACME, True),
    ("str-eq-case-insensitive", "customerName=ACME (uk) ltd", ACME, True),
    ("str-eq-other", "customerName=Acme", ACME, False),
    ("str-ne", "customerName!=Acme", ACME, True),
    ("str-ne-same-other-case", "customerName!=acme (uk) ltd", ACME, False),
    ("str-contains", "customerName~(uk)", ACME, True),
    ("str-eq-casefold", "customerName=STRASSE", customer(customerName="Straße"), True),
    ("str-contains-miss", "customerName~(US)", ACME, False),
    ("str-whitespace-trimmed", "  customerName  =   Acme (UK) Ltd   ", ACME, True),
    ("str-value-with-symbols", "emailAddress=ops@acme.example", ACME, True),
    ("str-value-with-open-brace", "customerName~{", customer(customerName="a{b"), True),
    # booleans
    ("bool-eq", "metadata.isDeleted=false", ACME, True),
    ("bool-eq-upper", "metadata.isDeleted=FALSE", ACME, True),
    ("bool-ne", "metadata.isDeleted!=true", ACME, True),
    ("bool-ne-deleted", "metadata.isDeleted!=true", customer(metadata={"isDeleted": True}), False),
    # nulls cannot be queried, `!=` included
    ("null-str-ne", "contactName!=x", ACME, False),
    ("null-str-eq", "contactName=x", ACME, False),
    ("missing-str-ne", "phone!=x", ACME, False),
    ("missing-str-contains", "phone~x", ACME, False),
    ("metadata-absent-ne", "metadata.isDeleted!=true", customer(metadata=...), False),
    ("metadata-null-ne", "metadata.isDeleted!=true", customer(metadata=None), False),
    ("metadata-empty-ne", "metadata.isDeleted!=true", customer(metadata={}), False),
    (
        "is-deleted-null-eq",
        "metadata.isDeleted=false",
        customer(metadata={"isDeleted": None}),
        False,
    ),
    ("metadata-not-object", "metadata.isDeleted!=true", customer(metadata=[]), False),
    ("null-date-ne", "sourceModifiedDate!=2020-01-01", customer(sourceModifiedDate=None), False),
    ("garbage-date-ne", "modifiedDate!=2020-01-01", customer(modifiedDate="soon"), False),
    ("wrong-type-str", "customerName!=x", customer(customerName=7), False),
    # datetimes: every written form of 06:00 UTC is the same instant
    ("date-z-vs-offset", "sourceModifiedDate=2021-11-15T06:00:00Z", ACME, True),
    ("date-offset-vs-z", "modifiedDate=2021-11-15T01:00:00-05:00", ACME, True),
    ("date-zoneless-vs-z", "modifiedDate=2021-11-15T06:00:00", ACME, True),
    ("date-7-digits-vs-z", "modifiedDate=2021-11-15T06:00:00.0000000Z", ACME, True),
    ("date-offset-plus", "modifiedDate=2021-11-15T11:30:00+05:30", ACME, True),
    ("date-ne-same-instant", "modifiedDate!=2021-11-15T08:00:00+02:00", ACME, False),
    ("date-only-is-midnight", "modifiedDate>2021-11-15", ACME, True),
    (
        "date-only-eq-midnight",
        "modifiedDate=2021-11-15",
        customer(modifiedDate="2021-11-15T00:00:00"),
        True,
    ),
    ("date-gt-offset-record", "sourceModifiedDate>2021-11-15T05:59:59.9999999Z", ACME, True),
    ("date-ge", "modifiedDate>=2021-11-15T06:00:00Z", ACME, True),
    ("date-lt", "modifiedDate<2021-11-15T06:00:00.000001Z", ACME, True),
    ("date-le", "modifiedDate<=2021-11-15T05:00:00Z", ACME, False),
    ("date-gt-not-string-order", "sourceModifiedDate>2021-11-15T05:00:00Z", ACME, True),
    (
        "date-7-digits-truncate-eq",
        "modifiedDate=2021-11-15T06:00:00.1234567Z",
        customer(modifiedDate="2021-11-15T06:00:00.123456Z"),
        True,
    ),
    (
        "date-7-digits-truncate-gt",
        "modifiedDate>2021-11-15T06:00:00.123455Z",
        customer(modifiedDate="2021-11-15T06:00:00.1234569"),
        True,
    ),
    (
        "date-year-one",
        "sourceModifiedDate<1900-01-01",
        customer(sourceModifiedDate="0001-01-01T00:00:00"),
        True,
    ),
    # precedence and grouping
    ("and-binds-tighter", "status=Active || status=Nope && id=zzz", ACME, True),
    ("braces-group-or-first", "{status=Active || status=Nope} && id=zzz", ACME, False),
    ("and-before-or-right", "id=zzz && status=Nope || id=c-1", ACME, True),
    ("braces-group-or-right", "id=zzz && {status=Nope || id=c-1}", ACME, False),
    ("nested-braces", "{{id=c-1}} && {{{status=active}}}", ACME, True),
    ("braces-with-spaces", " { id=c-1 ||id=x}&&{ status=Active } ", ACME, True),
    ("no-spaces", "id=c-1&&status=Active||id=x", ACME, True),
    ("or-all-false", "id=a || id=b || id=c", ACME, False),
    ("and-all-true", "id=c-1 && status=active && metadata.isDeleted=false", ACME, True),
    ("paren-is-literal", "customerName~(UK) Ltd", ACME, True),
]

NUMBER_CASES = [
    ("num-eq", "amount=10", {"amount": 10}, True),
    ("num-eq-float", "amount=10.0", {"amount": 10}, True),
    ("num-ne", "amount!=10", {"amount": 11.5}, True),
    ("num-gt", "amount>1e1", {"amount": 11}, True),
    ("num-lt-negative", "amount<-2", {"amount": -2.5}, True),
    ("num-ge", "amount>=.5", {"amount": 0.5}, True),
    ("num-le", "amount<=+3", {"amount": 4}, False),
    ("num-null-ne", "amount!=1", {"amount": None}, False),
    ("num-bool-is-not-number", "amount!=1", {"amount": True}, False),
    ("num-string-is-not-number", "amount=1", {"amount": "1"}, False),
    ("num-nested", "nested.count>0", {"nested": {"count": 1}}, True),
]


@pytest.mark.parametrize(("query", "record", "expected"), params(MATCH_CASES))
def test_customer_query_matches(query, record, expected):
    assert compile_query(query, CUSTOMER_SCHEMA, "Customer")(record) is expected


@pytest.mark.parametrize(("query", "record", "expected"), params(NUMBER_CASES))
def test_number_query_matches(query, record, expected):
    assert compile_query(query, NUMBERS, "Thing")(record) is expected


def test_company_and_connection_queries():
    company = {"id": "x", "name": "Mock Co", "lastSync": "2024-01-01T10:00:00+01:00"}
    assert compile_query("lastSync=2024-01-01T09:00:00Z", COMPANY_SCHEMA, "Company")(company)
    connection = {"id": "y", "sourceType": "Accounting", "status": "Linked"}
    query = "sourceType=accounting && status!=Unlinked"
    check = compile_query(query, CONNECTION_SCHEMA, "Connection")
    assert check(connection)


ERROR_CASES = [
    ("empty", "", MALFORMED),
    ("blank", "   ", MALFORMED),
    ("no-operator", "customerName", MALFORMED),
    ("no-field", "=Acme", MALFORMED),
    ("empty-value", "customerName=", MALFORMED),
    ("blank-value", "customerName=   && id=1", MALFORMED),
    ("space-in-path", "customer Name=x", MALFORMED),
    ("dangling-and", "customerName=a &&", MALFORMED),
    ("leading-and", "&& customerName=a", MALFORMED),
    ("dangling-or", "customerName=a ||", MALFORMED),
    ("double-and", "id=a && && id=b", MALFORMED),
    ("single-ampersand-joins-value-then-fails", "id=a & id=b && ", MALFORMED),
    ("unclosed-brace", "{customerName=a", MALFORMED),
    ("extra-close-brace", "customerName=a}", MALFORMED),
    ("empty-braces", "{}", MALFORMED),
    ("parentheses-do-not-group", "(customerName=a)", MALFORMED),
    ("too-deep", "{" * 40 + "id=a" + "}" * 40, MALFORMED),
    ("str-gt", "customerName>a", MALFORMED),
    ("str-le", "customerName<=a", MALFORMED),
    ("bool-contains", "metadata.isDeleted~t", MALFORMED),
    ("bool-gt", "metadata.isDeleted>false", MALFORMED),
    ("bool-bad-value", "metadata.isDeleted=yes", MALFORMED),
    ("date-contains", "modifiedDate~2021", MALFORMED),
    ("date-bad-value", "modifiedDate>yesterday", MALFORMED),
    ("date-bad-month", "modifiedDate>2021-13-01", MALFORMED),
    ("date-space-for-plus", "modifiedDate>2021-11-15T01:00:00 05:00", MALFORMED),
    ("syntax-before-fields", "nope=1 &&", MALFORMED),
    ("type-before-later-field", "customerName>a && nope=1", MALFORMED),
    ("array-path", "addresses.city=London", unresolved("addresses.city")),
    ("array-itself", "addresses=x", unresolved("addresses")),
    ("contacts-path", "contacts.name=x", unresolved("contacts.name")),
    ("supplemental", "supplementalData.content.x=1", unresolved("supplementalData.content.x")),
    ("supplemental-itself", "supplementalData=x", unresolved("supplementalData")),
    ("unknown", "isCompleted=true", unresolved("isCompleted")),
    ("unknown-nested", "metadata.foo=x", unresolved("metadata.foo")),
    ("object-itself", "metadata=x", unresolved("metadata")),
    ("path-through-scalar", "id.length=1", unresolved("id.length")),
    ("case-sensitive-names", "customername=x", unresolved("customername")),
    ("unresolved-in-group", "id=1 || {status=x && addresses.city=y}", unresolved("addresses.city")),
]


@pytest.mark.parametrize(("query", "message"), params(ERROR_CASES))
def test_customer_query_errors(query, message):
    with pytest.raises(QueryError) as caught:
        compile_query(query, CUSTOMER_SCHEMA, "Customer")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("schema", "type_name", "query", "message"),
    [
        pytest.param(NUMBERS, "Thing", "amount~1", MALFORMED, id="num-contains"),
        pytest.param(NUMBERS, "Thing", "amount>ten", MALFORMED, id="num-bad-value"),
        pytest.param(NUMBERS, "Thing", "amount=nan", MALFORMED, id="num-nan"),
        pytest.param(COMPANY_SCHEMA, "Company", "tags=x", unresolved("tags", "Company"), id="tags"),
        pytest.param(
            CONNECTION_SCHEMA,
            "Connection",
            "connectionInfo.x=1",
            unresolved("connectionInfo.x", "Connection"),
            id="connection-info",
        ),
    ],
)
def test_other_schema_errors(schema, type_name, query, message):
    with pytest.raises(QueryError, match="^Error parsing query - ") as caught:
        compile_query(query, schema, type_name)
    assert str(caught.value) == message


AT_SIX = datetime(2021, 11, 15, 6, tzinfo=UTC)
AT_SIX_MICROS = AT_SIX.replace(microsecond=123456)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2022-08-23", datetime(2022, 8, 23, tzinfo=UTC), id="date-only"),
        pytest.param("2021-11-15T06:00:00Z", AT_SIX, id="z"),
        pytest.param("2021-11-15T06:00:00", AT_SIX, id="zone-less-is-utc"),
        pytest.param("2021-11-15T01:00:00-05:00", AT_SIX, id="negative-offset"),
        pytest.param("2021-11-15T07:00:00+01:00", AT_SIX, id="positive-offset"),
        pytest.param("2021-11-15T06:00:00.5Z", AT_SIX.replace(microsecond=500000), id="1-digit"),
        pytest.param("2021-11-15T06:00:00.1234567", AT_SIX_MICROS, id="7-digits"),
        pytest.param("0001-01-01T00:00:00", datetime(1, 1, 1, tzinfo=UTC), id="year-one"),
        pytest.param("", None, id="empty"),
        pytest.param("yesterday", None, id="word"),
        pytest.param("2021-02-30", None, id="no-such-day"),
        pytest.param("2021-11-15T24:00:00Z", None, id="hour-24"),
        pytest.param("2021-11-15T06:00:00.12345678Z", None, id="8-digits"),
        pytest.param("2021-11-15T06:00Z", None, id="no-seconds"),
        pytest.param("2021-11-15T06:00:00+25:00", None, id="offset-too-big"),
        pytest.param("0001-01-01T00:00:00+01:00", None, id="before-year-one"),
        pytest.param("2021-11-15 06:00:00", None, id="space-separator"),
    ],
)
def test_parse_instant(text, expected):
    parsed = parse_instant(text)
    assert parsed == expected
    assert parsed is None or parsed.utcoffset() == timedelta(0)


def ordered_ids(records, order_by, schema=CUSTOMER_SCHEMA):
    key, descending = compile_order(order_by, schema, "Customer")
    return [r["id"] for r in sorted(records, key=key, reverse=descending)]


def test_order_nulls_first_and_dates_as_instants():
    records = [
        {"id": "late", "modifiedDate": "2021-11-15T01:00:00-05:00"},  # 06:00Z
        {"id": "null", "modifiedDate": None},
        {"id": "early", "modifiedDate": "2021-11-15T05:00:00.1234567"},
        {"id": "missing"},
        {"id": "garbage", "modifiedDate": "not a date"},
        {"id": "date-only", "modifiedDate": "2021-11-15"},
    ]
    assert ordered_ids(records, "modifiedDate") == [
        "null",
        "missing",
        "garbage",
        "date-only",
        "early",
        "late",
    ]
    assert ordered_ids(records, "-modifiedDate") == [
        "late",
        "early",
        "date-only",
        "null",
        "missing",
        "garbage",
    ]


def test_order_strings_case_insensitive_then_sensitive():
    names = [*"bBaA", None]
    records = [{"id": str(i), "customerName": name} for i, name in enumerate(names)]
    assert ordered_ids(records, "customerName") == ["4", "3", "2", "1", "0"]
    assert ordered_ids(records, " -customerName ") == ["0", "1", "2", "3", "4"]


def test_order_booleans_and_nested_paths():
    records = [
        {"id": "t", "metadata": {"isDeleted": True}},
        {"id": "absent"},
        {"id": "f", "metadata": {"isDeleted": False}},
    ]
    assert ordered_ids(records, "metadata.isDeleted") == ["absent", "f", "t"]


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        pytest.param("addresses", unresolved("addresses"), id="array"),
        pytest.param("-addresses.city", unresolved("addresses.city"), id="array-path"),
        pytest.param("metadata", unresolved("metadata"), id="object"),
        pytest.param("supplementalData", unresolved("supplementalData"), id="supplemental"),
        pytest.param("-nope", unresolved("nope"), id="unknown"),
        pytest.param("", MALFORMED, id="empty"),
        pytest.param("-", MALFORMED, id="dash-only"),
        pytest.param("--id", MALFORMED, id="double-dash"),
        pytest.param("id,status", MALFORMED, id="two-fields"),
    ],
)
def test_order_errors(order_by, message):
    with pytest.raises(QueryError) as caught:
        compile_order(order_by, CUSTOMER_SCHEMA, "Customer")
    assert str(caught.value) == message


# ---- Properties: query.py against a reference model written independently here. ----

STRING_FIELDS = [
    "id",
    "customerName",
    "contactName",
    "emailAddress",
    "defaultCurrency",
    "phone",
    "registrationNumber",
    "taxNumber",
    "status",
]
DATE_FIELDS = ["modifiedDate", "sourceModifiedDate"]
BOOL_FIELD = "metadata.isDeleted"
WORDS = ["Acme", "acme", "ACME (UK)", "acme (uk)", "Straße", "STRASSE", "a&b", "x|y", "{", "=="]
SIX = datetime(2021, 11, 15, 6, tzinfo=UTC)
# Instants a few hours or a microsecond apart, so zone and fraction handling flip results.
NEAR_INSTANTS = [
    SIX,
    SIX + timedelta(microseconds=1),
    SIX - timedelta(hours=5),
    SIX + timedelta(hours=5),
    SIX.replace(hour=0),
    datetime(2022, 8, 23, 12, 34, 56, 789012, tzinfo=UTC),
]


@dataclass(frozen=True)
class Cmp:
    path: str
    op: str
    text: str  # the value as written in the query
    value: object  # str for strings, bool for booleans, aware datetime for dates
    pad: str


@dataclass(frozen=True)
class Junction:
    op: str  # "&&" or "||"
    items: tuple
    braced: bool


@dataclass
class Sample:
    record: dict
    instants: dict  # date field -> the instant it holds, or None when null/garbage


def render_date(instant, form, offset_minutes, extra_digit):
    """Write `instant` in one of Codat's forms; return (text, the instant the text denotes)."""
    if form == "date":
        midnight = instant.replace(hour=0, minute=0, second=0, microsecond=0)
        return instant.strftime("%Y-%m-%d"), midnight
    if form == "offset":
        local = instant + timedelta(minutes=offset_minutes)
        sign = "-" if offset_minutes < 0 else "+"
        hours, minutes = divmod(abs(offset_minutes), 60)
        return local.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{sign}{hours:02}:{minutes:02}", instant
    body = instant.strftime("%Y-%m-%dT%H:%M:%S")
    if form == "seven":
        body += f".{instant.microsecond:06}{extra_digit}"
    elif instant.microsecond:
        body += f".{instant.microsecond:06}"
    return body + ("Z" if form in ("z", "seven") else ""), instant


any_instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)
instants = st.one_of(st.sampled_from(NEAR_INSTANTS), st.sampled_from(NEAR_INSTANTS), any_instants)
dates = st.builds(
    render_date,
    instants,
    st.sampled_from(["date", "z", "zoneless", "offset", "seven"]),
    st.sampled_from([-300, -210, 0, 60, 330, 840]),
    st.integers(0, 9),
)
FRAGMENTS = ["cMe", "(UK", "strasse", "ß", "A&", "|"]  # hit the records' words in another case
odd_words = st.text("aAbB()&|{é ", min_size=1, max_size=5).map(str.strip)
query_words = st.sampled_from(WORDS + FRAGMENTS) | odd_words.filter(
    lambda v: v and "&&" not in v and "||" not in v
)
pads = st.sampled_from(["", " ", "  "])


@st.composite
def comparisons(draw):
    kind = draw(st.sampled_from(["string", "date", "bool"]))
    if kind == "string":
        word = draw(query_words)
        return Cmp(
            draw(st.sampled_from(STRING_FIELDS)),
            draw(st.sampled_from(["=", "!=", "~"])),
            word,
            word,
            draw(pads),
        )
    if kind == "bool":
        text = draw(st.sampled_from(["true", "false", "TRUE", "False"]))
        op = draw(st.sampled_from(["=", "!="]))
        return Cmp(BOOL_FIELD, op, text, text.lower() == "true", draw(pads))
    text, instant = draw(dates)
    op = draw(st.sampled_from(["=", "!=", ">", "<", ">=", "<="]))
    return Cmp(draw(st.sampled_from(DATE_FIELDS)), op, text, instant, draw(pads))


queries = st.recursive(
    comparisons(),
    lambda children: st.builds(
        Junction,
        st.sampled_from(["&&", "||"]),
        st.lists(children, min_size=2, max_size=3).map(tuple),
        st.booleans(),
    ),
    max_leaves=8,
)


def render(node):
    if isinstance(node, Cmp):
        return f"{node.path}{node.pad}{node.op}{node.pad}{node.text}"
    parts = []
    for item in node.items:
        text = render(item)
        # An `||` inside an `&&` needs braces; anything may have them anyway.
        needs = isinstance(item, Junction) and item.op == "||" and node.op == "&&"
        parts.append(f"{{ {text} }}" if needs and not item.braced else text)
    text = f" {node.op} ".join(parts)
    return f"{{{text}}}" if node.braced else text


def lookup(record, path):
    value = record
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def evaluate(node, sample):
    if isinstance(node, Junction):
        results = [evaluate(item, sample) for item in node.items]
        return all(results) if node.op == "&&" else any(results)
    if node.path in DATE_FIELDS:
        have = sample.instants[node.path]
        if have is None:
            return False
        want = node.value
        return {
            "=": have == want,
            "!=": have != want,
            ">": have > want,
            "<": have < want,
            ">=": have >= want,
            "<=": have <= want,
        }[node.op]
    have = lookup(sample.record, node.path)
    if node.path == BOOL_FIELD:
        if not isinstance(have, bool):
            return False
        return (have == node.value) if node.op == "=" else (have != node.value)
    if not isinstance(have, str):
        return False
    have, want = have.casefold(), node.value.casefold()
    return {"=": have == want, "!=": have != want, "~": want in have}[node.op]


MISSING = object()
record_strings = st.one_of(
    st.just(MISSING),
    st.none(),
    st.sampled_from(WORDS),
    st.text("aAbB()é", max_size=4),
)
JUNK_DATES = ["", "soon", "2021-11-15T06:00", "15/11/2021"]


@st.composite
def samples(draw):
    record, instants_by_field = {}, {}
    for field in STRING_FIELDS:
        value = draw(record_strings)
        if value is not MISSING:
            record[field] = value
    for field in DATE_FIELDS:
        choice = draw(st.sampled_from(["missing", "null", "junk", "year-one", *["date"] * 4]))
        instant = None
        if choice == "null":
            record[field] = None
        elif choice == "junk":
            record[field] = draw(st.sampled_from(JUNK_DATES))
        elif choice == "year-one":
            record[field], instant = "0001-01-01T00:00:00", datetime(1, 1, 1, tzinfo=UTC)
        elif choice == "date":
            record[field], instant = draw(dates)
        instants_by_field[field] = instant
    metadata = draw(
        st.sampled_from(
            [
                *(MISSING, None, {}, [], {"isDeleted": None}, {"isDeleted": "true"}),
                *({"isDeleted": True}, {"isDeleted": False}) * 2,
            ]
        )
    )
    if metadata is not MISSING:
        record["metadata"] = metadata
    return Sample(record, instants_by_field)


@settings(max_examples=400, deadline=None)
@given(query=queries, population=st.lists(samples(), min_size=1, max_size=12))
def test_query_agrees_with_reference_model(query, population):
    text = render(query)
    predicate = compile_query(text, CUSTOMER_SCHEMA, "Customer")
    for sample in population:
        assert predicate(sample.record) == evaluate(query, sample), (text, sample.record)


def reference_key(sample, path):
    if path in DATE_FIELDS:
        instant = sample.instants[path]
        return (0,) if instant is None else (1, instant)
    value = lookup(sample.record, path)
    if path == BOOL_FIELD:
        return (1, value) if isinstance(value, bool) else (0,)
    return (1, value.casefold(), value) if isinstance(value, str) else (0,)


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from([*STRING_FIELDS, *DATE_FIELDS, BOOL_FIELD]),
    descending=st.booleans(),
    population=st.lists(samples(), max_size=15),
)
def test_order_agrees_with_reference_key(path, descending, population):
    key, desc = compile_order(("-" if descending else "") + path, CUSTOMER_SCHEMA, "Customer")
    assert desc is descending
    got = sorted(range(len(population)), key=lambda i: key(population[i].record), reverse=desc)
    want = sorted(
        range(len(population)), key=lambda i: reference_key(population[i], path), reverse=descending
    )
    assert got == want
