"""One dm_pipeline sync of one simulator account, in its own process so its peak RSS is its own.

    python -m benchmarks.pipeline_child --db URL --sim URL --user-id ID --token TOKEN [--max-pages N]

Prints one JSON line: elapsed_s, pages, requests, inserted, updated, streams (fetched), dormant (X
conversation streams the inbox vouched for), status, peak_rss_mb, and
cpu_s (the CPU time of the sync itself, all threads, without start-up).
The engine is the real one: `sync_account` with the real X client over loopback HTTP, one transaction per
page (rows + cursor + audit).
"""

from __future__ import annotations

import json
import os
import resource
import time
import uuid

from benchmarks.common import child_arguments
from dm_pipeline.clients import build_client, http_client
from dm_pipeline.db.engine import get_engine
from dm_pipeline.models import Account, Provider
from dm_pipeline.sync import RunLimits, sync_account


def peak_rss_mb() -> float:
    """VmHWM: the resident-set high-water mark of this process."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    """User + system CPU of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = child_arguments(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--key", default="bench-x")
    parser.add_argument("--max-pages", type=int, default=1_000_000)
    parser.add_argument("--discover", action="store_true", help="a stream per conversation seen in the inbox")
    args = parser.parse_args()

    os.environ["DM_BENCH_TOKEN"] = args.token
    account = Account(key=args.key, provider=Provider.X, user_id=args.user_id, base_url=args.sim,
                      token_env="DM_BENCH_TOKEN", page_size=100, discover_conversations=args.discover)
    engine = get_engine(args.db)  # the project's engine, as the CLI and Dagster build it
    limits = RunLimits(max_pages=args.max_pages, time_budget_s=3600.0)
    with http_client() as http:
        client = build_client(account, http, engine=engine)
        cpu0, t0 = _cpu_s(), time.perf_counter()
        result = sync_account(engine, client, f"bench-{uuid.uuid4()}", limits)
        elapsed, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    engine.dispose()
    print(json.dumps({
        "elapsed_s": elapsed, "pages": result.total("pages"), "commits": result.total("commits"),
        "requests": result.total("requests"),
        "inserted": result.total("inserted"), "updated": result.total("updated"),
        "streams": len(result.streams), "dormant": len(result.dormant),
        "status": result.status.value, "peak_rss_mb": round(peak_rss_mb(), 1),
        "cpu_s": round(cpu, 3),
    }), flush=True)


if __name__ == "__main__":
    main()
