"""What the emulator serves agrees, field for field, with Codat's example bodies in tests/fixtures/codat.

Every customer, page, create/update model and error example is compared over HTTP with what the
emulator answers for the same platform: field names, JSON types, enum values and link forms.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from connector.emulator.store import Sizing
from tests.shapes import FREE_MAPS, json_type, path_types
from tests.utils import DEFAULT_SIZING, ERROR_KEYS, FIXTURES, CodatSession

EXAMPLES = FIXTURES / "examples"
# The spec's `Customer` schema and what it refers to (tests/fixtures/codat/README.md).
SPEC = FIXTURES / "openapi" / "Codat-Accounting-2023-04-Customer.json"

# 24 companies: the 20 normal ones carry every platform once, then the four special states.
SIZING = {"seed": 7, "companies": 24, "customers": 4800}
NEVER_READ_INDEX = 20
SOURCES = {
    "oas-HEAD-Codat-Lending": "lending",
    "oas-HEAD-Codat-Sync-Expenses": "expenses",
    "oas-HEAD-Codat-Sync-Commerce-v1": "commerce",
    "oas-cd39809-Codat-Accounting": "accounting-2023",
    "sdk-0.36.0-genlock": "sdk",
}
KINDS = {
    "list-customers": "list",
    "list-accounting-customers": "list",
    "get-customer": "get",
    "get-accounting-customer": "get",
    "get-create-update-customers-model": "model",
}
COMPONENT_STATUS = {
    "BadRequest": 400,
    "Malformed-Query": 400,
    "Unauthorized": 401,
    "Payment-Required": 402,
    "Forbidden": 403,
    "Not-Found": 404,
    "Conflict": 409,
    "Unprocessable-Content": 422,
    "Too-Many-Requests": 429,
    "Internal-Server-Error": 500,
    "Service-Unavailable": 503,
}
GENERIC = {"Example 1", "default", ""}  # example names that are not a platform: any company will do
# Ids plain `requests` cannot send: it removes dot segments (test_dot_ids.py sends them otherwise).
DOT_SEGMENTS = {".", ".."}


@dataclass
class Example:
    """One example body and where it came from."""

    file: str
    source: str
    operation: str
    name: str
    status: int
    body: Any

    @property
    def kind(self) -> str:
        return KINDS.get(self.operation, "error" if self.status >= 400 else "other")

    @property
    def id(self) -> str:
        """A readable test id: source, operation and example (platform) name."""
        if self.operation == "components_responses":
            return f"{self.source}-{self.name}"
        return f"{self.source}-{self.kind if self.status < 400 else self.operation}-{self.name}"


def example_names() -> dict[str, str]:
    """File name to example name (the platform, for customers), from INDEX.md."""
    names = {}
    for line in (EXAMPLES / "INDEX.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].endswith(".json"):
            names[cells[0]] = cells[4] if len(cells) == 5 else cells[2]
    return names


def load_examples() -> list[Example]:
    names = example_names()  # no fixtures: FileNotFoundError, a collection error, not a skip
    examples = []
    for path in sorted(EXAMPLES.glob("*.json")):
        parts = path.stem.split("__")
        source, operation = SOURCES[parts[0]], parts[1]
        body = json.loads(path.read_text(encoding="utf-8"))
        name = names.get(path.name) or parts[-1]
        if operation == "components_responses":
            examples.append(
                Example(path.name, source, operation, f"{parts[2]}-{name}", COMPONENT_STATUS[parts[2]], body)
            )
        elif source == "sdk":
            for status, media in body["responses"].items():
                for content in media.values():
                    examples.append(Example(path.name, source, operation, name, int(status), content))
        else:
            examples.append(Example(path.name, source, operation, name, int(parts[2]), body))
    return examples


ALL_EXAMPLES = load_examples()
CUSTOMER_EXAMPLES = [e for e in ALL_EXAMPLES if e.kind in ("list", "get") and e.status == 200]
GET_EXAMPLES = [e for e in CUSTOMER_EXAMPLES if e.kind == "get"]
LIST_EXAMPLES = [e for e in CUSTOMER_EXAMPLES if e.kind == "list"]
MODEL_EXAMPLES = [e for e in ALL_EXAMPLES if e.kind == "model" and e.status == 200]
ERROR_EXAMPLES = [e for e in ALL_EXAMPLES if e.status >= 400 and e.body]


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


def test_every_example_file_is_compared():
    compared = {e.file for e in CUSTOMER_EXAMPLES + MODEL_EXAMPLES + ERROR_EXAMPLES}
    assert compared == {path.name for path in EXAMPLES.glob("*.json")}
    assert len(compared) == 187
    assert len(ERROR_EXAMPLES) == 40 + 9  # components, and the 4xx bodies inside SDK files


# -- JSON shapes ------------------------------------------------------------------------------


def values_at(records: list[Any], path: str) -> set[Any]:
    """The values found at a path such as `contacts[].phone[].type`."""
    values = set()

    def walk(value: Any, keys: list[str]) -> None:
        if not keys:
            values.add(value)
            return
        key, rest = keys[0], keys[1:]
        if not isinstance(value, dict):
            return
        if key.endswith("[]"):
            for item in value.get(key[:-2]) or []:
                walk(item, rest)
        elif key in value:
            walk(value[key], rest)

    for record in records:
        walk(record, path.split("."))
    return values


def shape_problems(example: Any, served: Any, path: str = "$", extra_ok=lambda path, key: False) -> list[str]:
    """Differences of key sets and JSON types, recursively; lists are compared item by item."""
    if json_type(example) != json_type(served):
        return [f"{path}: {json_type(example)} in the example, {json_type(served)} served"]
    problems = []
    if isinstance(example, dict):
        problems += [f"{path}.{key}: not served" for key in example if key not in served]
        problems += [
            f"{path}.{key}: not in the example"
            for key in served
            if key not in example and not extra_ok(path, key)
        ]
        for key in example.keys() & served.keys():
            problems += shape_problems(example[key], served[key], f"{path}.{key}", extra_ok)
    elif isinstance(example, list):
        if len(example) != len(served):
            problems.append(f"{path}: {len(example)} items in the example, {len(served)} served")
        for index, (left, right) in enumerate(zip(example, served, strict=False)):
            problems += shape_problems(left, right, f"{path}[{index}]", extra_ok)
    return problems


# -- the Customer schema of the spec ----------------------------------------------------------

SPEC_TYPES = {"integer": "number"} | {t: t for t in ("string", "number", "boolean", "object", "array")}


def customer_schema() -> tuple[dict[str, str | None], dict[str, set[str]]]:
    """Field paths of the spec's `Customer` with their JSON type, and the enums by path."""
    spec = json.loads(SPEC.read_text(encoding="utf-8"))

    def lookup(ref: str) -> Any:
        node: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    types: dict[str, str | None] = {}
    enums: dict[str, set[str]] = {}

    def walk(node: dict, path: str, depth: int) -> None:
        while "$ref" in node:
            node = lookup(node["$ref"])
        if depth > 12:
            return
        for part in node.get("allOf", []):
            walk(part, path, depth + 1)
        if path and "type" in node:
            types[path] = SPEC_TYPES[node["type"]]
        elif path:
            types.setdefault(path, None)
        if "enum" in node:
            enums[path] = set(node["enum"])
        if path in FREE_MAPS:
            return
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name, depth + 1)
        if "items" in node:
            walk(node["items"], f"{path}[]", depth + 1)

    walk(spec["components"]["schemas"]["Customer"], "", 0)
    return types, enums


# -- the served account -----------------------------------------------------------------------


@dataclass
class Account:
    """What the emulator serves for the examples' account, read once over HTTP."""

    session: CodatSession
    platforms: dict[str, tuple[str, str]]  # platform name: (company id, accounting connection id)
    customers: dict[str, list[dict]]  # company id: every customer served
    never_read: str

    def customers_of(self, platform: str) -> list[dict]:
        """The served customers of the platform's company, or of every company for generic examples."""
        if platform in GENERIC:
            return [record for records in self.customers.values() for record in records]
        return self.customers[self.company_of(platform)]

    def company_of(self, platform: str) -> str:
        if platform in GENERIC:
            return next(iter(self.customers))
        assert platform in self.platforms, f"the emulator serves no {platform} company"
        return self.platforms[platform][0]


@pytest.fixture(scope="module")
def served_account(emulator_server):
    """Reset the session's emulator to the examples' account and read every customer once."""
    prepare(emulator_server.emulator)
    with CodatSession(emulator_server.url) as session:
        companies = session.get("/companies", params={"pageSize": 100}).json()["results"]
        platforms, customers = {}, {}
        for company in companies:
            page = session.get(f"/companies/{company['id']}/data/customers", params={"pageSize": 5000})
            if page.status_code != 200:
                continue
            customers[company["id"]] = page.json()["results"]
            accounting = [c for c in company["dataConnections"] if c["sourceType"] == "Accounting"]
            platforms.setdefault(company["platform"], (company["id"], accounting[0]["id"]))
        never_read = list(emulator_server.emulator.store.companies)[NEVER_READ_INDEX]
        yield Account(session, platforms, customers, never_read)
    emulator_server.emulator.reset(DEFAULT_SIZING.seed, DEFAULT_SIZING.companies, DEFAULT_SIZING.customers)


@pytest.fixture
def account(served_account, emulator_server):
    """The examples' account, regenerated (same seed, same ids) if another module reset the emulator."""
    prepare(emulator_server.emulator, regenerate=emulator_server.emulator.store.sizing != Sizing(**SIZING))
    return served_account


def prepare(emulator, regenerate: bool = True) -> None:
    """The examples' account with the settings of conftest's `emulator` fixture, and no faults."""
    if regenerate:
        emulator.reset(**SIZING)
    emulator.faults.clear()
    emulator.latency = 0.0
    emulator.limiter.daily_limit = None
    emulator.limiter.max_concurrent = 10
    emulator.limiter.per_minute_limit = None
    emulator.limiter.window_seconds = 60.0


@pytest.fixture(scope="module")
def schema():
    return customer_schema()


def example_customers(example: Example) -> list[dict]:
    return example.body["results"] if example.kind == "list" else [example.body]


# -- customers --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", CUSTOMER_EXAMPLES, ids=ids(CUSTOMER_EXAMPLES))
def test_served_customers_have_the_example_fields_and_types(account, example):
    served = path_types(account.customers_of(example.name))
    for path, kinds in path_types(example_customers(example)).items():
        assert path in served, f"{path} is in the example but never served for {example.name}"
        assert served[path] - {"null"} == kinds - {"null"}, path


@pytest.mark.parametrize("example", GET_EXAMPLES, ids=ids(GET_EXAMPLES))
def test_get_customer_answers_like_the_example(account, example):
    wanted = path_types([example.body])
    company_id = account.company_of(example.name)
    top = {key: json_type(value) for key, value in example.body.items()}
    candidates = [
        r
        for r in account.customers_of(example.name)
        if all(json_type(r.get(k)) == t for k, t in top.items()) and r["id"] not in DOT_SEGMENTS
    ]
    assert candidates, f"no served {example.name} customer has every field of the example"
    best = max(candidates, key=lambda r: len(wanted.keys() & path_types([r]).keys()))
    response = account.session.get(f"/companies/{company_id}/data/customers/{quote(best['id'], safe='')}")
    assert response.status_code == 200
    assert response.json() == best
    assert {k: json_type(response.json()[k]) for k in top} == top


@pytest.mark.parametrize("example", LIST_EXAMPLES, ids=ids(LIST_EXAMPLES))
def test_list_page_envelope_and_links_agree_with_the_example(account, example):
    expected = example.body
    company_id = account.company_of(example.name)
    params = {"page": expected["pageNumber"], "pageSize": expected["pageSize"]}
    if "next" not in expected["_links"]:  # a one-page answer, as in the example
        params["query"] = f"id={account.customers[company_id][0]['id']}"
    response = account.session.get(f"/companies/{company_id}/data/customers", params=params)
    assert response.status_code == 200
    page = response.json()
    envelope = {k: v for k, v in page.items() if k != "results"}
    assert shape_problems({k: v for k, v in expected.items() if k != "results"}, envelope) == []
    assert isinstance(page["results"], list)
    assert len(page["results"]) == min(page["pageSize"], page["totalResults"])
    links = page["_links"]
    assert set(links) == set(expected["_links"])
    self_href = f"/companies/{company_id}/data/customers"
    assert links["self"] == {"href": self_href}
    for name in set(links) - {"self"}:
        served_url, example_url = urlsplit(links[name]["href"]), urlsplit(expected["_links"][name]["href"])
        assert served_url.path == self_href
        served_query = [(k, v) for k, v in parse_qsl(served_url.query) if k not in ("query", "orderBy")]
        assert served_query == parse_qsl(example_url.query)
        assert (served_url.scheme, served_url.netloc) == ("", "")


def test_served_field_names_appear_in_an_example_or_the_schema(account, schema):
    schema_types, _ = schema
    example_paths = path_types([r for e in CUSTOMER_EXAMPLES for r in example_customers(e)])
    for path, kinds in path_types(account.customers_of("default")).items():
        assert path in example_paths or path in schema_types, (
            f"{path} is served but in no example nor the schema"
        )
        allowed = example_paths.get(path) or {schema_types[path]}
        assert kinds - {"null"} <= allowed, f"{path}: served {kinds}, examples and schema allow {allowed}"


ENUM_PATHS = [
    "status",
    "addresses[].type",
    "contacts[].status",
    "contacts[].address.type",
    "contacts[].phone[].type",
]


@pytest.mark.parametrize("path", ENUM_PATHS)
def test_served_enum_values_are_the_schema_values(account, schema, path):
    _, enums = schema
    served = values_at(account.customers_of("default"), path)
    examples = values_at([r for e in CUSTOMER_EXAMPLES for r in example_customers(e)], path)
    assert examples <= enums[path]
    assert served == enums[path]  # every value, and nothing else


def test_required_fields_are_never_null(account):
    records = account.customers_of("default")
    for path in ["id", *ENUM_PATHS]:
        assert None not in values_at(records, path), path
    assert all(isinstance(r["id"], str) and r["id"] for r in records)


# -- create/update models ---------------------------------------------------------------------


def sdk_drops_nested_properties(path: str, key: str) -> bool:
    """The SDK's copies of the models leave out the `properties` of array and object fields."""
    return key == "properties" and re.fullmatch(r"\$\.properties\.[^.]+", path) is not None


@pytest.mark.parametrize("example", MODEL_EXAMPLES, ids=ids(MODEL_EXAMPLES))
def test_create_update_model_has_the_example_structure(account, example):
    company_id, connection_id = account.platforms[example.name]
    response = account.session.get(f"/companies/{company_id}/connections/{connection_id}/options/customers")
    assert response.status_code == 200
    extra_ok = sdk_drops_nested_properties if example.source == "sdk" else (lambda path, key: False)
    assert shape_problems(example.body, response.json(), extra_ok=extra_ok) == []


# -- errors -----------------------------------------------------------------------------------


def provoke(account, emulator, example: Example):
    """Make the emulator answer the example's error; return the answer and the expected `error` text.

    The text is None where the example's wording belongs to another product or situation.
    """
    session = account.session
    company_id, connection_id = account.platforms["Xero"]
    customer_id = quote(
        next(c["id"] for c in account.customers[company_id] if c["id"] not in DOT_SEGMENTS), safe=""
    )
    customers = f"/companies/{company_id}/data/customers"
    connection = f"/companies/{company_id}/connections/{connection_id}"
    text = example.body["error"]
    fault_kinds = {402: "402", 403: "403", 429: "429", 500: "500", 503: "503"}
    if example.status == 401:
        path = {
            "get-customer": f"{customers}/{customer_id}",
            "list-customer-attachments": f"{connection}/data/customers/{customer_id}/attachments",
            "get-customer-attachment": f"{connection}/data/customers/x/attachments/y",
            "download-customer-attachment": f"{connection}/data/customers/x/attachments/y/download",
            "get-create-update-customers-model": f"{connection}/options/customers",
        }.get(example.operation, customers)
        return session.get(path, headers={"Authorization": None}), text
    if example.status in fault_kinds:
        emulator.add_fault(fault_kinds[example.status])
        return session.get(customers), None if example.status == 402 else text
    if example.status == 409:
        return session.get(f"/companies/{account.never_read}/data/customers"), text
    if example.status == 422:
        headers = {"Idempotency-Key": "7f1c2d5e-0000-4000-8000-000000000422"}
        session.post(f"{connection}/push/customers", json={"customerName": "A"}, headers=headers)
        return session.post(f"{connection}/push/customers", json={"customerName": "B"}, headers=headers), None
    if example.status == 404:
        if "company" in text:
            missing = text.rsplit(" ", 1)[1]
            return session.get(f"/companies/{missing}"), text
        if "connection" in text:
            missing = text.split()[2]
            return session.get(f"/companies/{company_id}/connections/{missing}/options/customers"), text
        missing = text.rsplit(" ", 1)[1]
        return session.get(f"{customers}/{missing}"), text.replace("for accounts", "for customers")
    if "Could not resolve property" in text:
        unresolved = text.replace("on Dataset", "on Customer")  # the type is the endpoint's
        return session.get(customers, params={"query": "isCompleted=true"}), unresolved
    if "Malformed query" in text:
        return session.get(customers, params={"query": "customerName"}), text
    if example.operation in ("create-customer", "update-customer"):
        method = "POST" if example.operation == "create-customer" else "PUT"
        target = "" if method == "POST" else f"/{customer_id}"
        return session.request(method, f"{connection}/push/customers{target}", data=b"{not json"), text
    return session.get(customers, params={"pageSize": 0}), text


@pytest.mark.parametrize("example", ERROR_EXAMPLES, ids=ids(ERROR_EXAMPLES))
def test_error_answers_have_the_example_fields_and_types(account, emulator_server, example):
    response, error_text = provoke(account, emulator_server.emulator, example)
    assert response.status_code == example.status
    body = response.json()
    assert set(body) == set(example.body) == ERROR_KEYS
    assert {k: json_type(v) for k, v in body.items()} == {k: json_type(v) for k, v in example.body.items()}
    assert body["statusCode"] == example.status  # some examples' own statusCode is wrong (402 says 429)
    assert (body["canBeRetried"], body["detailedErrorCode"]) == (
        example.body["canBeRetried"],
        example.body["detailedErrorCode"],
    )
    assert re.fullmatch(r"[0-9a-f]{32}", body["correlationId"])
    if error_text is not None:
        assert body["error"].startswith(error_text)
        if error_text.startswith("Error parsing") or example.status != 400:
            assert body["error"] == error_text
