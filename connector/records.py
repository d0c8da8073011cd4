"""Codat dates, record digests and the attachment row; customer pages are built in `batches`."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from dlt.common.schema.typing import TTableSchemaColumns

Json = dict[str, Any]  # a JSON object as Codat sends it: the one alias every module uses

# Codat's date forms, and only those (`docs/codat-api.md`, Dates): a day, or a day and time
# to the second with 0 to 7 fractional digits, in UTC (`Z`), with an offset, or zone-less. The
# emulator's query language reads the same forms.
_CODAT_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?(?:Z|[+-]\d{2}:[0-5]\d)?)?", re.ASCII
)
# Codat's "no value" for a date (`sourceModifiedDate` of records a platform never dated).
NULL_DATE_YEAR = 1


def parse_codat_datetime(value: Any) -> datetime | None:
    """Read a Codat date (any of its forms) as an aware UTC datetime; None for anything else.

    Zone-less values (`2021-11-15T01:00:00`) are read as UTC: Codat documents them as the
    business's local time but never says which zone that is (`docs/codat-api.md`, Dates).
    A 7th fractional digit is dropped (Python keeps microseconds). `0001-01-01` means
    "no date" in Codat and is read as None.
    """
    if not isinstance(value, str) or _CODAT_DATE.fullmatch(value) is None:
        return None
    try:  # the pattern admits only forms the standard library reads as above (it drops a 7th digit)
        moment = datetime.fromisoformat(value)
        if moment.year == NULL_DATE_YEAR:
            return None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # shaped like a date but impossible (month 13, year 10000)
        return None


def is_no_date(value: Any) -> bool:
    """Whether a date field says "no date" as Codat does: empty, or the year 1 (`0001-01-01`)."""
    return value is None or value == "" or (isinstance(value, str) and value.startswith("0001-01-01"))


def format_codat_datetime(moment: datetime) -> str:
    """Write an instant the way Codat's query language reads it (UTC, microseconds, `Z`)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ExtractionClock:
    """Strictly increasing UTC instants, stamped on rows as `extractedAt`.

    One run may see a customer twice (it moved while the run paged); the merge keeps the
    row seen last, which is never older, by sorting duplicates on this stamp. Companies are read
    on several threads (`connector.readers`): one clock serves them all.
    """

    def __init__(self) -> None:
        self._last = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current instant, at least a microsecond after the previous one."""
        with self._lock:
            self._last = max(datetime.now(UTC), self._last + timedelta(microseconds=1))
            return self._last


def record_hash(record: Json) -> str:
    """A short, stable digest of a record as Codat sent it, to recognise a record already loaded."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=10).hexdigest()


# The `customer_attachments` table: its key, its columns, and those of downloaded files. A row
# carries the instant of the listing that returned it: a later listing of its customer that did
# not return it retires it (`connector.listings`), and of two listings in one load the later wins.
ATTACHMENT_KEY = ("company_id", "connection_id", "customer_id", "id")
ATTACHMENT_COLUMNS: TTableSchemaColumns = {
    "company_id": {"data_type": "text", "nullable": False},
    "connection_id": {"data_type": "text", "nullable": False},
    "customer_id": {"data_type": "text", "nullable": False},
    "id": {"data_type": "text", "nullable": False},
    "name": {"data_type": "text"},
    "content_type": {"data_type": "text"},
    "date_created": {"data_type": "timestamp"},
    "file_size": {"data_type": "bigint"},
    "include_when_sent": {"data_type": "bool"},
    "listed_at": {"data_type": "timestamp", "dedup_sort": "desc"},
    "is_deleted": {"data_type": "bool"},
}
# The `customer_attachment_listings` table: each customer's latest listing on each connection.
LISTINGS_TABLE = "customer_attachment_listings"
LISTING_KEY = ("company_id", "connection_id", "customer_id")
LISTING_COLUMNS: TTableSchemaColumns = {
    "company_id": {"data_type": "text", "nullable": False},
    "connection_id": {"data_type": "text", "nullable": False},
    "customer_id": {"data_type": "text", "nullable": False},
    "listed_at": {"data_type": "timestamp", "nullable": False, "dedup_sort": "desc"},
    "attachments": {"data_type": "bigint"},
    "reason": {"data_type": "text"},  # why it was listed: changed, left over, refresh
}
FILE_COLUMNS: TTableSchemaColumns = {
    "file_path": {"data_type": "text"},
    "sha256": {"data_type": "text"},
    "file_status": {"data_type": "text"},
}


def map_attachment(
    attachment: Json, company_id: str, connection_id: str, customer_id: str, listed_at: datetime
) -> Json:
    """An attachment row keyed by company, connection, customer and attachment id."""
    return {
        **attachment,
        "companyId": company_id,
        "connectionId": connection_id,
        "customerId": customer_id,
        "dateCreated": parse_codat_datetime(attachment.get("dateCreated")),
        "listedAt": listed_at,
        "isDeleted": False,
    }
