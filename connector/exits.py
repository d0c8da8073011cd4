"""The exit codes of the connector's commands, and which way a run ended maps to which."""

from __future__ import annotations

import signal

from connector.errors import CodatApiError, RunStopped
from connector.pacing import API_UNREACHABLE, DISK_FULL, INTERRUPTED, QUOTA_SPENT

EXIT_OK = 0  # every company synced, or is not ready in Codat yet
EXIT_COMPANY_FAILED = 1  # a company failed (or, with --strict, is not ready)
EXIT_BAD_INPUT = 2  # bad options, configuration or destination: nothing was synced
EXIT_API_UNREACHABLE = 3  # the API stopped answering; what is left waits for the next run
EXIT_QUOTA_SPENT = 4  # Codat's daily quota is spent; the next run resumes
EXIT_BUSY = 5  # another run holds the pipeline, or another process the DuckDB file
EXIT_DISK_FULL = 6  # a write found no space; what was read is loaded by the next run
EXIT_SIGNAL_BASE = 128  # interrupted by a signal: 130 for SIGINT, 143 for SIGTERM, as shells say


def stop_exit_code(stopped: RunStopped) -> int:
    """The exit code of a run stopped early, by why (`connector.pacing`): a signal's is 128 + its number."""
    if stopped.kind == INTERRUPTED:
        return EXIT_SIGNAL_BASE + (stopped.signum or signal.SIGINT)
    codes = {API_UNREACHABLE: EXIT_API_UNREACHABLE, QUOTA_SPENT: EXIT_QUOTA_SPENT, DISK_FULL: EXIT_DISK_FULL}
    return codes[stopped.kind]


def api_exit_code(error: CodatApiError) -> int:
    """A whole run ended by an API error (listing companies): unreachable, quota or bad input."""
    if error.stop_cause is not None:
        return stop_exit_code(error.stop_cause)
    if error.status is None or error.status >= 500:
        return EXIT_API_UNREACHABLE
    return EXIT_QUOTA_SPENT if error.status == 429 else EXIT_BAD_INPUT
