"""The peer of the benchmarks: Codat customers through dlt's generic `rest_api` source."""

from __future__ import annotations

import base64

from dlt.sources import DltSource
from dlt.sources.rest_api import rest_api_source
from dlt.sources.rest_api.typing import PageNumberPaginatorConfig, RESTAPIConfig

# Codat's largest page; the peer pages as ours does, so the comparison is not about page size.
PEER_PAGE_SIZE = 5000


def codat_rest_api_source(api_key: str, base_url: str, page_size: int = PEER_PAGE_SIZE) -> DltSource:
    """Every company's customers, keyed on (company id, customer id), with `rest_api`'s defaults.

    Codat expects `Authorization: Basic base64(key)`, not dlt's `HttpBasicAuth` (which encodes
    `user:password`), so the header is sent as an API key. Companies whose customers cannot be
    read (`409`) are skipped, as the connector skips them.

    Args:
        api_key: The Codat API key.
        base_url: The API's (or the emulator's) address.
        page_size: Records per request, Codat's `pageSize`.

    Returns:
        A source with the resources `companies` and `customers`.
    """
    header = "Basic " + base64.b64encode(api_key.encode()).decode()
    paginator: PageNumberPaginatorConfig = {
        "type": "page_number",
        "base_page": 1,
        "page_param": "page",
        "total_path": None,  # Codat gives totalResults, not a page count: stop on an empty page
    }
    config: RESTAPIConfig = {
        "client": {
            "base_url": base_url,
            "auth": {"type": "api_key", "name": "Authorization", "api_key": header, "location": "header"},
            "paginator": paginator,
        },
        "resource_defaults": {"write_disposition": "merge", "endpoint": {"data_selector": "results"}},
        "resources": [
            {
                "name": "companies",
                "primary_key": "id",
                "endpoint": {"path": "companies", "params": {"pageSize": page_size}},
            },
            {
                "name": "customers",
                "primary_key": ["_companies_id", "id"],
                "include_from_parent": ["id"],
                "endpoint": {
                    "path": "companies/{resources.companies.id}/data/customers",
                    "params": {"pageSize": page_size},
                    "response_actions": [{"status_code": 409, "action": "ignore"}],
                },
            },
        ],
    }
    return rest_api_source(config, name="codat_peer")
