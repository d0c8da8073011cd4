"""Several companies' customer pages read at once, and handed to the extract one page at a time.

A company's pages must come in seek order (`connector.paging`), so each company is read by one
thread from start to end; what runs at once is companies. Codat's answers take real time, and
while one company waits for its page, others are read. Pages wait in a bounded queue: when the
extract (writing files) falls behind, the readers wait too, so memory stays bounded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

Company = TypeVar("Company")
Page = TypeVar("Page")

POLL_SECONDS = 0.1  # how often a reader waiting on a full queue looks whether the run closed


class _Closed(Exception):
    """The consumer is gone: a reader drops what it holds and ends."""


class _ReaderEnded:
    """A reader has no more companies to read."""


class _ReaderFailed:
    """A reader met an error its company's read did not handle: the run fails with it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class CompanyReaders(Generic[Company, Page]):
    """Runs `read(company)` for up to `readers` companies at once; yields their pages as they come.

    Each item is `(company, page)`, and `(company, None)` once the company's read has ended
    (after its last page, and after `read` returned: whatever it records at its end is
    recorded by then). A company's own pages keep their order. Companies start in the order
    given. An exception `read` raises ends the run with it (a company's expected failures are
    the read's own to record). Closing the iterator stops the readers: each finishes the request
    it is waiting for, drops its page and closes its read; a read whose page was taken as the
    iterator closed runs on to its next page at most. What a read records then is the caller's
    to ignore (`codat_source` moves a company's cursor only once its end was taken).

    Args:
        companies: What to read, in order.
        read: A company's pages, as an iterator (run on a reader thread).
        readers: Companies read at once; 1 reads them in turn on the caller's thread.
        buffered: Pages read and not yet taken that the readers may hold (at least 1).
    """

    def __init__(
        self,
        companies: Sequence[Company],
        read: Callable[[Company], Iterator[Page]],
        readers: int,
        buffered: int,
    ) -> None:
        self.companies = companies
        self.read = read
        self.readers = max(1, min(readers, len(companies)))
        self._queue: queue.Queue[tuple[Company, Page | None] | _ReaderEnded | _ReaderFailed] = queue.Queue(
            max(1, buffered)
        )
        self._closing = threading.Event()
        self._next = iter(companies)
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[tuple[Company, Page | None]]:
        if self.readers == 1:
            for company in self.companies:
                for page in self.read(company):
                    yield company, page
                yield company, None
            return
        threads = [
            threading.Thread(target=self._reader, name=f"codat-customers-{n}", daemon=True)
            for n in range(self.readers)
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                item = self._queue.get()
                if isinstance(item, _ReaderEnded):
                    running -= 1
                elif isinstance(item, _ReaderFailed):
                    raise item.error
                else:
                    yield item
        finally:
            self._closing.set()

    def _take(self) -> tuple[Company] | None:
        with self._lock:
            for company in self._next:
                return (company,)
            return None

    def _put(self, item: tuple[Company, Page | None] | _ReaderEnded | _ReaderFailed) -> None:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise _Closed

    def _reader(self) -> None:
        try:
            while not self._closing.is_set() and (taken := self._take()) is not None:
                company = taken[0]
                pages = self.read(company)
                try:
                    for page in pages:
                        self._put((company, page))
                finally:
                    close = getattr(pages, "close", None)
                    if close is not None:
                        close()
                self._put((company, None))
            self._put(_ReaderEnded())
        except _Closed:
            return
        except BaseException as error:  # handed to the consumer, which raises it
            try:
                self._put(_ReaderFailed(error))
            except _Closed:
                return
