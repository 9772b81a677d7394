"""Issue 18's rows: the rescue lane at Exotel's real limit, against the per-call-details path in
the same run, and the six-month projection made from what was measured.

Every row runs against a simulator that enforces 200 API requests a minute (429 beyond), with
the archiver's limiter at the same 200, and runs ``exotel-archiver backfill`` as its own process
(no dry run first: the backfill lists the range itself, in the same limiter, and its requests
are all counted).

- **18A** — the per-call-details path (``ARCHIVER_RESCUE=off``): ``2 x 200 + 1`` calls of 2 KiB
  (``200 + 1`` with --quick), so the run spans whole limiter windows and the burst the limiter
  allows at the start is not counted as speed. Calls archived per minute; requests per call.
- **18B** — the rescue lane (``ARCHIVER_RESCUE=on``, ``ARCHIVER_ENRICH=never``) over many more
  calls of 2 KiB, into SeaweedFS and into a local directory: calls rescued per minute and the
  ratio to 18A (target >= 25), API requests per rescued call, the listing included (target
  <= 0.03), and the bound: the archiver's CPU (``wait4``), the machine's (``/proc/stat``, all
  cores), SeaweedFS's and the simulator's, whether any 60 s came near the limit (the limiter
  waits only there) and 429s. A shorter third run is sampled by py-spy (``--nonblocking``) for
  the archiver's top costs, so its overhead is in no measured row.
- **18C** — zero lost at a 5-minute validity: the account refuses ``RecordingUrlValidity`` above
  5 (``Simulator(max_url_validity=5)``), 3000 calls (300 with --quick) whose downloads are slow
  (``faults.bandwidth``) so that the backlog takes longer than the URLs live: calls lost (no
  recording in the bucket), 403s for expired URLs, and rescues that fell back to v3.
- **18D** — enrichment at its default share (``ARCHIVER_ENRICH=background``,
  ``ARCHIVER_ENRICH_SHARE=50`` of 200): the busiest 60 s of v3 requests (<= 100) and calls
  completed a minute, over ``2 x 100 + 1`` calls.
- **18P** — the projection: six months of 20,000 calls a day (3.6 M) at a 100/min share.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.simulator import Simulator, SimulatorServer
from tests.benchmarks.harness import (
    Bench,
    Row,
    add_calls,
    bench_day,
    process_cpu,
    self_cpu,
)
from tests.support import HWM_WRAPPER, exotel_env

FIGURES = ("18A", "18B", "18C", "18D", "18P")
"""``--only 18`` runs them all."""
LIMIT = 200
"""Exotel's limit: the simulator's, and the archiver's ``EXOTEL_RATE_LIMIT`` in every row."""
SMALL = 2048
"""Bytes of each recording in 18A, 18B and 18D: small, so the machine is not the bound."""
MONTHS_OF_CALLS = 20_000 * 180
"""The projection's backlog: six months of 20,000 calls a day."""
SHARE = 100
"""Requests a minute the projection's lane (listing, then enrichment) may use."""


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


@dataclass
class Child:
    """One ``backfill`` child process: time and CPU, and what the simulator saw meanwhile."""

    seconds: float
    cpu: float
    store_cpu: float
    source_cpu: float
    machine_cores: float
    """Cores of the whole machine busy on average (everything on it, other work included)."""
    summary: dict[str, Any]
    returncode: int
    started_at: float
    peak_mib: float
    profile: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.summary.get("result", {}).get("counts", {}).items()}

    def plan(self) -> dict[str, Any]:
        plan: dict[str, Any] = self.summary.get("plan", {})
        return plan

    def cores(self) -> str:
        a, b, c = (x / self.seconds for x in (self.cpu, self.store_cpu, self.source_cpu))
        return (
            f"archiver {a:.2f}, SeaweedFS {b:.2f}, simulator {c:.2f}; the machine "
            f"{self.machine_cores:.2f} of {os.cpu_count()} cores busy"
        )


def lane_env(
    bench: Bench,
    sim: Simulator,
    server: SimulatorServer,
    destination: str,
    state: Path,
    **extra: str,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(bench.weed.env())
    env.update(exotel_env(sim, server.base_url, destination, state))
    env.update({"EXOTEL_RATE_LIMIT": str(LIMIT), "ARCHIVER_LOG_FORMAT": "json", **extra})
    return env


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid`` so far, by thread id."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def profile(
    pid: int, after: float, seconds: int, out: Path, cores: dict[int, float]
) -> threading.Thread:
    """py-spy samples ``pid`` for ``seconds`` from ``after`` seconds on (raw collapsed stacks
    into ``out``), from a thread; it does not pause the process (``--nonblocking``). ``cores``
    gets each thread's CPU over the same window, in cores (by thread id)."""
    spy = Path(sys.executable).with_name("py-spy")

    def sample() -> None:
        time.sleep(after)
        args = [str(spy), "record", "--pid", str(pid), "--duration", str(seconds)]
        args += ["--format", "raw", "--nonblocking", "--threads", "--gil", "-o", str(out)]
        before, started = thread_cpu(pid), time.perf_counter()
        subprocess.run(args, capture_output=True, check=False)
        now, spent = thread_cpu(pid), time.perf_counter() - started
        cores.update({tid: (cpu - before.get(tid, 0.0)) / spent for tid, cpu in now.items()})

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread


_ROOTS = (
    "threading.py",
    "runpy",
    "<string>",
    "click/",
    "asyncio/",
    "archiver/cli/",
    "archiver/__main__",
    "concurrent/futures/thread.py",
)
"""Frames nearly every sample passes through (the thread's and the event loop's own): left
out of the inclusive list."""


def _frame(frame: str) -> str:
    """``name (path/file.py:line)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})" if where else name


def top_costs(raw: Path, cores: dict[int, float], count: int = 8) -> list[str]:
    """From py-spy's collapsed stacks (``thread (tid): name;frame;... samples``, GIL-holding
    samples only): the share of each thread, the functions most often on top of the stack
    (self), and those most often anywhere in it (inclusive, less the ``_ROOTS``); first, each
    thread's CPU in cores over the window (``cores``, named from the samples)."""
    if not raw.exists():
        return ["py-spy wrote nothing (is it installed beside the venv's python?)"]
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    names: dict[int, str] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        head, _, rest = stack.partition(": ")
        thread, *frames = rest.split(";")
        tid = head.partition("(")[2].rstrip(")")
        if tid.isdigit():
            names[int(tid)] = thread
        n = int(samples)
        total += n
        threads[thread.rstrip("_0123456789") or head] += n
        if frames:
            own[_frame(frames[-1])] += n
        for name in {_frame(f) for f in frames if not any(r in f for r in _ROOTS)}:
            anywhere[name] += n
    if not total:
        return ["py-spy took no sample"]
    share = ", ".join(f"{name} {n / total:.0%}" for name, n in threads.most_common(4))
    by_thread: collections.Counter[str] = collections.Counter()
    for tid, used in cores.items():
        by_thread[names.get(tid, "other").rstrip("_0123456789")] += used
    cpu = ", ".join(f"{name} {used:.2f}" for name, used in by_thread.most_common(5))
    out = [f"CPU by thread (cores): {cpu}"]
    out += [f"{total} GIL-holding samples; by thread: {share}", "self:"]
    out += [f"{n / total:.1%} {name}" for name, n in own.most_common(count)]
    out.append("inclusive:")
    out += [f"{n / total:.1%} {name}" for name, n in anywhere.most_common(count + 4)]
    return out


def run_backfill(
    bench: Bench,
    env: dict[str, str],
    state: Path,
    *,
    spy: tuple[float, int] | None = None,
) -> Child:
    """``exotel-archiver backfill`` of the bench day as its own process, timed from its start
    (its listing included). ``spy``: (after, seconds) of py-spy sampling."""
    day = bench_day()
    report, hwm, raw = state / "bench-report.json", state / "bench-hwm", state / "spy.txt"
    args = ["backfill", "--range", f"{day}..{day}", "--report", str(report)]
    wrapped = [sys.executable, "-c", HWM_WRAPPER, str(hwm), *args]
    with (state / "bench.log").open("wb") as log:
        store_before, source_before = process_cpu(bench.weed_pid), self_cpu()
        busy_before, _ = machine_busy()
        started, started_at = time.perf_counter(), time.time()
        proc = subprocess.Popen(wrapped, env=env, stdout=log, stderr=log)
        cores: dict[int, float] = {}
        sampler = profile(proc.pid, *spy, raw, cores) if spy else None
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        busy_after, _ = machine_busy()
        store_cpu = process_cpu(bench.weed_pid) - store_before
        source_cpu = self_cpu() - source_before
    if sampler is not None:
        sampler.join(30)
        if raw.exists():  # kept past the run's work directory, for a closer look
            shutil.copy(raw, Path(tempfile.gettempdir()) / f"issue18-{state.name}-py-spy.txt")
    summary = json.loads(report.read_text()) if report.exists() else {}
    return Child(
        seconds=seconds,
        cpu=usage.ru_utime + usage.ru_stime,
        store_cpu=store_cpu,
        source_cpu=source_cpu,
        machine_cores=(busy_after - busy_before) / seconds,
        summary=summary,
        returncode=os.waitstatus_to_exitcode(status),
        started_at=started_at,
        peak_mib=int(hwm.read_text()) / 1024 if hwm.exists() else 0.0,
        profile=top_costs(raw, cores) if spy else [],
    )


def fresh(bench: Bench, name: str, **sim_args: Any) -> tuple[Simulator, Path]:
    state = bench.work / name
    state.mkdir(parents=True)
    return Simulator(seed=18, rate_limit_per_minute=LIMIT, **sim_args), state


def requests_since(sim: Simulator, since: float, kind: str | None = None) -> int:
    return sum(
        1
        for t, k in zip(sim.api_log, sim.api_kinds, strict=True)
        if t >= since and kind in (None, k)
    )


def recordings_stored(bench: Bench, destination: str) -> set[str]:
    """Call SIDs with a ``recording-N`` object in ``destination`` (s3://bucket/prefix or a
    directory)."""
    sids: set[str] = set()
    if destination.startswith("s3://"):
        bucket, _, prefix = destination[5:].partition("/")
        pages = bench.weed.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            for item in page.get("Contents", []):
                *_, sid, name = item["Key"].split("/")
                if name.startswith("recording-"):
                    sids.add(sid)
        return sids
    for path in Path(destination).rglob("recording-*"):
        sids.add(path.parent.name)
    return sids


@dataclass
class Results:
    """What the rows measured, for the projection."""

    per_call_rate: float = 0.0
    """18A: calls archived a minute through v3 at the whole limit."""
    rescue_rate: float = 0.0
    """18B: calls rescued a minute (into SeaweedFS)."""
    rescue_rate_local: float = 0.0
    enrich_rate: float = 0.0
    """18D: calls completed a minute by enrichment at its share."""
    enrich_share: int = 0


def row_a(bench: Bench, got: Results) -> None:
    windows = 1 if bench.scale < 1 else 2
    count = windows * LIMIT + 1
    sim, state = fresh(bench, "f18a")
    sids = set(add_calls(sim, count, SMALL))
    with SimulatorServer(sim) as server:
        env = lane_env(bench, sim, server, f"s3://{bench.bucket()}/bench", state)
        env["ARCHIVER_RESCUE"] = "off"
        run = run_backfill(bench, env, state)
        requests = requests_since(sim, run.started_at)
    archived = run.counts().get("archived", 0)
    got.per_call_rate = archived / run.seconds * 60
    bench.add(
        Row(
            "18A",
            f"per-call-details path (rescue off), {count} x 2 KiB, limit {LIMIT}/min",
            got.per_call_rate,
            "calls/min",
            note=f"{archived}/{len(sids)} archived in {run.seconds:.0f} s, rc {run.returncode}; "
            f"{requests} API requests ({requests / max(archived, 1):.3f} a call), "
            f"{sim.counters['rate_limited']} answered 429; {run.cores()}",
        )
    )


def lane_run(
    bench: Bench,
    name: str,
    count: int,
    local: bool,
    spy: tuple[float, int] | None = None,
    **extra: str,
) -> tuple[Child, Simulator, int, int, str]:
    sim, state = fresh(bench, name)
    add_calls(sim, count, SMALL)
    destination = str(state / "archive") if local else f"s3://{bench.bucket()}/bench"
    with SimulatorServer(sim) as server:
        env = lane_env(
            bench,
            sim,
            server,
            destination,
            state,
            ARCHIVER_RESCUE="on",
            ARCHIVER_ENRICH="never",
            **extra,
        )
        run = run_backfill(bench, env, state, spy=spy)
        requests = requests_since(sim, run.started_at)
        busiest = sim.busiest_minute(since=run.started_at)
    return run, sim, requests, busiest, destination


def row_b(bench: Bench, got: Results, count: int) -> None:
    count = bench.n(count, 600)
    for local in (False, True):
        where = "a local directory" if local else "SeaweedFS"
        run, sim, requests, busiest, destination = lane_run(
            bench, f"f18b-{'local' if local else 's3'}", count, local
        )
        rescued = run.counts().get("rescued", 0)
        stored = len(recordings_stored(bench, destination))
        rate = rescued / run.seconds * 60
        if local:
            got.rescue_rate_local = rate
        else:
            got.rescue_rate = rate
        ratio = rate / got.per_call_rate if got.per_call_rate else None
        waited = (
            "no 60 s near the limit: the limiter never waited"
            if busiest < LIMIT
            else (f"the busiest 60 s reached the limit ({busiest}): the limiter waited")
        )
        bench.add(
            Row(
                "18B",
                f"rescue lane (enrich never) into {where}, {count} x 2 KiB",
                rate,
                "calls/min",
                "per-call-details path (18A)",
                ratio,
                ">= 25",
                ratio is not None and ratio >= 25,
                note=f"{rescued}/{count} rescued ({stored} recordings stored) in "
                f"{run.seconds:.0f} s, rc {run.returncode}, {run.plan().get('rescue_fallbacks')} "
                f"fallbacks; {run.cores()}; archiver CPU {run.cpu / max(rescued, 1) * 1000:.2f} "
                f"ms a call, peak {run.peak_mib:.0f} MiB",
            )
        )
        per_call = requests / max(rescued, 1)
        bench.add(
            Row(
                "18B",
                f"API requests per rescued call, listing included ({where})",
                per_call,
                "req/call",
                target="<= 0.03",
                met=per_call <= 0.03,
                note=f"{requests} requests ({run.plan().get('listing_requests')} listing) for "
                f"{rescued} calls; busiest 60 s {busiest} of {LIMIT}, "
                f"{sim.counters['rate_limited']} answered 429 ({waited})",
            )
        )
    # Is it the calls in flight? The same lane at more of them, over half as many calls.
    for concurrency in (32, 64):
        half = max(count // 2, 300)
        run, *_ = lane_run(
            bench, f"f18b-c{concurrency}", half, False, ARCHIVER_CONCURRENCY=str(concurrency)
        )
        rate = run.counts().get("rescued", 0) / run.seconds * 60
        bench.add(
            Row(
                "18B",
                f"rescue lane into SeaweedFS at concurrency {concurrency}, {half} x 2 KiB",
                rate,
                "calls/min",
                "per-call-details path (18A)",
                rate / got.per_call_rate if got.per_call_rate else None,
                note=f"{run.seconds:.0f} s; {run.cores()}; peak {run.peak_mib:.0f} MiB",
            )
        )
    # The top costs, from a shorter run of its own (py-spy's sampling in no measured row).
    spied = max(count // 2, 300)
    run, *_ = lane_run(bench, "f18b-spy", spied, False, spy=(3.0, 20))
    bench.add(
        Row(
            "18B",
            f"py-spy, 20 s of a rescue into SeaweedFS ({spied} calls)",
            len(run.profile),
            "lines",
            note=" | ".join(run.profile),
        )
    )


def row_c(bench: Bench) -> None:
    count = bench.n(3000, 300)
    size, bandwidth = 32 * 1024, 12 * 1024
    sim, state = fresh(bench, "f18c", max_url_validity=5)
    sids = set(add_calls(sim, count, size))
    sim.faults.bandwidth = bandwidth  # each download ~2.7 s: the backlog outlives its URLs
    destination = f"s3://{bench.bucket()}/bench"
    with SimulatorServer(sim) as server:
        env = lane_env(
            bench, sim, server, destination, state, ARCHIVER_RESCUE="on", ARCHIVER_ENRICH="never"
        )
        run = run_backfill(bench, env, state)
        requests = requests_since(sim, run.started_at)
        v3 = requests_since(sim, run.started_at, "v3")
    stored = recordings_stored(bench, destination)
    lost = len(sids - stored)
    counts = run.counts()
    bench.add(
        Row(
            "18C",
            f"lost to expiry: {count} calls, account allows 5 min URLs, "
            f"{size // 1024} KiB at {bandwidth // 1024} KiB/s each",
            lost,
            "calls",
            target="0",
            met=lost == 0,
            note=f"backlog took {run.seconds:.0f} s ({run.seconds / 300:.1f} x the validity); "
            f"{sim.counters['expired_refusals']} URLs refused as expired, "
            f"{run.plan().get('rescue_fallbacks')} rescues fell back to v3 ({v3} v3 requests); "
            f"outcomes {counts}; {requests} API requests; rc {run.returncode}",
        )
    )


def row_d(bench: Bench, got: Results) -> None:
    share = 50
    per_minute = LIMIT * share // 100
    windows = 1 if bench.scale < 1 else 2
    count = windows * per_minute + 1
    sim, state = fresh(bench, "f18d")
    add_calls(sim, count, SMALL)
    with SimulatorServer(sim) as server:
        env = lane_env(
            bench,
            sim,
            server,
            f"s3://{bench.bucket()}/bench",
            state,
            ARCHIVER_RESCUE="on",
            ARCHIVER_ENRICH="background",
            ARCHIVER_ENRICH_SHARE=str(share),
        )
        run = run_backfill(bench, env, state)
        busiest = sim.busiest_minute(since=run.started_at, kind="v3")
        v3 = requests_since(sim, run.started_at, "v3")
    archived = run.counts().get("archived", 0)
    spent = run.plan().get("enrichment", {}).get("api_requests")
    got.enrich_rate, got.enrich_share = archived / run.seconds * 60, per_minute
    bench.add(
        Row(
            "18D",
            f"enrichment at {share} % of {LIMIT}/min: busiest 60 s of v3 requests",
            busiest,
            "req/60s",
            target=f"<= {per_minute}",
            met=busiest <= per_minute,
            note=f"{v3} v3 requests in {run.seconds:.0f} s; {sim.counters['rate_limited']} "
            f"answered 429; the enrichment's own count {spent}",
        )
    )
    bench.add(
        Row(
            "18D",
            f"calls completed (rescued, then enriched), {count} x 2 KiB",
            got.enrich_rate,
            "calls/min",
            note=f"{archived}/{count} archived, outcomes {run.counts()}, rc {run.returncode}",
        )
    )


def row_p(bench: Bench, got: Results) -> None:
    """Six months at a 100/min share, from the measured rates."""
    calls = MONTHS_OF_CALLS
    listing = calls / 100
    api_hours = listing / SHARE / 60
    machine_hours = calls / got.rescue_rate / 60 if got.rescue_rate else float("inf")
    rescue_hours = max(api_hours, machine_hours)
    bound = "the machine (measured 18B rate)" if machine_hours > api_hours else "the API share"
    enrich_rate = got.enrich_rate or SHARE
    enrich_days = calls / enrich_rate / 60 / 24
    today_days = calls / (got.per_call_rate or LIMIT) / 60 / 24
    bench.add(
        Row(
            "18P",
            f"six months ({calls:,} calls): time to rescue every recording",
            rescue_hours,
            "hours",
            note=f"bound by {bound}: {listing:,.0f} listing requests at {SHARE}/min = "
            f"{api_hours:.1f} h; at the measured {got.rescue_rate:,.0f} rescues/min = "
            f"{machine_hours:.1f} h",
        )
    )
    bench.add(
        Row(
            "18P",
            f"then to complete every call (enrichment at {got.enrich_share or SHARE}/min)",
            enrich_days,
            "days",
            note=f"{calls:,} v3 requests at the measured {enrich_rate:.1f} calls/min",
        )
    )
    bench.add(
        Row(
            "18P",
            f"today's path: {calls:,} v3 requests at the whole {LIMIT}/min",
            today_days,
            "days",
            note=f"at the measured {got.per_call_rate:.1f} calls/min (18A), every request of "
            "the account's budget",
        )
    )


def steps(bench: Bench, lane_calls: int = 10_000) -> list[tuple[str, Any]]:
    """(name, callable) for run.py's main, in the order they run. 18B's ratio needs 18A's rate
    and 18P every rate: they run with it when selected."""
    got = Results()
    return [
        ("18A", lambda: row_a(bench, got)),
        ("18B", lambda: row_b(bench, got, lane_calls)),
        ("18C", lambda: row_c(bench)),
        ("18D", lambda: row_d(bench, got)),
        ("18P", lambda: row_p(bench, got)),
    ]
