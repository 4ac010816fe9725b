"""Write-ahead commits against real Postgres and the simulator: pages fetched ahead of their commit, several
pages per transaction, and still a committed prefix with its cursor whatever fails."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.errors import PageCommitError
from dm_pipeline.models import StreamStatus
from dm_pipeline.sync import RunLimits
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_sync_x import run_sync

PAGE = 20


def _audit_pages(engine: Engine, account_key: str) -> list[tuple[int, str | None, int, list[str]]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
            "SELECT page_seq, cursor_out, events_inserted, message_ids FROM dm_audit.dm_sync_audit "
            "WHERE account_key = :a AND row_kind = 'page' ORDER BY audit_id"), {"a": account_key})]


@pytest.mark.parametrize("write_ahead", [0, 1, 8])
def test_every_write_ahead_stores_the_same_rows_and_audit(engine, sim, monkeypatch, write_ahead) -> None:  # type: ignore[no-untyped-def]
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    result = run_sync(engine, account, limits=RunLimits(write_ahead=write_ahead))
    assert result.status is StreamStatus.SUCCEEDED
    assert result.total("inserted") == len(truth)
    pages = result.total("pages")
    assert pages == -(-len(truth) // PAGE) and result.total("requests") == pages
    assert 1 <= result.total("commits") <= pages
    if write_ahead == 0:
        assert result.total("commits") == pages
    assert_equals_truth(engine, account.key, truth)
    audit = _audit_pages(engine, account.key)
    assert [seq for seq, *_ in audit] == list(range(1, pages + 1))  # one row per page, in order
    assert sum(inserted for _, _, inserted, _ in audit) == len(truth)


def test_a_failing_commit_leaves_a_committed_prefix_with_its_cursor_and_the_resume_is_exact(  # type: ignore[no-untyped-def]
        engine, sim, monkeypatch) -> None:
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    assert len(truth) > 8 * PAGE
    trap_id = truth[5 * PAGE + 3]["id"]  # on page 6, newest first
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE dm_private.dm_history ADD CONSTRAINT write_ahead_trap "
                          f"CHECK (message_id <> '{int(trap_id)}')"))

    with pytest.raises(PageCommitError) as failed:
        run_sync(engine, account, limits=RunLimits(write_ahead=8))
    assert "write_ahead_trap" in str(failed.value)

    audit = _audit_pages(engine, account.key)
    committed = len(audit)
    assert committed < 6  # page 6 and everything queued with or after it: rolled back together
    assert [seq for seq, *_ in audit] == list(range(1, committed + 1))
    stored_ids = {m for _, _, _, ids in audit for m in ids}
    with engine.connect() as conn:
        rows = set(conn.scalars(text("SELECT message_id FROM dm_private.dm_history WHERE account_key = :a"),
                                {"a": account.key}))
        cursor = conn.scalar(text("SELECT pass_cursor FROM dm_private.sync_state WHERE account_key = :a"),
                             {"a": account.key})
    assert rows == stored_ids == {e["id"] for e in truth[:committed * PAGE]}
    assert cursor == (audit[-1][1] if audit else None)  # the checkpoint is the last committed page's cursor

    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE dm_private.dm_history DROP CONSTRAINT write_ahead_trap"))
    resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert resumed.total("inserted") == len(truth) - committed * PAGE
    assert_equals_truth(engine, account.key, truth)
