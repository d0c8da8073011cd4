"""Every default of the connector, in one place.

`codat_source`'s keyword defaults, the client's, the command line's and the destination's all
come from here; `.dlt/config.toml` sets none of them again, and the README's configuration
table is checked against `codat_source`'s signature by a test.
"""

from __future__ import annotations

# -- the API and its limits ------------------------------------------------------------------
DEFAULT_BASE_URL = "https://api.codat.io"
MAX_PAGE_SIZE = 5000  # customers per request: Codat's largest page
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE
DEFAULT_LIST_PAGE_SIZE = 1000  # companies and connections per request
MAX_IN_FLIGHT_PER_COMPANY = 10  # Codat answers 429 past 10 concurrent requests for one company
DEFAULT_IN_FLIGHT_PER_COMPANY = MAX_IN_FLIGHT_PER_COMPANY
# Companies whose customer pages one process reads at once: 16 hide a half-second answer behind
# the others' reading (8 left 1.45x the time of answers at once in `make bench`, 16 about 1.3x).
# Waiting for an answer costs no memory; holding one does (a page of 5,000 customers is 4 MB of
# JSON, and its Arrow tables), so only a few readers at a time hold theirs, until it is Arrow
# tables: about as many as there are cores to turn them.
DEFAULT_COMPANY_CONCURRENCY = 16
PAGES_HELD_AT_ONCE = 2
MAX_COMPANY_CONCURRENCY = 64
DEFAULT_REQUESTS_PER_MINUTE = 1000  # Codat's limit per IP address
DEFAULT_RATE_WINDOW = 60.0  # seconds the limit above counts over
DEFAULT_QUOTA_RESERVE = 100  # daily requests left alone by attachment listings, for customer pages
CODAT_DAILY_REQUESTS_PER_COMPANY = 1000  # Codat's daily quota is 1,000 x (1 + companies)
DEFAULT_REFRESH_DAYS = 7.0  # every customer's attachments listed again within this many days

# -- retries and stopping --------------------------------------------------------------------
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_FACTOR = 1.0
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a connection (TCP and TLS)
# Seconds without a byte of an answer. The slowest ordinary answer is a page of 5,000 customers
# (4 MB of JSON): a few seconds for Codat to build; the body's transfer does not count, only a stall.
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_RETRY_WAIT = 60.0  # a 429 asking to wait longer is final (a spent daily quota)
DEFAULT_BREAKER_FAILURES = 10  # attempts in a row without an answer (or with a 5xx) open the breaker
DEFAULT_BREAKER_SECONDS = 10.0  # ... once they have gone on this long (a blip of errors does not)
# Seconds without any answer, while attempts fail, that open the breaker too. Above the read
# timeout, so one slow answer is retried; a request never answered stops at 30 + 1 + 30 = 61 s.
DEFAULT_BREAKER_SILENCE = 40.0

# -- attachment files ------------------------------------------------------------------------
DEFAULT_FILES_URL = "codat_files"
DEFAULT_MAX_FILE_SIZE = 100 * 1024 * 1024  # QuickBooks Online's and NetSuite's own cap

# -- pushes ----------------------------------------------------------------------------------
DEFAULT_POLL_INTERVAL = 2.0  # seconds between looks at a pending push operation
DEFAULT_PUSH_TIMEOUT = 600.0  # seconds before waiting for a push operation gives up
# Pushes waiting at once; the client's pacing keeps their requests within Codat's limits. A push
# between two polls holds no request: 10 at once left 1,000 creates at 1.49x the ideal in `make
# bench`, 50 at 1.12x. Below the client's 64 pooled connections.
DEFAULT_PUSH_CONCURRENCY = 50

# -- shards (`connector.shards`, `connector.orchestration`) -----------------------------------
DEFAULT_SHARD_COUNT = 16  # fixed once loaded: choose it for the account's size a few years out
DEFAULT_SHARDS_AT_ONCE = 4  # shards running at once per egress IP (the orchestrator pool's limit)

# -- the destination -------------------------------------------------------------------------
# Not `codat.duckdb`: DuckDB names the catalog after the file, and a catalog named like the
# dataset makes `codat.customers` ambiguous (a Binder Error on load and in every query).
DEFAULT_DUCKDB_FILE = "codat_warehouse.duckdb"
# DuckDB takes up to 80% of the machine's memory for the merge of a large load; this bound
# keeps a 500,000-customer load flat (peak 456 MiB against 401 MiB at 50,000 in `make bench`)
# at a small cost in speed: DuckDB spills to a temporary file instead.
DEFAULT_DUCKDB_MEMORY_LIMIT = "64MB"
