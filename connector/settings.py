"""The source's settings: one dlt configuration spec, resolved once per run, checked in one place.

`codat_source` is declared with this spec (as dlt's own `filesystem` and `sql_table` sources
are), so its arguments, `[sources.codat]` in `.dlt/` and the `SOURCES__CODAT__*` variables are
one thing. `run_sync`, the command line and the shards resolve it once (`resolve_settings`) and
read what they need from it (`hard_delete`, `shards`, ...), then hand the same object to the
source, so a setting made in configuration means the same as one made on the command line.
"""

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dlt.common.configuration import configspec, known_sections, resolve_configuration
from dlt.common.configuration.exceptions import (
    ConfigFieldMissingException,
    ConfigValueCannotBeCoercedException,
)
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

from connector.defaults import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BASE_URL,
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_BREAKER_SECONDS,
    DEFAULT_BREAKER_SILENCE,
    DEFAULT_COMPANY_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FILES_URL,
    DEFAULT_IN_FLIGHT_PER_COMPANY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_PAGE_SIZE,
    DEFAULT_QUOTA_RESERVE,
    DEFAULT_RATE_WINDOW,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_REFRESH_DAYS,
    DEFAULT_REQUESTS_PER_MINUTE,
    MAX_COMPANY_CONCURRENCY,
    MAX_IN_FLIGHT_PER_COMPANY,
    MAX_PAGE_SIZE,
)
from connector.errors import InvalidOption
from connector.records import parse_codat_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries and how long an attempt waits (`CodatClient`)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT


@dataclass(frozen=True)
class ApiLimits:
    """The client's pace within Codat's limits (`connector.pacing.Pacer`); no requests_per_minute: unpaced."""

    requests_per_minute: int | None = DEFAULT_REQUESTS_PER_MINUTE
    rate_window: float = DEFAULT_RATE_WINDOW
    rate_burst: int | None = None
    in_flight_per_company: int = DEFAULT_IN_FLIGHT_PER_COMPANY


@dataclass(frozen=True)
class BreakerPolicy:
    """When the circuit breaker stops a run's requests (`connector.pacing.CircuitBreaker`)."""

    failures: int = DEFAULT_BREAKER_FAILURES
    seconds: float = DEFAULT_BREAKER_SECONDS
    silence: float = DEFAULT_BREAKER_SILENCE


SECTIONS = (known_sections.SOURCES, "codat")  # [sources.codat], SOURCES__CODAT__*


def setting(name: str) -> str:
    """A setting as a user sets it: `page_size (SOURCES__CODAT__PAGE_SIZE)`."""
    return f"{name} ({'__'.join(s.upper() for s in SECTIONS)}__{name.upper()})"


@configspec
class CodatSettings(BaseConfiguration):
    """Every setting of the source; `codat_source`'s docstring says what each one does."""

    api_key: TSecretStrValue = None  # type: ignore[assignment]  # required: dlt resolves it from secrets
    base_url: str = DEFAULT_BASE_URL
    company_ids: list[str] | None = None
    company_query: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    attachments: bool = True
    attachment_concurrency: int = DEFAULT_IN_FLIGHT_PER_COMPANY
    company_concurrency: int = DEFAULT_COMPANY_CONCURRENCY
    request_budget: int | None = None
    requests_per_minute: int | None = DEFAULT_REQUESTS_PER_MINUTE
    rate_window: float = DEFAULT_RATE_WINDOW
    rate_burst: int | None = None
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    quota_reserve: int = DEFAULT_QUOTA_RESERVE
    download_files: bool = False
    files_url: str = DEFAULT_FILES_URL
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    hard_delete: bool = False
    history: bool = False
    attachment_refresh_days: float = DEFAULT_REFRESH_DAYS
    refresh_attachments: bool = False
    since: str | None = None
    until: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_seconds: float = DEFAULT_BREAKER_SECONDS
    breaker_silence: float = DEFAULT_BREAKER_SILENCE
    shards: int = 1
    shard: int = 0
    webhook_secret: TSecretStrValue | None = None  # `codat-webhooks`' signing secret (`whsec_...`)

    def on_resolved(self) -> None:
        """Refuse what would widen the run, spend requests on nothing, or fail once it has begun."""
        if self.company_ids is not None and (
            not self.company_ids or not all(str(c).strip() for c in self.company_ids)
        ):
            raise InvalidOption(
                f"{setting('company_ids')} names no company id (an empty list or an empty id); "
                "leave it unset to sync every company"
            )
        if self.company_query is not None and not self.company_query.strip():
            raise InvalidOption(f"{setting('company_query')} is empty; leave it unset to sync every company")
        _between("page_size", self.page_size, 1, MAX_PAGE_SIZE, "Codat's limit")
        _between(
            "attachment_concurrency",
            self.attachment_concurrency,
            1,
            MAX_IN_FLIGHT_PER_COMPANY,
            "Codat's limit",
        )
        _between("company_concurrency", self.company_concurrency, 1, MAX_COMPANY_CONCURRENCY)
        _at_least("request_budget", self.request_budget, 1)
        _at_least("max_attempts", self.max_attempts, 1)
        _at_least("max_file_size", self.max_file_size, 1)
        _at_least("breaker_failures", self.breaker_failures, 1)
        _at_least("shards", self.shards, 1)
        _between("shard", self.shard, 0, self.shards - 1)
        self._check_history()
        for name in ("quota_reserve", "max_retry_wait", "backoff_factor", "breaker_seconds"):
            if not getattr(self, name) >= 0:
                raise InvalidOption(f"{setting(name)} must be 0 or more; got {getattr(self, name)}")
        if not 0 <= self.attachment_refresh_days < math.inf:
            raise InvalidOption(
                f"{setting('attachment_refresh_days')} must be a number of days, 0 or more "
                f"(0 turns the refresh off); got {self.attachment_refresh_days}"
            )
        self._check_rate()
        self._check_timeouts()
        self.window()  # since and until

    def _check_history(self) -> None:
        if not self.history:
            return
        if self.hard_delete:
            raise InvalidOption(
                f"{setting('history')} keeps a deleted customer as its last version, and "
                f"{setting('hard_delete')} removes it: turn one of them off"
            )
        if self.shards > 1:
            raise InvalidOption(
                f"{setting('history')} is not available for company shards yet ({setting('shards')} "
                f"is {self.shards}): run without shards, or without history"
            )

    def _check_rate(self) -> None:
        if self.requests_per_minute is None:
            return
        _at_least("requests_per_minute", self.requests_per_minute, 2)
        if not 0 < self.rate_window < math.inf:
            raise InvalidOption(
                f"{setting('rate_window')} must be a number of seconds above 0; got {self.rate_window}"
            )
        if self.rate_burst is not None:
            _between(
                "rate_burst", self.rate_burst, 1, self.requests_per_minute - 1, "requests_per_minute - 1"
            )

    def _check_timeouts(self) -> None:
        """Refuse a wait that never ends or cannot start, and a silence one slow answer would break."""
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise InvalidOption(f"{setting(name)} must be a number of seconds above 0; got {value}")
        if not self.read_timeout < self.breaker_silence < math.inf:
            raise InvalidOption(
                f"{setting('breaker_silence')} must be more than read_timeout ({self.read_timeout} s), "
                f"so that one slow answer is retried; got {self.breaker_silence}"
            )

    def window(self) -> tuple[datetime | None, datetime | None]:
        """The backfill window (`since`, `until`) as instants; (None, None) when it is no backfill."""
        bounds = []
        for name in ("since", "until"):
            value = getattr(self, name)
            moment = parse_codat_datetime(value) if value else None
            if value and moment is None:
                raise InvalidOption(
                    f"{setting(name)} must be a date such as 2024-01-31 or 2024-01-31T12:00:00Z; "
                    f"got {value!r}"
                )
            bounds.append(moment)
        since, until = bounds
        if since is not None and until is not None and since >= until:
            raise InvalidOption(
                f"since ({self.since}) must be before until ({self.until}): the window holds no instant"
            )
        return since, until

    def retry(self) -> RetryPolicy:
        """The client's retries and timeouts."""
        return RetryPolicy(
            self.max_attempts,
            self.backoff_factor,
            self.max_retry_wait,
            self.connect_timeout,
            self.read_timeout,
        )

    def limits(self) -> ApiLimits:
        """The client's pace: the rate for every company together, and requests in flight per company."""
        return ApiLimits(
            self.requests_per_minute, self.rate_window, self.rate_burst, self.attachment_concurrency
        )

    def breaker(self) -> BreakerPolicy:
        """When the client stops sending."""
        return BreakerPolicy(self.breaker_failures, self.breaker_seconds, self.breaker_silence)


def resolve_settings(**explicit: Any) -> CodatSettings:
    """The settings: `explicit` values first, then dlt's configuration, then the defaults; checked.

    Raises:
        InvalidOption: The API key is set nowhere, a value is not of its setting's type, or a
            setting is out of range; the message names it as a user sets it.
    """
    try:
        return resolve_configuration(CodatSettings(), sections=SECTIONS, explicit_value=explicit)
    except ConfigFieldMissingException as exc:
        problem = missing_problem(exc)
    except ConfigValueCannotBeCoercedException as exc:
        problem = coercion_problem(exc)
    raise InvalidOption(problem)  # outside the handler: dlt's error (maybe holding a value) is not chained


def missing_problem(exc: ConfigFieldMissingException) -> str:
    """Required settings set nowhere (only the API key is)."""
    return (
        f"missing configuration: {', '.join(exc.fields)}. Set SOURCES__CODAT__API_KEY "
        "(or api_key under [sources.codat] in .dlt/secrets.toml)."
    )


def coercion_problem(exc: ConfigValueCannotBeCoercedException) -> str:
    """A setting whose value is not of its type, named as the user sets it."""
    kind = getattr(exc.hint, "__name__", str(exc.hint))
    wanted = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(kind, kind)
    value = "" if "key" in exc.field_name else f"; got {exc.field_value!r}"  # never echo a secret
    return f"{setting(exc.field_name)} must be {wanted}{value}"


def _at_least(name: str, value: float | None, least: float) -> None:
    if value is not None and not value >= least:
        raise InvalidOption(f"{setting(name)} must be at least {least}; got {value}")


def _between(name: str, value: int, least: int, most: int, why: str = "") -> None:
    if not least <= value <= most:
        because = f" ({why})" if why else ""
        raise InvalidOption(f"{setting(name)} must be between {least} and {most}{because}; got {value}")
