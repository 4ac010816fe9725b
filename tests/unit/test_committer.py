"""The write-ahead committer's contract, with a recording commit function in place of the database (the
real transaction is covered by tests/integration/test_write_ahead.py): order, grouping, back-pressure and
error hand-off between the writer thread and the caller. Synchronised with events, never sleeps."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from dm_pipeline.committer import PageCommitter
from dm_pipeline.db.writes import AuditEntry, PageWrite, StreamState
from dm_pipeline.errors import PageCommitError

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def page(n: int) -> PageWrite:
    return PageWrite(events=(), state=StreamState(pass_open=True, pass_cursor=f"c{n}", pass_pages=n),
                     audit=AuditEntry(run_id="r", row_kind="page", job_status="page_committed", started_at=NOW,
                                      page_seq=n, requests=1, events_received=n))


class Recorder:
    """Records each transaction's pages; can hold the writer inside a commit, or fail one."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on_call = fail_on_call

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    def __call__(self, group: Sequence[PageWrite]) -> list[tuple[int, int]]:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(30), "the test never released the writer"
        if self.fail_on_call == len(self.groups) + 1:
            raise PageCommitError("acct", "dm_events", RuntimeError("boom"))
        self.groups.append([w.audit.page_seq or 0 for w in group])
        return [(w.audit.events_received, 0) for w in group]


def test_write_ahead_zero_commits_each_page_on_the_callers_thread_before_returning() -> None:
    rec = Recorder()
    with PageCommitter(rec, write_ahead=0) as committer:
        for n in (1, 2, 3):
            committer.submit(page(n))
            assert rec.groups[-1] == [n]  # committed before submit returned
    assert rec.groups == [[1], [2], [3]]
    assert rec.threads == {threading.current_thread().name}
    assert [(w.audit.page_seq, i) for w, i, _ in committer.committed()] == [(1, 1), (2, 2), (3, 3)]
    assert committer.transactions == 3


def test_pages_queued_during_a_commit_share_the_next_transaction_in_order() -> None:
    rec = Recorder()
    committer = PageCommitter(rec, write_ahead=8, name="commit:test")
    rec.hold()
    committer.submit(page(1))
    assert rec.entered.wait(30)  # the writer is inside page 1's commit
    for n in (2, 3, 4):
        committer.submit(page(n))
    rec.release.set()
    committer.close()
    assert rec.groups == [[1], [2, 3, 4]]
    assert rec.threads == {"commit:test"}
    assert committer.transactions == 2
    assert [w.audit.page_seq for w, _, _ in committer.committed()] == [1, 2, 3, 4]
    assert committer.committed() == []  # drained


def test_a_transaction_takes_at_most_max_group_pages() -> None:
    rec = Recorder()
    committer = PageCommitter(rec, write_ahead=10, max_group=3)
    rec.hold()
    committer.submit(page(1))
    assert rec.entered.wait(30)
    for n in range(2, 9):
        committer.submit(page(n))
    rec.release.set()
    committer.close()
    assert rec.groups == [[1], [2, 3, 4], [5, 6, 7], [8]]


def test_a_failed_commit_reaches_the_caller_and_nothing_after_it_is_committed() -> None:
    rec = Recorder(fail_on_call=2)
    committer = PageCommitter(rec, write_ahead=2)
    rec.hold()
    committer.submit(page(1))
    assert rec.entered.wait(30)
    committer.submit(page(2))
    committer.submit(page(3))  # the queue is now full: a further submit blocks until the writer moves
    blocked_error: list[BaseException] = []

    def submit_4() -> None:
        try:
            committer.submit(page(4))
        except BaseException as exc:  # collected for the assertion below
            blocked_error.append(exc)

    blocked = threading.Thread(target=submit_4)
    blocked.start()
    rec.release.set()  # page 1 commits; the pages after it go together and fail
    blocked.join(30)
    assert not blocked.is_alive(), "a caller blocked on a full queue must wake when the writer fails"
    with pytest.raises(PageCommitError):
        committer.close()
    with pytest.raises(PageCommitError):
        committer.submit(page(5))
    assert rec.groups == [[1]]
    assert [w.audit.page_seq for w, _, _ in committer.committed()] == [1]


def test_an_interrupted_close_finishes_the_commit_in_flight_and_drops_the_rest() -> None:
    """Ctrl-C (or a terminating Dagster run) while close() waits: the transaction in flight completes, the
    queued pages are dropped (their cursor was never stored: the next run refetches them), and close()
    still returns only once the writer has stopped, because the caller releases the stream lock next."""
    rec = Recorder()
    committer = PageCommitter(rec, write_ahead=8)
    rec.hold()
    committer.submit(page(1))
    assert rec.entered.wait(30)
    committer.submit(page(2))
    committer.submit(page(3))
    writer = committer._thread
    assert writer is not None
    real_join, joins = writer.join, []

    def join(timeout: float | None = None) -> None:
        joins.append(timeout)
        if len(joins) == 1:
            raise KeyboardInterrupt
        rec.release.set()  # the commit in flight may finish now, after the interrupt was taken
        real_join(timeout)

    writer.join = join  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        committer.close()
    assert not writer.is_alive()
    assert rec.groups == [[1]]


def test_leaving_on_an_error_still_commits_the_pages_already_fetched() -> None:
    rec = Recorder()
    rec.hold()
    with pytest.raises(KeyError), PageCommitter(rec, write_ahead=4) as committer:
        committer.submit(page(1))
        assert rec.entered.wait(30)
        committer.submit(page(2))
        rec.release.set()
        raise KeyError("the caller failed after fetching page 2")
    assert [n for g in rec.groups for n in g] == [1, 2]


def test_a_commit_error_is_not_raised_over_the_callers_own_error() -> None:
    rec = Recorder(fail_on_call=1)
    with pytest.raises(KeyError), PageCommitter(rec, write_ahead=4) as committer:
        committer.submit(page(1))
        raise KeyError("the caller's error wins; the commit error is still kept")
    with pytest.raises(PageCommitError):
        committer.close()
