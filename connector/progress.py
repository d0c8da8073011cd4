"""Progress of a run on dlt's collector: companies done of all, customers read, API requests sent."""

from __future__ import annotations

from dlt.common.configuration.container import Container
from dlt.common.pipeline import PipelineContext
from dlt.common.runtime.collector import NULL_COLLECTOR
from dlt.common.runtime.collector_base import Collector

COMPANIES = "Companies"
CUSTOMERS = "Customers"
REQUESTS = "API requests"


def current_collector() -> Collector:
    """The collector of the pipeline running now (`progress=` of `dlt.pipeline`).

    Outside a pipeline run (a source iterated directly), a null one.
    """
    context = Container()[PipelineContext]
    return context.pipeline().collector if context.is_active() else NULL_COLLECTOR


class Progress:
    """Counters a run reports to whatever collector the pipeline shows progress with.

    dlt's collectors print counts, rates and (where a total is known, as for companies) the
    share done and the time left: `tqdm` bars on a terminal, log lines under cron.
    """

    def __init__(self) -> None:
        self._collector = current_collector()

    def companies(self, total: int) -> None:
        """Announce how many companies the run goes through."""
        self._collector.update(COMPANIES, inc=0, total=total)

    def company_done(self) -> None:
        """One more company's customers are read (or skipped, or failed)."""
        self._collector.update(COMPANIES)

    def customers(self, count: int) -> None:
        """`count` more customers were read."""
        self._collector.update(CUSTOMERS, inc=count)

    def requests(self) -> None:
        """One more API request was sent (attachment listings are most of them)."""
        self._collector.update(REQUESTS)
