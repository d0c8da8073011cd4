"""CompanyReaders alone: companies read at once, each in order, in a bounded buffer; errors, closing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connector.client import BodyGate
from connector.readers import CompanyReaders

PAGES = {"a": [1, 2, 3], "b": [10], "c": [], "d": [40, 41], "e": [50, 51, 52, 53]}


def pages_of(company: str) -> Iterator[int]:
    yield from PAGES[company]


def by_company(items: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for company, page in items:
        seen.setdefault(company, []).append(page)
    return seen


@pytest.mark.parametrize("readers", [1, 2, 5, 9])
def test_every_page_comes_once_in_its_companys_order_then_the_end_of_the_company(readers: int) -> None:
    items = list(CompanyReaders(list(PAGES), pages_of, readers=readers, buffered=2))

    assert by_company(items) == {c: [*pages, None] for c, pages in PAGES.items()}


def test_companies_are_read_at_once() -> None:
    """Three reads each wait for the two others: they can only finish if all three run together."""
    everyone = threading.Barrier(3, timeout=5)

    def read(company: str) -> Iterator[str]:
        everyone.wait()
        yield company

    items = list(CompanyReaders(["a", "b", "c"], read, readers=3, buffered=1))

    assert by_company(items) == {"a": ["a", None], "b": ["b", None], "c": ["c", None]}


def test_one_reader_reads_on_the_callers_thread_in_the_given_order() -> None:
    threads: set[str] = set()

    def read(company: str) -> Iterator[str]:
        threads.add(threading.current_thread().name)
        yield company

    items = list(CompanyReaders(["b", "a"], read, readers=1, buffered=4))

    assert items == [("b", "b"), ("b", None), ("a", "a"), ("a", None)]
    assert threads == {threading.current_thread().name}


def test_readers_wait_when_the_consumer_falls_behind() -> None:
    """At most `buffered` pages wait in the queue, plus one in each reader's hands."""
    produced = 0
    lock = threading.Lock()

    def read(company: str) -> Iterator[int]:
        nonlocal produced
        for page in range(20):
            with lock:
                produced += 1
            yield page

    taken = 0
    most_ahead = 0
    for _company, page in CompanyReaders(["a", "b", "c"], read, readers=3, buffered=2):
        time.sleep(0.005)  # a slow destination
        if page is not None:
            taken += 1
        with lock:
            most_ahead = max(most_ahead, produced - taken)

    assert taken == 60
    assert 1 <= most_ahead <= 2 + 3


def test_an_error_a_read_raises_ends_the_iteration_with_it() -> None:
    def read(company: str) -> Iterator[int]:
        yield 1
        if company == "b":
            raise RuntimeError("a bug in b")
        yield 2

    with pytest.raises(RuntimeError, match="a bug in b"):
        list(CompanyReaders(["a", "b", "c"], read, readers=2, buffered=1))


def test_closing_stops_the_readers() -> None:
    """Each read is closed on its own thread; one that had handed a page over as the iteration
    closed may run on to its next page, never further."""
    closed = threading.Event()
    after_close: dict[str, int] = {"a": 0, "b": 0}
    ended: list[str] = []

    def read(company: str) -> Iterator[int]:
        try:
            for page in range(1000):
                if closed.is_set():
                    after_close[company] += 1
                yield page
        finally:
            ended.append(company)

    readers = iter(CompanyReaders(["a", "b"], read, readers=2, buffered=1))
    assert next(readers)[1] == 0
    readers.close()  # type: ignore[attr-defined]  # a generator
    closed.set()
    deadline = time.monotonic() + 5
    while len(ended) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert sorted(ended) == ["a", "b"]
    assert max(after_close.values()) <= 1
    assert not [t for t in threading.enumerate() if t.name.startswith("codat-customers-")]


def test_the_body_gate_lets_at_most_its_permits_hold_a_page_and_a_retry_keeps_its_permit() -> None:
    gate = BodyGate(2)
    holding = 0
    most = 0
    lock = threading.Lock()
    go = threading.Event()

    def reader() -> None:
        nonlocal holding, most
        go.wait()
        for _page in range(5):
            gate.enter(None)
            gate.enter(None)  # a retry of the same page: the same permit
            with lock:
                holding += 1
                most = max(most, holding)
            time.sleep(0.002)
            with lock:
                holding -= 1
            gate.leave()
            gate.leave()  # nothing held: nothing given back twice

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(timeout=10)

    assert not any(t.is_alive() for t in threads)
    assert most == 2
