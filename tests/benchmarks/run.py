"""The benchmark: the figures of exotel-archiver, each against a baseline measured in one run.

    python -m tests.benchmarks.run                  # every figure (about an hour)
    python -m tests.benchmarks.run --quick          # the same, ten times smaller (a few minutes)
    python -m tests.benchmarks.run --only 1,3       # some figures
    python -m tests.benchmarks.run --only 17        # issue 17's rows: 1B, 6B, 2B, 2P (issue17.py)
    python -m tests.benchmarks.run --only 18        # issue 18's rows: 18A-18D, 18P (issue18.py)
    python -m tests.benchmarks.run --only 19        # issue 19's rows: 19A, 19B (issue19.py)
    python -m tests.benchmarks.run --json out.json  # where the JSON result goes
    python -m tests.benchmarks.run --latency 0.2    # figure 1L's simulated source latency
    python -m tests.benchmarks.run --only 1B --bare-latency 0.05 --repeat 3

It starts its own SeaweedFS (``weed mini`` on loopback) and the built-in Exotel simulator, runs
``exotel-archiver backfill`` as a separate process (as a user would; its peak RSS is read by the
parent from the kernel's accounting of the child, ``wait4``), and prints a table. Absolute
times drift on shared machines: read the ratios. Not collected by ``pytest`` (no ``test_``
file); docs/performance.md holds the figures of the latest full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from archiver.simulator import SimulatorServer
from tests.benchmarks import issue17, issue18, issue19
from tests.benchmarks.harness import (
    Bench,
    MiB,
    Row,
    add_calls,
    archived,
    archiver_env,
    backfill,
    fresh,
    job_peak,
    naive,
    put_loop,
    source_loop,
)
from tests.seaweed import SeaweedFS
from tests.support import GENERAL_30D, exotel_env


def figure_1_and_6(bench: Bench) -> None:
    count = bench.n(2000, 20)
    sim, state = fresh(bench, "f1")
    sids = add_calls(sim, count, MiB)
    with SimulatorServer(sim) as server:
        run = backfill(bench, archiver_env(bench, sim, server, bench.bucket(), state), state)
        ok = archived(run)
        rate = ok / run.seconds
        requests = sim.counters["api_requests"]
        loop = put_loop(bench, count, MiB, 8)
        limit = count / loop.seconds
        source = count / source_loop(sim, server, sids, 8)
        naive_count = min(count, bench.n(200, 10))
        naive_rate = naive_count / naive(bench, sim, server, sids[:naive_count])
    note = f"{rate:.1f} MiB/s, {ok}/{count} archived, rc {run.returncode}"
    bench.add(Row("1", f"archiver backfill, {count} x 1 MiB", rate, "rec/s", note=note))
    bench.add(
        Row(
            "1",
            "vs S3 PUT limit (boto3, 8 threads, no download)",
            limit,
            "rec/s",
            "limit",
            rate / limit,
            ">= 0.8",
            rate / limit >= 0.8,
        )
    )
    bench.add(
        Row(
            "1",
            "vs source limit (details + GET, 8 tasks, nothing stored)",
            source,
            "rec/s",
            "source",
            rate / source,
            note="the simulator: Python, in the benchmark's process",
        )
    )
    bench.add(
        Row(
            "1",
            f"vs naive sequential ({naive_count} calls)",
            naive_rate,
            "rec/s",
            "naive",
            rate / naive_rate,
            ">= 10",
            rate / naive_rate >= 10,
        )
    )
    cpu = run.cpu_seconds / max(ok, 1) * 1000
    busy = f"{run.cpu_seconds / run.seconds:.0%} of one core on average"
    bench.add(Row("1", "archiver CPU per recording (user + system)", cpu, "ms", note=busy))
    bench.add(
        Row(
            "1",
            "CPU in use during the backfill",
            sum(x / run.seconds for x in (run.cpu_seconds, run.store_cpu, run.source_cpu)),
            "cores",
            note=run.cores(),
        )
    )
    # The CPU budget: what reaching 0.8 of the limit would leave the archiver on this machine.
    store_ms = run.store_cpu / max(ok, 1) * 1000
    source_ms = run.source_cpu / max(ok, 1) * 1000
    target_rate = 0.8 * limit
    cores = os.cpu_count() or 1
    left = (cores - target_rate * (store_ms + source_ms) / 1000) / target_rate * 1000
    bench.add(
        Row(
            "1",
            "CPU per object in the limit loop (SeaweedFS + boto3)",
            (loop.store_cpu + loop.client_cpu) / count * 1000,
            "ms",
            note=f"SeaweedFS {loop.store_cpu / count * 1000:.1f} ms, "
            f"boto3 loop {loop.client_cpu / count * 1000:.1f} ms; "
            f"{(loop.store_cpu + loop.client_cpu) / loop.seconds:.2f} cores busy",
        )
    )
    bench.add(
        Row(
            "1",
            f"archiver CPU per recording that 0.8 x limit ({target_rate:.0f} rec/s) would allow",
            left,
            "ms",
            note=f"{cores} cores less SeaweedFS {store_ms:.1f} ms + simulator {source_ms:.1f} ms "
            f"per recording (as measured in the archiver run); the archiver used {cpu:.1f} ms",
        )
    )
    per_call = requests / max(ok, 1)
    bench.add(
        Row(
            "3",
            "API requests per archived call (1 MiB run)",
            per_call,
            "req/call",
            target="<= 1.05",
            met=per_call <= 1.05,
            note=f"{requests} requests incl. both listings (dry run, then the run)",
        )
    )
    if "6" not in bench.selected:
        return
    sweep = bench.n(400, 20)
    best = 0.0
    results = {}
    for concurrency in (1, 4, 8, 16, 32):
        sim, state = fresh(bench, f"f6-{concurrency}")
        add_calls(sim, sweep, MiB)
        with SimulatorServer(sim) as server:
            env = archiver_env(
                bench, sim, server, bench.bucket(), state, ARCHIVER_CONCURRENCY=str(concurrency)
            )
            run = backfill(bench, env, state)
        results[concurrency] = archived(run) / run.seconds
        best = max(best, results[concurrency])
    for concurrency, rate in results.items():
        bench.add(
            Row(
                "6",
                f"concurrency {concurrency} ({sweep} x 1 MiB)",
                rate,
                "rec/s",
                "best",
                rate / best,
                note="default" if concurrency == 8 else "",
            )
        )


def figure_1_latency(bench: Bench, latency: float) -> None:
    """Figure 1 again with the source far away: every simulator response waits ``latency``
    seconds first, as Exotel's API and its recording store do over the internet. On loopback
    the CPU is the limit; with latency, waiting is, and that is what concurrency is for."""
    count, naive_count = bench.n(400, 20), bench.n(50, 5)
    rates: dict[int, float] = {}
    for concurrency in (8, 32):
        sim, state = fresh(bench, f"f1l-{concurrency}")
        sids = add_calls(sim, count, MiB)
        with SimulatorServer(sim) as server:
            env = archiver_env(
                bench, sim, server, bench.bucket(), state, ARCHIVER_CONCURRENCY=str(concurrency)
            )
            sim.faults.latency = latency
            run = backfill(bench, env, state)
            rates[concurrency] = archived(run) / run.seconds
            if concurrency == 8:
                naive_rate = naive_count / naive(bench, sim, server, sids[:naive_count])
        note = f"{archived(run)}/{count} archived, rc {run.returncode}; {run.cores()}"
        bench.add(
            Row(
                "1L",
                f"archiver, {latency * 1000:.0f} ms source latency, concurrency {concurrency}",
                rates[concurrency],
                "rec/s",
                note=note,
            )
        )
    for concurrency, rate in rates.items():
        bench.add(
            Row(
                "1L",
                f"vs naive sequential, {latency * 1000:.0f} ms latency (concurrency {concurrency})",
                naive_rate,
                "rec/s",
                "naive",
                rate / naive_rate,
                ">= 10",
                rate / naive_rate >= 10,
            )
        )


def figure_2(bench: Bench) -> None:
    size = int(bench.n(1024, 64)) * MiB
    sim, state = fresh(bench, "f2")
    add_calls(sim, 1, size)
    with SimulatorServer(sim) as server:
        run = backfill(bench, archiver_env(bench, sim, server, bench.bucket(), state), state)
    rate = size / MiB / run.seconds if archived(run) else 0.0
    source = bench.work / "big.bin"
    with source.open("wb") as fh:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            fh.write(block)
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=1
    )
    started = time.perf_counter()
    bench.weed.client().upload_file(str(source), bench.bucket(), "big", Config=config)
    limit = size / MiB / (time.perf_counter() - started)
    source.unlink()
    mib = size // MiB
    bench.add(
        Row(
            "2",
            f"one {mib} MiB recording",
            rate,
            "MiB/s",
            "multipart limit",
            rate / limit if limit else None,
            note=f"limit {limit:.1f} MiB/s (boto3 upload_file, 8 MiB parts, 1 thread)",
        )
    )
    bench.add(
        Row(
            "2",
            f"peak RSS, {mib} MiB recording",
            run.peak_mib,
            "MiB",
            target="<= 150",
            met=0 < run.peak_mib <= 150,
            note=f"the child's VmHWM (wait4 ru_maxrss: {run.max_rss_mib:.1f} MiB)",
        )
    )


def figure_3(bench: Bench) -> None:
    count, limit = bench.n(1200, 60), 600
    sim, state = fresh(bench, "f3")
    add_calls(sim, count, 4096)
    with SimulatorServer(sim) as server:
        env = archiver_env(bench, sim, server, bench.bucket(), state, EXOTEL_RATE_LIMIT=str(limit))
        run = backfill(bench, env, state)
        # The dry run (its own process, its own limiter) listed just before: count from the
        # archiving process's start, whose limiter is the one under test.
        busiest = sim.busiest_minute(since=run.started_at)
        per_call = sim.counters["api_requests"] / max(archived(run), 1)
    bench.add(
        Row(
            "3",
            f"busiest 60 s at a limit of {limit}/min ({count} calls)",
            busiest,
            "req/60s",
            target=f"<= {limit}",
            met=busiest <= limit,
            note=f"{per_call:.3f} requests per call incl. listing and dry run",
        )
    )


def figure_4(bench: Bench) -> None:
    count = bench.n(500, 40)
    sim, state = fresh(bench, "f4", url_ttl=5.0)
    add_calls(sim, count, 200 * 1024)
    sim.faults.bandwidth = 100 * 1024  # two seconds a download: the backlog takes minutes
    with SimulatorServer(sim) as server:
        run = backfill(bench, archiver_env(bench, sim, server, bench.bucket(), state), state)
    lost = count - archived(run)
    refreshes = int(run.summary.get("result", {}).get("url_refreshes", 0))
    bench.add(
        Row(
            "4",
            f"lost to expiry ({count} calls, 5 s URLs, {run.seconds:.0f} s)",
            lost,
            "calls",
            target="0",
            met=lost == 0,
            note=f"{refreshes} URL refreshes, {sim.counters['expired_refusals']} 403s",
        )
    )


def figure_5(bench: Bench, sizes: list[int]) -> None:
    rates = {}
    for count in sizes:
        sim, state = fresh(bench, f"f5-{count}")
        add_calls(sim, count, 4096)
        with SimulatorServer(sim) as server:
            run = backfill(bench, archiver_env(bench, sim, server, bench.bucket(), state), state)
        rates[count] = archived(run) / run.seconds
        ledger = (state / "ledger.sqlite3").stat().st_size / count
        bench.add(
            Row(
                "5",
                f"{count:,} calls of 4 KiB",
                rates[count],
                "calls/s",
                note=f"ledger {ledger:.0f} B/call, rc {run.returncode}",
            )
        )
    first, last = sizes[0], sizes[-1]
    ratio = rates[last] / rates[first]
    bench.add(
        Row(
            "5",
            f"per-call speed {last:,} / {first:,}",
            ratio,
            "x",
            target=">= 0.9",
            met=ratio >= 0.9,
        )
    )


RETENTION_RULES = GENERAL_30D


def figure_7(bench: Bench) -> None:
    """Retention jobs over a large archive: peak RSS at 10·N objects against N, same run.

    A local destination (the jobs' memory, not the store's speed, is what is measured); every
    object is past its date, so each job names every one in its report."""
    import asyncio

    from archiver.archive import archive_calls
    from archiver.config import load_settings
    from tests.support import add_bulk_objects

    small, large = bench.n(10_000, 1_000), bench.n(100_000, 10_000)
    peaks: dict[int, dict[str, float]] = {}
    for count in (small, large):
        sim, state = fresh(bench, f"f7-{count}")
        config = state / "archiver.toml"
        config.write_text(RETENTION_RULES)
        with SimulatorServer(sim) as server:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                **exotel_env(sim, server.base_url, str(state / "archive"), state / "state"),
                "ARCHIVER_CONFIG": str(config),
            }
            settings = load_settings(env=env, config_file=config)
            asyncio.run(archive_calls(settings, add_calls(sim, 1, 4096)))
            add_bulk_objects(state / "state", state / "archive", count)
            asyncio.run(archive_calls(settings, []))  # sealed, as if archived one by one
        peaks[count] = {}
        for job in (["audit"], ["purge", "--dry-run"], ["plan"]):
            report = state / f"{job[0]}.json"
            seconds, rss, rc = job_peak(
                env, ["retention", *job, "--report", str(report)], state / "hwm"
            )
            peaks[count][job[0]] = rss
            bench.add(
                Row(
                    "7",
                    f"retention {' '.join(job)}, {count:,} objects: peak RSS",
                    rss,
                    "MiB",
                    note=f"{seconds:.0f} s, rc {rc}, report {report.stat().st_size // 1024} KiB",
                )
            )
    for name in ("audit", "purge", "plan"):
        ratio = peaks[large][name] / peaks[small][name]
        bench.add(
            Row(
                "7",
                f"retention {name}: peak RSS {large:,} / {small:,} objects",
                ratio,
                "x",
                target="<= 1.2",
                met=ratio <= 1.2,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ten times smaller")
    parser.add_argument(
        "--only",
        default="1,2,3,4,5,6,7,17,18,19",
        help="figures to run, e.g. 1,3; 17 is issue 17's 1B,6B,2B,2P; 18 and 19 those issues' rows",
    )
    parser.add_argument(
        "--scale-sizes", default="1000,10000,100000", help="call counts of figure 5"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.1,
        help="seconds every source response waits in figure 1's second half (1L); 0 skips it",
    )
    parser.add_argument(
        "--bare-latency",
        type=float,
        default=0.05,
        help="seconds every source response waits in 1B's first half and in 6B",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="1B: runs of each side (the median is shown)"
    )
    parser.add_argument(
        "--lane-calls", type=int, default=10_000, help="18B: calls of each rescue-lane run"
    )
    parser.add_argument("--json", type=Path, default=Path("benchmark-result.json"))
    args = parser.parse_args()
    selected = {name.strip().upper() for name in args.only.split(",")}
    if "17" in selected:
        selected |= set(issue17.FIGURES)
    if "18" in selected:
        selected |= set(issue18.FIGURES)
    if "19" in selected:
        selected |= set(issue19.FIGURES)
    if selected & {"18B", "18P"}:  # 18B's ratio is to 18A's rate, 18P uses every rate
        selected |= {"18A"} | ({"18B", "18D"} if "18P" in selected else set())
    work = Path(tempfile.mkdtemp(prefix="exotel-bench-"))
    weed = SeaweedFS(work / "weed")
    weed.start()
    bench = Bench(weed, work, 0.1 if args.quick else 1.0, selected)
    started = time.time()

    def save() -> None:  # after every figure: a long run cut short keeps what it measured
        result = {
            "when": datetime.now().astimezone().isoformat(timespec="seconds"),
            "seconds": round(time.time() - started),
            "quick": args.quick,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "rows": [row.__dict__ for row in bench.rows],
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    bench.saved = save
    try:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("1", lambda: figure_1_and_6(bench)),
            ("1L", lambda: figure_1_latency(bench, args.latency) if args.latency else None),
            ("2", lambda: figure_2(bench)),
            ("3", lambda: figure_3(bench)),
            ("4", lambda: figure_4(bench)),
            (
                "5",
                lambda: figure_5(
                    bench, [bench.n(int(n), 100) for n in args.scale_sizes.split(",")]
                ),
            ),
            ("7", lambda: figure_7(bench)),
            *issue17.steps(bench, args.bare_latency, args.repeat),
            *issue18.steps(bench, args.lane_calls),
            *issue19.steps(bench),
        ]
        for name, step in steps:
            wanted = name in selected or (name == "1" and "6" in selected)
            if wanted or (name == "1L" and "1" in selected):
                print(f"figure {name}...", flush=True)
                step()
    finally:
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'fig':<4}{'measure':<72}{'value':>16}  {'ratio':>6}  target, baseline")
    for r in bench.rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        verdict = "" if r.met is None else (" MET" if r.met else " MISSED")
        against = f"  vs {r.baseline}" if r.baseline else ""
        print(
            f"{r.figure:<4}{r.measure:<72}{r.value:>10,.2f} {r.unit:<5}{ratio:>6}  "
            f"{r.target}{verdict}{against}"
        )
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
