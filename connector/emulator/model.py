"""The emulator's in-memory account: companies, connections, customers and attachments."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]  # a JSON object: the emulator's one alias for it

# Codat's `dataStatus.customers.currentStatus` values the emulator uses.
STATUS_COMPLETE = "Complete"
STATUS_FETCHING = "Fetching"
STATUS_NEVER_READ = "NotRead"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause cyclic garbage collection while building many acyclic objects.

    Each collection it would trigger meanwhile traverses every record of the account, for
    nothing: that would cost about as much again as the building itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Connection:
    """A company's data connection (`GET /companies/{companyId}/connections`)."""

    id: str
    integration_id: str
    integration_key: str
    source_id: str
    platform_name: str
    source_type: str  # "Accounting", "Banking", "Commerce"
    status: str  # "Linked", "Unlinked", "Deauthorized", "PendingAuth"
    created: str
    last_sync: str | None

    @property
    def is_accounting(self) -> bool:
        """Whether this connection carries accounting data such as customers."""
        return self.source_type == "Accounting"

    def to_json(self, company_id: str) -> Json:
        """Render the connection as Codat serves it."""
        return {
            "id": self.id,
            "integrationId": self.integration_id,
            "integrationKey": self.integration_key,
            "sourceId": self.source_id,
            "sourceType": self.source_type,
            "platformName": self.platform_name,
            "linkUrl": f"https://link-api.codat.io/companies/{company_id}/connections/{self.id}/start",
            "status": self.status,
            "lastSync": self.last_sync,
            "created": self.created,
            "dataConnectionErrors": [],
            "connectionInfo": None,
        }


@dataclass
class Attachment:
    """Metadata of one customer attachment; its bytes are derived from `content_seed`."""

    id: str
    name: str
    content_type: str
    date_created: str
    file_size: int  # the real size of the bytes served by download
    report_size: bool  # False: `fileSize` is served as null, as some platforms do
    include_when_sent: bool
    content_seed: int

    def to_json(self) -> Json:
        """Render the attachment as Codat serves it."""
        return {
            "id": self.id,
            "name": self.name,
            "contentType": self.content_type,
            "dateCreated": self.date_created,
            "fileSize": self.file_size if self.report_size else None,
            "includeWhenSent": self.include_when_sent,
        }


@dataclass
class Company:
    """A Codat company with its customers (company-scoped) and attachments (connection-scoped).

    `customers` maps customer id to the record exactly as served (camelCase, possibly with
    missing or null fields); insertion order carries no meaning. `attachments` maps
    (connection id, customer id) to that customer's attachments on that connection.
    """

    id: str
    name: str
    description: str | None
    platform: str
    created: str
    last_sync: str | None
    connections: list[Connection]
    customers: dict[str, Json] = field(default_factory=dict)
    attachments: dict[tuple[str, str], list[Attachment]] = field(default_factory=dict)
    customers_status: str = STATUS_COMPLETE
    customers_last_successful_sync: str | None = None

    @property
    def accounting_connections(self) -> list[Connection]:
        """The connections that carry customers."""
        return [c for c in self.connections if c.is_accounting]

    def to_json(self) -> Json:
        """Render the company as Codat serves it (`GET /companies/{companyId}`)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "platform": self.platform,
            "redirect": f"https://link.codat.io/company/{self.id}",
            "lastSync": self.last_sync,
            "created": self.created,
            "createdByUserName": "emulator",
            "products": ["accounting"],
            "tags": {},
            "referenceParentCompany": None,
            "referenceSubsidiaryCompanies": [],
            "dataConnections": [c.to_json(self.id) for c in self.connections],
        }
