"""`codat-sync` SIGKILLed at every file step of dlt's load packages, then rerun, equals a clean run.

A load package lives in files: extracted, it is renamed into `normalize/extracted/`, then moved to
`load/new/`, `load/normalized/` and `load/loaded/`; each job file moves from `new_jobs/` to
`started_jobs/` to `completed_jobs/` (a pending transition written first); state, schema and
package state are written beside them. `tests/killpoint.py files` names each such file operation
as a step and kills the run at one. `STEPS` (`tests/fixtures/package_steps.txt`) is every step
a first run of this account makes: the first test checks a clean run makes exactly these (a new
dlt that adds one fails it, naming the step), and each step is killed at its first occurrence.
`test_kill_points.py` kills at named calls, including later occurrences of the state write.
"""

from __future__ import annotations

import pytest

from connector.emulator.store import Sizing
from tests import killtools
from tests.killpoint import FILES, STEP_PREFIX
from tests.killtools import (
    Account,
    KillPoint,
    Runs,
    Snapshot,
    assert_holds_account,
    assert_rerun_equals_clean,
)
from tests.utils import FIXTURES

# Small, so that 78 kills take little time, with a row in every table: 2 companies, 30 customers
# (two pages of 20 for one company), addresses, contacts, phones and 12 attachments.
SIZING = Sizing(seed=7, companies=2, customers=30)
# One step a line, in the order one run made them (`python tests/killpoint.py files 0 -- ...`).
STEPS = tuple((FIXTURES.parent / "package_steps.txt").read_text().splitlines())
POINTS = [KillPoint(f"step-{n:02d}", FILES, 1, step) for n, step in enumerate(STEPS, 1)]
CLEAN_KILL = KillPoint("journal", FILES, 0)  # the clean run prints its steps, and dies at none
# The kill tests' fixtures (`tests/killtools.py`): they read SIZING, POINTS and CLEAN_KILL here.
unlimited, account, runs, clean = killtools.unlimited, killtools.account, killtools.runs, killtools.clean


def test_a_clean_run_makes_exactly_these_steps(runs: Runs, account: Account, clean: Snapshot) -> None:
    """Every file step of a first run is in STEPS, and every one of STEPS happens."""
    assert len(account.companies) == SIZING.companies
    assert len(account.customers) == SIZING.customers
    assert len(account.attachments) == 12
    assert_holds_account(clean, account)
    made = [
        line.removeprefix(STEP_PREFIX)
        for line in runs.clean.result().stderr.splitlines()
        if line.startswith(STEP_PREFIX)
    ]
    assert len(STEPS) == len(set(STEPS)) == 78
    assert sorted(set(made) - set(STEPS)) == [], "steps the harness does not kill at"
    assert sorted(set(STEPS) - set(made)) == [], "steps a run no longer makes"


@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_killed_at_a_step_then_rerun_equals_a_clean_run(
    runs: Runs, account: Account, clean: Snapshot, point: KillPoint
) -> None:
    """Tables, views, files, state and `sync_status` after the rerun are the clean run's."""
    assert_rerun_equals_clean(runs.points[point.id].result(), point, clean, account)
