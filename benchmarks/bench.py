"""`make bench`: dm_pipeline's initial backfill against the physical limit (COPY) and a peer (dlt), all in
one run on the same Postgres (the embedded one), plus requests, a no-op incremental run and peak RSS.

    .venv/bin/python -m benchmarks.bench [--size 1000000] [--out bench-results.json]

One simulator process serves one account of `--size` events over loopback HTTP, 100 per page. Each timed
load runs in its own process (its peak RSS is its own) into its own fresh database, after a CHECKPOINT:

- pipeline: `sync_account` with the real X client, one transaction per page (benchmarks/pipeline_child.py);
- no-op: the same sync again, which must find nothing new (requests and wall time per stream);
- no-op per account: a small account with conversation discovery, backfilled then synced again
  (`noop_requests_per_account`: 1.0 when the inbox vouches for every dormant conversation stream);
- peak RSS at 100k events: a second backfill stopped after 1,000 pages (only when --size > 100k);
- COPY: the rows the pipeline stored, exported to a file, then timed `COPY ... FROM STDIN` into an empty
  table created `LIKE dm_history INCLUDING ALL` (same columns, defaults and indexes);
- dlt: `dlt[postgres]` merging the same events on their ID (benchmarks/dlt_child.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import make_url

from benchmarks.common import (
    SIM_PIDS,
    bench_pgdata,
    fresh_database,
    postgres_cpu_s,
    process_cpu_s,
    sim_accounts,
    simulator_process,
)

SMALL = 100_000
TABLE = "dm_private.dm_history"


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                           autocommit=True)


def _checkpoint(url: str) -> None:
    with _pg(url) as conn:
        conn.execute("CHECKPOINT")


def _child(module: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{module} failed ({out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _requests(sim: str) -> int:
    return int(httpx.get(f"{sim}/_sim/stats", timeout=60).json().get("total", 0) or 0)


def _sync(db: str, sim: str, account: dict[str, str], max_pages: int | None = None,
          discover: bool = False) -> dict[str, Any]:
    args = ["--db", db, "--sim", sim, "--user-id", account["user_id"], "--token", account["token"]]
    if max_pages is not None:
        args += ["--max-pages", str(max_pages)]
    if discover:
        args.append("--discover")
    before = _requests(sim)
    sim_cpu, pg_cpu = process_cpu_s(SIM_PIDS[sim]), postgres_cpu_s(bench_pgdata())
    result = _child("benchmarks.pipeline_child", *args)
    result["sim_cpu_s"] = process_cpu_s(SIM_PIDS[sim]) - sim_cpu
    result["postgres_cpu_s"] = postgres_cpu_s(bench_pgdata()) - pg_cpu
    result["sim_requests"] = _requests(sim) - before
    return result


def _copy_baseline(db: str, rows_file: Path) -> tuple[int, float, float]:
    """Export the stored rows, then time COPY of them into an identical empty table."""
    with _pg(db) as conn:
        with rows_file.open("wb") as fh, conn.cursor().copy(f"COPY {TABLE} TO STDOUT") as copy:
            for block in copy:
                fh.write(block)
        conn.execute(f"CREATE TABLE dm_private.copy_target (LIKE {TABLE} INCLUDING ALL)")
        conn.execute("CHECKPOINT")
        cpu0, t0 = postgres_cpu_s(bench_pgdata()), time.perf_counter()
        with conn.transaction(), conn.cursor().copy("COPY dm_private.copy_target FROM STDIN") as copy, \
                rows_file.open("rb") as fh:
            while block := fh.read(1 << 20):
                copy.write(block)
        elapsed, cpu = time.perf_counter() - t0, postgres_cpu_s(bench_pgdata()) - cpu0
        rows = int(conn.execute("SELECT count(*) FROM dm_private.copy_target").fetchone()[0])  # type: ignore[index]
    return rows, elapsed, cpu


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()[0]}


def run(size: int, with_dlt: bool = True) -> dict[str, Any]:
    res: dict[str, Any] = {"size": size, "page_size": 100, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp, simulator_process(1, size) as sim:
        account = sim_accounts(sim)[0]
        with fresh_database("bench_pipeline") as db:
            with _pg(db) as conn:
                res["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            _checkpoint(db)
            full = _sync(db, sim, account)
            assert full["inserted"] == size, full
            res["pipeline_rows_per_s"] = round(size / full["elapsed_s"])
            res["pipeline_s"] = round(full["elapsed_s"], 2)
            res["requests"] = full["sim_requests"]
            res["pages_per_commit"] = round(full["pages"] / max(1, full["commits"]), 2)
            res["ideal_requests"] = math.ceil(size / 100) + 1
            res["peak_rss_mb"] = {str(size): full["peak_rss_mb"]}
            pages = max(1, full["pages"])
            res["cpu_ms_per_page"] = {"sync": round(1000 * full["cpu_s"] / pages, 2),
                                      "simulator": round(1000 * full["sim_cpu_s"] / pages, 2),
                                      "postgres": round(1000 * full["postgres_cpu_s"] / pages, 2),
                                      "wall": round(1000 * full["elapsed_s"] / pages, 2)}
            noop = _sync(db, sim, account)
            assert noop["inserted"] == noop["updated"] == 0, noop
            res["noop_requests_per_stream"] = noop["sim_requests"] / noop["streams"]
            res["noop_ms_per_stream"] = round(1000 * noop["elapsed_s"] / noop["streams"], 1)
            copied, copy_s, copy_cpu_s = _copy_baseline(db, Path(tmp) / "rows.copy")
            res["cpu_ms_per_page"]["postgres_for_copy"] = round(1000 * copy_cpu_s / pages, 2)
            assert copied == size
            res["copy_rows_per_s"] = round(size / copy_s)
            res["copy_s"] = round(copy_s, 2)
        res.update(noop_account())
        if size > SMALL:
            with fresh_database("bench_small") as db:
                _checkpoint(db)
                small = _sync(db, sim, account, max_pages=SMALL // 100)
                res["peak_rss_mb"][str(SMALL)] = small["peak_rss_mb"]
                res["pipeline_rows_per_s_at_100k"] = round(small["inserted"] / small["elapsed_s"])
        if with_dlt:
            with fresh_database("bench_dlt") as db:
                _checkpoint(db)
                peer = _child("benchmarks.dlt_child", "--db", db, "--sim", sim, "--user-id", account["user_id"],
                              "--token", account["token"])
                assert peer["rows"] == size, peer
                res["dlt_rows_per_s"] = round(size / peer["elapsed_s"])
                res["dlt_s"] = round(peer["elapsed_s"], 2)
                res["dlt_peak_rss_mb"] = peer["peak_rss_mb"]
    res["ratio_vs_copy"] = round(res["pipeline_rows_per_s"] / res["copy_rows_per_s"], 3)
    if "dlt_rows_per_s" in res:
        res["ratio_vs_dlt"] = round(res["pipeline_rows_per_s"] / res["dlt_rows_per_s"], 2)
    res["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    return res


NOOP_EVENTS = 5_000


def noop_account() -> dict[str, Any]:
    """Requests of a no-op run of one X account with conversation discovery (the inbox plus a stream per
    conversation), after its backfill: 1.0 when the inbox vouches for every dormant conversation."""
    with simulator_process(1, NOOP_EVENTS, seed=11) as sim, fresh_database("bench_noop") as db:
        account = sim_accounts(sim)[0]
        _sync(db, sim, account, discover=True)   # backfill: the inbox, then each conversation's first pass
        noop = _sync(db, sim, account, discover=True)
        assert noop["inserted"] == noop["updated"] == 0, noop
        return {"noop_requests_per_account": noop["sim_requests"],
                "noop_streams_per_account": noop["streams"] + noop["dormant"],
                "noop_ms_per_account": round(1000 * noop["elapsed_s"], 1)}


_PROCESSES = ("sync", "simulator", "postgres")


def summary(r: dict[str, Any]) -> str:
    cpu = r["cpu_ms_per_page"]
    rss = ", ".join(f"{k} events: {v} MB" for k, v in sorted(r["peak_rss_mb"].items(), key=lambda kv: int(kv[0])))
    lines = [
        f"dm_pipeline benchmark: {r['size']:,} events, pages of {r['page_size']}, PostgreSQL {r['postgres']} "
        f"(embedded), {r['machine']['cores']} cores, load average {r['machine']['load_avg_at_start']:.1f} at start",
        f"  COPY into an identical empty table   {r['copy_rows_per_s']:>9,} rows/s  (the physical limit)",
        f"  dm_pipeline backfill (crash-safe)    {r['pipeline_rows_per_s']:>9,} rows/s  "
        f"ratio_vs_copy {r['ratio_vs_copy']}  (target >= 0.6)",
    ]
    if "dlt_rows_per_s" in r:
        lines.append(f"  dlt merge (peer)                     {r['dlt_rows_per_s']:>9,} rows/s  "
                     f"ratio_vs_dlt {r['ratio_vs_dlt']}  (target >= 10); dlt peak RSS {r['dlt_peak_rss_mb']} MB")
    lines += [
        f"  requests {r['requests']:,} (ideal {r['ideal_requests']:,}); no-op run: "
        f"{r['noop_requests_per_stream']} request(s) and {r['noop_ms_per_stream']} ms per stream",
        f"  no-op run of an X account with {r['noop_streams_per_account']} streams (inbox + discovered "
        f"conversations): noop_requests_per_account {r['noop_requests_per_account']} (goal 1.0), "
        f"{r['noop_ms_per_account']} ms",
        f"  peak RSS of the sync process: {rss} (target <= 250 MB, flat)",
        "  per page of the backfill: " + ", ".join(f"{k} {v} ms" for k, v in cpu.items() if k in _PROCESSES)
        + f" of CPU; {cpu['wall']} ms of wall time (COPY: postgres {cpu['postgres_for_copy']} ms of CPU per "
        "100 rows)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--no-dlt", action="store_true", help="skip the peer (it needs the bench extra)")
    args = parser.parse_args()
    result = run(args.size, with_dlt=not args.no_dlt)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = summary(result)
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
