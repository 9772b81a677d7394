"""Issue 17's rows: the archiver against a bare script, and the sweeps its defaults come from.

- **1B**: N x 1 MiB at default settings against the bare asyncio script (tests/benchmarks/bare.py,
  its own process) in the same run, with every simulator response ``--bare-latency`` late
  (target >= 1.0) and on loopback (target >= 0.9); the S3 PUT limit and the naive loop beside
  them; each side's CPU per recording from the kernel's accounting (target <= 8 ms), with the
  start-up (a run of no calls) measured apart.
- **2B**: one large recording (1 GiB; 128 MiB with --quick) at default settings against a bare
  boto3 multipart upload of as many bytes with the same part size and as many parts in flight as
  the archiver's default part concurrency (target >= 0.8); the archiver's own VmHWM <= 150 MiB.
- **6B**: concurrency 4 / 8 / 16 / 32 for 1 MiB recordings at the same latency, each against the
  bare script at the same concurrency.
- **2P**: part concurrency 1 / 2 / 4 / 8 for the large recording (``ARCHIVER_PART_CONCURRENCY``),
  each against boto3 with as many threads.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archiver.simulator import Simulator, SimulatorServer
from tests.benchmarks.harness import (
    Bench,
    MiB,
    Row,
    Run,
    add_calls,
    archived,
    archiver_env,
    backfill,
    fresh,
    naive,
    put_loop,
)

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("1B", "2B", "6B", "2P")
"""``--only 17`` runs them all."""


def option_default(key: str, fallback: int) -> int:
    """The archiver's default for an option, or ``fallback`` where it has no such option."""
    from archiver import options

    for opt in options.OPTIONS:
        if opt.key == key and isinstance(opt.default, int):
            return opt.default
    return fallback


def has_part_concurrency() -> bool:
    """Whether this archiver knows ``--part-concurrency`` (older ones ignore the variable)."""
    answer = subprocess.run(
        [sys.executable, "-m", "archiver", "backfill", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--part-concurrency" in answer.stdout


@dataclass
class Bare:
    seconds: float
    cpu_seconds: float
    archived: int
    returncode: int

    def rate(self) -> float:
        return self.archived / self.seconds


def stored_objects(bench: Bench, bucket: str) -> int:
    pages = bench.weed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def run_bare(
    bench: Bench, env: dict[str, str], state: Path, sids: list[str], concurrency: int = 8
) -> Bare:
    """The bare script as its own process over ``sids`` into a fresh bucket: time and CPU from
    ``wait4``, and the bucket counted afterwards (it must hold one object per recording)."""
    calls, bucket = state / "bare-calls.txt", bench.bucket()
    calls.write_text("".join(f"{sid}\n" for sid in sids))
    args = [sys.executable, "-m", "tests.benchmarks.bare", "--calls", str(calls)]
    args += ["--bucket", bucket, "--concurrency", str(concurrency), "--expect", str(len(sids))]
    with (state / "bare.log").open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    returncode = os.waitstatus_to_exitcode(status)
    count = stored_objects(bench, bucket)
    if sids and count != len(sids):
        tail = (state / "bare.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"bare script stored {count}/{len(sids)} (rc {returncode}):\n{tail}")
    return Bare(seconds, usage.ru_utime + usage.ru_stime, count, returncode)


def startup_cpu(bench: Bench) -> tuple[float, float]:
    """CPU seconds of a run with no calls: the archiver's ``backfill`` of an empty day, and the
    bare script with an empty list. What a run costs before its first recording."""
    sim, state = fresh(bench, "f1b-empty")
    with SimulatorServer(sim) as server:
        env = archiver_env(bench, sim, server, bench.bucket(), state)
        run = backfill(bench, env, state)
        bare = run_bare(bench, env, state, [])
    return run.cpu_seconds, bare.cpu_seconds


@dataclass
class Pair:
    archiver: list[Run]
    bare: list[Bare]
    naive_rate: float

    def rates(self) -> tuple[float, float]:
        a = statistics.median(archived(run) / run.seconds for run in self.archiver)
        b = statistics.median(bare.rate() for bare in self.bare)
        return a, b

    def cpu_ms(self) -> tuple[float, float]:
        a = statistics.median(run.cpu_seconds / max(archived(run), 1) for run in self.archiver)
        b = statistics.median(bare.cpu_seconds / max(bare.archived, 1) for bare in self.bare)
        return a * 1000, b * 1000


def side_by_side(
    bench: Bench,
    name: str,
    count: int,
    latency: float,
    repeat: int,
    naive_count: int = 0,
    concurrency: int | None = None,
) -> Pair:
    """The archiver and the bare script over ``count`` calls of 1 MiB each (fresh calls, state
    and buckets for each), ``repeat`` times, the order alternating so neither always runs
    on the warmer machine."""
    pair = Pair([], [], 0.0)
    extra = {} if concurrency is None else {"ARCHIVER_CONCURRENCY": str(concurrency)}
    for attempt in range(repeat):
        sim, state = fresh(bench, f"{name}-{attempt}")
        sids = add_calls(sim, count, MiB)
        with SimulatorServer(sim) as server:
            sim.faults.latency = latency
            env = archiver_env(bench, sim, server, bench.bucket(), state, **extra)
            order = ("bare", "archiver") if attempt % 2 == 0 else ("archiver", "bare")
            for side in order:
                if side == "bare":
                    pair.bare.append(run_bare(bench, env, state, sids, concurrency or 8))
                else:
                    pair.archiver.append(backfill(bench, env, state))
            if naive_count and attempt == 0:
                pair.naive_rate = naive_count / naive(bench, sim, server, sids[:naive_count])
    return pair


def figure_1b(bench: Bench, latency: float, repeat: int) -> None:
    count = bench.n(1000, 20)
    ms = f"{latency * 1000:.0f} ms"
    start_archiver, start_bare = startup_cpu(bench)
    bench.add(
        Row(
            "1B",
            "start-up CPU, a run of no calls: archiver backfill",
            start_archiver * 1000,
            "ms",
            note=f"bare script: {start_bare * 1000:.0f} ms",
        )
    )
    loop = put_loop(bench, count, MiB, 8)
    limit = count / loop.seconds
    cases = ((f"{ms} source latency", latency, 1.0), ("loopback", 0.0, 0.9))
    for label, delay, target in cases:
        naive_count = min(count, bench.n(200 if delay == 0 else 50, 5))
        pair = side_by_side(bench, f"f1b-{delay}", count, delay, repeat, naive_count)
        ours, theirs = pair.rates()
        run = pair.archiver[-1]
        times = f" (median of {repeat})" if repeat > 1 else ""
        bench.add(
            Row(
                "1B",
                f"archiver backfill, {count} x 1 MiB, {label}, defaults{times}",
                ours,
                "rec/s",
                "bare script",
                ours / theirs,
                f">= {target}",
                ours / theirs >= target,
                note=f"bare script {theirs:.1f} rec/s (concurrency 8, {pair.bare[-1].archived} "
                f"stored); archiver {archived(run)}/{count} archived, rc {run.returncode}; "
                f"{run.cores()}",
            )
        )
        bench.add(
            Row(
                "1B",
                f"vs naive sequential, {label} ({naive_count} calls)",
                pair.naive_rate,
                "rec/s",
                "naive",
                ours / pair.naive_rate,
                ">= 10",
                ours / pair.naive_rate >= 10,
            )
        )
        if delay == 0:
            bench.add(
                Row(
                    "1B",
                    "vs S3 PUT limit, loopback (boto3, 8 threads, no download)",
                    limit,
                    "rec/s",
                    "limit",
                    ours / limit,
                    ">= 0.8",
                    ours / limit >= 0.8,
                )
            )
        cpu, bare_cpu = pair.cpu_ms()
        less = (start_archiver / count * 1000, start_bare / count * 1000)
        bench.add(
            Row(
                "1B",
                f"archiver CPU per 1 MiB recording, {label} (user + system)",
                cpu,
                "ms",
                "bare script",
                cpu / bare_cpu,
                "<= 8",
                cpu <= 8,
                note=f"bare script {bare_cpu:.1f} ms; less start-up: archiver "
                f"{cpu - less[0]:.1f} ms, bare {bare_cpu - less[1]:.1f} ms",
            )
        )


def figure_6b(bench: Bench, latency: float) -> None:
    count = bench.n(400, 40)
    for concurrency in (4, 8, 16, 32):
        pair = side_by_side(bench, f"f6b-{concurrency}", count, latency, 1, concurrency=concurrency)
        ours, theirs = pair.rates()
        cpu, bare_cpu = pair.cpu_ms()
        default = ", default" if concurrency == option_default("concurrency", 8) else ""
        bench.add(
            Row(
                "6B",
                f"concurrency {concurrency}, {count} x 1 MiB, "
                f"{latency * 1000:.0f} ms latency{default}",
                ours,
                "rec/s",
                "bare script, same concurrency",
                ours / theirs,
                note=f"bare {theirs:.1f} rec/s; CPU per recording (start-up included) "
                f"{cpu:.1f} ms, bare {bare_cpu:.1f} ms; "
                f"archiver peak {pair.archiver[0].peak_mib:.0f} MiB",
            )
        )


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            fh.write(block)


def multipart_rate(bench: Bench, source: Path, size: int, part: int, threads: int) -> float:
    """MiB/s of boto3 ``upload_file``: parts of ``part`` bytes, ``threads`` of them at once."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=threads
    )
    started = time.perf_counter()
    bench.weed.client().upload_file(str(source), bench.bucket(), "big", Config=config)
    return size / MiB / (time.perf_counter() - started)


def large(bench: Bench, name: str, size: int, extra: dict[str, str]) -> Run:
    sim: Simulator
    sim, state = fresh(bench, name)
    add_calls(sim, 1, size)
    with SimulatorServer(sim) as server:
        return backfill(
            bench, archiver_env(bench, sim, server, bench.bucket(), state, **extra), state
        )


def figure_2b(bench: Bench, sweep: Iterable[int] = ()) -> None:
    """The large recording at defaults (2B), then at each part concurrency of ``sweep`` (2P)."""
    size = bench.n(1024, 128) * MiB
    part = option_default("part_size", 8) * MiB
    default = option_default("part_concurrency", 4)
    known = has_part_concurrency()
    source = bench.work / "big.bin"
    write_random(source, size)
    try:
        cases: list[tuple[str, int, dict[str, str]]] = []
        if "2B" in bench.selected:
            cases.append(("2B", default, {}))
        cases += [("2P", n, {"ARCHIVER_PART_CONCURRENCY": str(n)}) for n in sweep]
        for figure, threads, extra in cases:
            run = large(bench, f"f{figure}-{threads}", size, extra)
            rate = size / MiB / run.seconds if archived(run) else 0.0
            limit = multipart_rate(bench, source, size, part, threads)
            ignored = "" if known else "; this archiver has no --part-concurrency (ignored)"
            label = "defaults" if not extra else f"part concurrency {threads}"
            bench.add(
                Row(
                    figure,
                    f"one {size // MiB} MiB recording, {label}",
                    rate,
                    "MiB/s",
                    f"boto3 multipart, {part // MiB} MiB parts, {threads} threads",
                    rate / limit,
                    ">= 0.8" if figure == "2B" else "",
                    rate / limit >= 0.8 if figure == "2B" else None,
                    note=f"boto3 {limit:.1f} MiB/s; archiver peak {run.peak_mib:.1f} MiB, CPU "
                    f"{run.cpu_seconds:.1f} s, rc {run.returncode}{ignored}",
                )
            )
            if figure == "2B":
                bench.add(
                    Row(
                        "2B",
                        f"peak RSS, one {size // MiB} MiB recording, defaults",
                        run.peak_mib,
                        "MiB",
                        target="<= 150",
                        met=0 < run.peak_mib <= 150,
                        note=f"the child's VmHWM (wait4 ru_maxrss {run.max_rss_mib:.1f} MiB)",
                    )
                )
    finally:
        source.unlink(missing_ok=True)


def steps(bench: Bench, latency: float, repeat: int) -> list[tuple[str, Any]]:
    """(name, callable) for run.py's main, in the order they run."""
    sweep = (1, 2, 4, 8) if "2P" in bench.selected else ()
    big = [("2B", lambda: figure_2b(bench, sweep))]
    if "2B" not in bench.selected:  # else 2B runs the sweep after its own row
        big = [("2P", lambda: figure_2b(bench, sweep))]
    return [
        ("1B", lambda: figure_1b(bench, latency, repeat)),
        ("6B", lambda: figure_6b(bench, latency)),
        *big,
    ]
