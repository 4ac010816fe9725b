"""`dm-pipeline export`: Xquik's redacted JSON Lines handoff (docs/architecture.md §11) — one record per
message, no text, a stable (created_at, integer message ID) order, streamed through a server-side cursor,
written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.export import BATCH, export_account
from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.test_sync_x import run_sync

FIELDS = {"message_id", "conversation_id", "sender_id", "receiver_id", "created_at", "media_url"}
INSERT = text("""
    INSERT INTO dm_private.dm_history (account_key, message_id, provider, stream_key, conversation_id, event_type,
        sender_id, recipient_id, created_at, text, media, raw, content_hash, first_seen_run_id, last_changed_run_id)
    VALUES ('k', :id, 'x', 'dm_events', '1-2', :type, '1', '2', :at, 'private words', CAST(:media AS jsonb), '{}',
            'h', 'r', 'r')""")


def _rows(engine: Engine, rows: list[dict[str, object]]) -> None:
    with engine.begin() as conn:
        conn.execute(INSERT, [{"type": "MessageCreate", "media": None, **r} for r in rows])


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_export_is_the_redacted_handoff_in_a_stable_order(engine, sim, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch)
    run_sync(engine, account)
    truth = {e["id"]: e for e in sim.world.truth(account.user_id) if e["event_type"] == "MessageCreate"}
    out = tmp_path / "handoff.jsonl"

    assert export_account(engine, account.key, out) == len(truth)
    records = _read(out)
    assert [r["message_id"] for r in records] == sorted(truth, key=lambda m: (truth[m]["created_at"], int(m)))
    assert all(set(r) <= FIELDS and set(r) >= FIELDS - {"media_url"} for r in records)
    assert {r["message_id"] for r in records if "media_url" in r} == {m for m, e in truth.items()
                                                                       if e.get("attachments")}
    for r in records:
        e = truth[r["message_id"]]
        assert (r["sender_id"], r["conversation_id"], r["created_at"]) == (
            e["sender_id"], e["dm_conversation_id"], e["created_at"])
    blob = out.read_text(encoding="utf-8")
    texts = {e["text"] for e in truth.values() if len(e.get("text") or "") >= 8}
    assert texts and not [t for t in texts if t in blob]

    first = out.read_bytes()
    export_account(engine, account.key, out)
    assert out.read_bytes() == first  # byte-identical: the order is total


def test_ties_on_created_at_are_broken_by_the_integer_message_id(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    video = json.dumps([{"media_key": "7_1", "type": "video", "preview_image_url": "https://pbs.example/p.jpg",
                         "variants": [{"url": "https://video.example/v.mp4"}]}])
    _rows(engine, [{"id": "100", "at": at}, {"id": "9", "at": at}, {"id": "10", "at": at, "media": video},
                   {"id": "5", "at": None}, {"id": "1", "at": datetime(2025, 1, 1, tzinfo=UTC)},
                   {"id": "2", "at": at, "type": "ParticipantsJoin"}])
    out = tmp_path / "k.jsonl"
    assert export_account(engine, "k", out) == 5
    records = _read(out)
    assert [r["message_id"] for r in records] == ["1", "9", "10", "100", "5"]  # string order would put 10 first
    assert records[1] == {"message_id": "9", "conversation_id": "1-2", "sender_id": "1", "receiver_id": "2",
                          "created_at": "2026-01-02T03:04:05.678Z"}
    assert records[2]["media_url"] == "https://video.example/v.mp4"
    assert records[4]["created_at"] is None


def test_rows_stream_through_a_server_side_cursor(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    at = datetime(2026, 1, 1, tzinfo=UTC)
    _rows(engine, [{"id": str(i), "at": at} for i in range(1, 2 * BATCH + 501)])
    seen: list[str] = []

    def watch(done: int) -> None:
        # The exporting session, seen from another one: it is fetching batches from a declared cursor.
        with engine.connect() as other:
            seen.extend(other.scalars(text(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query ILIKE '%FETCH%'")))

    assert export_account(engine, "k", tmp_path / "k.jsonl", progress=watch) == 2 * BATCH + 500
    assert len(seen) == 2 and all(q.upper().startswith(f"FETCH FORWARD {BATCH}") for q in seen), seen


def test_a_failed_export_leaves_the_previous_file_as_it_was(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _rows(engine, [{"id": str(i), "at": datetime(2026, 1, 1, tzinfo=UTC)} for i in range(1, BATCH + 2)])
    out = tmp_path / "k.jsonl"
    out.write_text("the previous export\n")

    def crash(done: int) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        export_account(engine, "k", out, progress=crash)
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.jsonl"]  # no temporary file left behind


def test_the_cli_exports_and_refuses_an_unknown_account(engine, db_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _rows(engine, [{"id": "1", "at": datetime(2026, 1, 1, tzinfo=UTC)}])
    env = {**os.environ, "DATABASE_URL": db_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dm_pipeline.cli", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    ok = cli("export", "--account", "k", "--out", str(tmp_path / "k.jsonl"))
    assert ok.returncode == 0 and "exported=1" in ok.stdout, ok.stderr
    assert _read(tmp_path / "k.jsonl")[0]["message_id"] == "1"
    bad = cli("export", "--account", "nobody", "--out", str(tmp_path / "nobody.jsonl"))
    assert bad.returncode == 2 and "nothing in the warehouse" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "nobody.jsonl").exists()
