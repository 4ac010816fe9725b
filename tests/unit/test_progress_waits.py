"""`dm-pipeline sync` progress: rate-limit / retry waits are credited to the stream during which they
happened, so a stream that failed (or ended without committing a page) shows its own waits, and the next
stream of the account does not inherit them. Drives SyncProgress directly, as the engine's hooks do."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dm_pipeline.models import Account, Provider, StreamResult, StreamStatus, SyncResult
from dm_pipeline.progress import SyncProgress

ACCOUNT = Account(key="x-one", provider=Provider.X, user_id="1", base_url="https://api.x.com", token_env="DX_T")
INBOX, PEER, CONV = "dm_events", "with:42", "conversation:1-2"


def stream_lines(stdout: str) -> dict[str, str]:
    """The plain per-stream lines (`account  stream  status  pages=…`) by stream key."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split("  ")
        if len(parts) >= 4 and parts[0] == ACCOUNT.key and parts[3].startswith("pages="):
            out[parts[1]] = line
    return out


def plain() -> SyncProgress:
    return SyncProgress(Console(file=io.StringIO(), width=200), live=False, sleep=lambda _: None)


def drive_three_streams(progress: SyncProgress) -> None:
    """The inbox commits a page, retries twice and fails; the next stream retries once and fails without a
    page; the last one waits once, then commits a page and succeeds."""
    sleep = progress.policy_for(ACCOUNT).sleep
    inbox = StreamResult(ACCOUNT.key, INBOX)
    progress.on_stream_start(ACCOUNT.key, INBOX)
    inbox.pages, inbox.received = 1, 10
    progress.on_page(inbox)
    sleep(2.0)
    sleep(4.0)
    inbox.status, inbox.error_code, inbox.http_status = StreamStatus.FAILED, "service_unavailable", 503

    peer = StreamResult(ACCOUNT.key, PEER)
    progress.on_stream_start(ACCOUNT.key, PEER)
    sleep(8.0)
    peer.status, peer.error_code, peer.http_status = StreamStatus.FAILED, "service_unavailable", 503

    conv = StreamResult(ACCOUNT.key, CONV)
    progress.on_stream_start(ACCOUNT.key, CONV)
    sleep(1.0)
    conv.pages, conv.received = 1, 3
    progress.on_page(conv)

    progress.on_done(SyncResult(ACCOUNT.key, "x", "run-1", [inbox, peer, conv]))


def test_a_failed_streams_waits_are_printed_on_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    progress = plain()
    with progress:
        drive_three_streams(progress)
    lines = stream_lines(capsys.readouterr().out)
    assert set(lines) == {INBOX, PEER, CONV}
    assert " failed " in lines[INBOX] and "waits=2 (6s)" in lines[INBOX], lines[INBOX]
    assert " failed " in lines[PEER] and "pages=0 " in lines[PEER] and "waits=1 (8s)" in lines[PEER], lines[PEER]
    assert " succeeded " in lines[CONV] and "waits=1 (1s)" in lines[CONV], lines[CONV]  # not 4 (15s)
    assert progress.waits[ACCOUNT.key].count == 4 and progress.waits[ACCOUNT.key].seconds == 15.0


def test_plain_wait_lines_name_the_stream_that_waits(capsys: pytest.CaptureFixture[str]) -> None:
    progress = plain()
    with progress:
        drive_three_streams(progress)
    waiting = [line for line in capsys.readouterr().out.splitlines() if " waiting " in line]
    assert [line.split("  ")[:2] for line in waiting] == [[ACCOUNT.key, INBOX], [ACCOUNT.key, INBOX],
                                                          [ACCOUNT.key, PEER], [ACCOUNT.key, CONV]]


def test_the_live_display_credits_each_stream_its_own_waits() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=140)
    progress = SyncProgress(console, live=True, sleep=lambda _: None)
    with progress:
        drive_three_streams(progress)
    waits = {stream: (w.count, w.seconds) for (_, stream), w in progress.stream_waits.items()}
    assert waits == {INBOX: (2, 6.0), PEER: (1, 8.0), CONV: (1, 1.0)}
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    assert "2 waits 6s" in screen and "1 wait 8s" in screen and "1 wait 1s" in screen


def test_without_stream_starts_a_wait_goes_to_the_stream_whose_page_follows(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An engine that does not report stream starts: the earlier rule (waits before a page are that page's
    stream's; waits after the last page go to the failed stream)."""
    progress = plain()
    sleep = progress.policy_for(ACCOUNT).sleep
    with progress:
        sleep(2.0)
        inbox = StreamResult(ACCOUNT.key, INBOX, pages=1, received=10)
        progress.on_page(inbox)
        sleep(4.0)
        peer = StreamResult(ACCOUNT.key, PEER, status=StreamStatus.FAILED, error_code="service_unavailable")
        progress.on_done(SyncResult(ACCOUNT.key, "x", "run-1", [inbox, peer]))
    lines = stream_lines(capsys.readouterr().out)
    assert "waits=1 (2s)" in lines[INBOX] and "waits=1 (4s)" in lines[PEER]
