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

from collections.abc import Iterator

import pytest

from connector.emulator.emulator import Emulator
from connector.emulator.store import Sizing
from tests.killpoint import FILES, STEP_PREFIX
from tests.killtools import (
    Account,
    KillPoint,
    Runs,
    Snapshot,
    assert_holds_account,
    assert_rerun_equals_clean,
    reset_account,
    snapshot,
    started_runs,
    unlimited,  # noqa: F401 - a fixture
)
from tests.utils import FIXTURES

# Small, so that 85 kills take little time, with a row in every table: 2 companies, 30 customers
# (two pages of 20 for one company), addresses, contacts, phones and 12 attachments.
SIZING = Sizing(seed=7, companies=2, customers=30)
# One step a line, in the order one run made them (`python tests/killpoint.py files 0 -- ...`).
STEPS = tuple((FIXTURES.parent / "package_steps.txt").read_text().splitlines())
POINTS = [KillPoint(f"step-{n:02d}", FILES, 1, step) for n, step in enumerate(STEPS, 1)]


@pytest.fixture(scope="module")
def account(unlimited: Emulator) -> Account:  # noqa: F811 - the fixture above
    """The small account, unchanged for the whole module."""
    return reset_account(unlimited, SIZING)


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest,
    emulator_server,
    account: Account,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    """The clean run (printing its steps) and the selected steps' runs, two at a time."""
    journal = KillPoint("journal", FILES, 0)
    with started_runs(request.session, emulator_server.url, POINTS, tmp_path_factory, journal) as started:
        yield started


@pytest.fixture(scope="module")
def clean(runs: Runs) -> Snapshot:
    """What one uninterrupted run leaves."""
    done = runs.clean.result()
    assert done.returncode == 0, done.stderr[-2000:]
    return snapshot(runs.clean_dirs)


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
    assert len(STEPS) == len(set(STEPS)) == 85
    assert sorted(set(made) - set(STEPS)) == [], "steps the harness does not kill at"
    assert sorted(set(STEPS) - set(made)) == [], "steps a run no longer makes"


@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_killed_at_a_step_then_rerun_equals_a_clean_run(
    runs: Runs, account: Account, clean: Snapshot, point: KillPoint
) -> None:
    """Tables, views, files, state and `sync_status` after the rerun are the clean run's."""
    assert_rerun_equals_clean(runs.points[point.id].result(), point, clean, account)
