"""What every figure of the benchmark shares: rows and their printing, the child archiver's run
(time, CPU and peak memory from the kernel's accounting), the simulator's calls and the plain
loops used as baselines. The figures live in run.py (figures 1-7) and issue17.py (the bare
script, the large recording against a parallel multipart upload, and the sweeps)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import HWM_WRAPPER, exotel_env

MiB = 1024 * 1024
RATE = "10000"
"""EXOTEL_RATE_LIMIT for the throughput figures: the simulator has no limit, and at Exotel's
200/min the API, not the transfer, would be what is measured (figure 3 measures the limiter)."""


@dataclass
class Row:
    figure: str
    measure: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Bench:
    weed: SeaweedFS
    work: Path
    scale: float
    selected: set[str] = field(default_factory=set)
    rows: list[Row] = field(default_factory=list)
    buckets: int = 0
    saved: Callable[[], None] = lambda: None
    """Called after every row (writes the JSON so far)."""

    @property
    def weed_pid(self) -> int:
        assert self.weed.process is not None
        return self.weed.process.pid

    def n(self, count: int, minimum: int = 1) -> int:
        return max(minimum, int(count * self.scale))

    def bucket(self) -> str:
        self.buckets += 1
        name = f"bench-{self.buckets}"
        self.weed.client().create_bucket(Bucket=name)
        return name

    def add(self, row: Row) -> None:
        self.rows.append(row)
        shown = f"{row.value:,.2f} {row.unit}"
        extra = f"  ratio {row.ratio:.2f} vs {row.baseline}" if row.ratio is not None else ""
        verdict = "" if row.met is None else ("  MET" if row.met else "  MISSED")
        print(f"  [{row.figure}] {row.measure}: {shown}{extra}{verdict}  {row.note}", flush=True)
        self.saved()


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    """The archiver process's CPU (user + system)."""
    max_rss_mib: float
    """``wait4``'s ``ru_maxrss``: may carry the parent's high-water mark over ``exec``."""
    summary: dict[str, Any]
    returncode: int
    store_cpu: float = 0.0
    """SeaweedFS's CPU seconds during the run."""
    started_at: float = 0.0
    """Wall-clock time the archiving process started (after the dry run's listing)."""
    source_cpu: float = 0.0
    """This process's CPU seconds during the run: the simulator's threads."""
    peak_mib: float = 0.0
    """The archiver process's own ``VmHWM`` at its exit (0 if it did not get to write it)."""

    def cores(self) -> str:
        each = (self.cpu_seconds, self.store_cpu, self.source_cpu)
        a, b, c = (x / self.seconds for x in each)
        return f"archiver {a:.2f}, SeaweedFS {b:.2f}, simulator {c:.2f} of {os.cpu_count()} cores"


def bench_day() -> str:
    """The day the benchmark's calls are made: two days ago (IST), a range that has settled
    (``listing_settle``), so the dry run's listing is saved and the timed run reuses it."""
    return (datetime.now(IST).date() - timedelta(days=2)).isoformat()


def add_calls(sim: Simulator, count: int, size: int) -> list[str]:
    """``count`` terminal calls of one ``size``-byte recording each, made on ``bench_day()``."""
    day = datetime.now(IST).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    step = 86_000 / max(count, 1)
    return [
        sim.add_call(recordings=1, size=size, created=day + timedelta(seconds=i * step)).sid
        for i in range(count)
    ]


def archiver_env(
    bench: Bench, sim: Simulator, server: SimulatorServer, bucket: str, state: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(bench.weed.env())
    env.update(exotel_env(sim, server.base_url, f"s3://{bucket}/bench", state))
    env.update({"EXOTEL_RATE_LIMIT": RATE, "ARCHIVER_LOG_FORMAT": "json", **extra})
    return env


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def backfill(bench: Bench, env: dict[str, str], state: Path) -> Run:
    """List first (a dry run saves the listing), then time the archiving itself: a child
    process, through the VmHWM wrapper so that its own peak is known too."""
    day = bench_day()
    args = ["backfill", "--range", f"{day}..{day}"]
    dry = [sys.executable, "-m", "archiver", *args, "--dry-run"]
    subprocess.run(dry, env=env, check=True, capture_output=True)
    report, hwm = state / "bench-report.json", state / "bench-hwm"
    hwm.unlink(missing_ok=True)
    wrapped = [sys.executable, "-c", HWM_WRAPPER, str(hwm), *args, "--report", str(report)]
    with (state / "bench.log").open("wb") as log:
        store_before, source_before = process_cpu(bench.weed_pid), self_cpu()
        started, started_at = time.perf_counter(), time.time()
        proc = subprocess.Popen(wrapped, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        store_cpu = process_cpu(bench.weed_pid) - store_before
        source_cpu = self_cpu() - source_before
    proc.returncode = os.waitstatus_to_exitcode(status)
    summary = json.loads(report.read_text()) if report.exists() else {}
    cpu = usage.ru_utime + usage.ru_stime
    return Run(
        peak_mib=int(hwm.read_text()) / 1024 if hwm.exists() else 0.0,
        seconds=seconds,
        cpu_seconds=cpu,
        max_rss_mib=usage.ru_maxrss / 1024,
        summary=summary,
        returncode=proc.returncode,
        store_cpu=store_cpu,
        source_cpu=source_cpu,
        started_at=started_at,
    )


def archived(run: Run) -> int:
    return int(run.summary.get("result", {}).get("counts", {}).get("archived", 0))


@dataclass
class Loop:
    seconds: float
    store_cpu: float
    """SeaweedFS's CPU seconds during the loop."""
    client_cpu: float
    """This process's CPU seconds during the loop (boto3)."""


def put_loop(bench: Bench, count: int, size: int, concurrency: int) -> Loop:
    """PUT ``count`` objects of ``size`` bytes straight into SeaweedFS: time and CPU."""
    client, bucket, body = bench.weed.client(), bench.bucket(), os.urandom(size)

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"limit/{i:08d}", Body=body)

    store_before, client_before = process_cpu(bench.weed_pid), self_cpu()
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(put, range(count)))
    return Loop(
        time.perf_counter() - started,
        process_cpu(bench.weed_pid) - store_before,
        self_cpu() - client_before,
    )


def source_loop(
    sim: Simulator, server: SimulatorServer, sids: list[str], concurrency: int
) -> float:
    """Seconds to fetch the call details and download every recording, storing nothing: what
    the source alone allows."""
    import asyncio

    import aiohttp

    basic = base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}

    async def fetch_all() -> None:
        queue = list(sids)
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                while queue:
                    sid = queue.pop()
                    url = f"{server.base_url}/v3/accounts/{sim.account_sid}/calls/{sid}"
                    async with session.get(url, headers=auth) as answer:
                        details = (await answer.json())["response"]["call_details"]
                    for rec in details["recordings"] or []:
                        async with session.get(rec["url"]) as answer:
                            async for _chunk in answer.content.iter_chunked(256 * 1024):
                                pass

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(fetch_all())
    return time.perf_counter() - started


def naive(bench: Bench, sim: Simulator, server: SimulatorServer, sids: list[str]) -> float:
    """What the API docs suggest: details, GET into memory, put_object — one call at a time."""
    client, bucket = bench.weed.client(), bench.bucket()
    auth = base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()
    started = time.perf_counter()
    for sid in sids:
        url = f"{server.base_url}/v3/accounts/{sim.account_sid}/calls/{sid}"
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request) as answer:
            details = json.loads(answer.read())["response"]["call_details"]
        for n, rec in enumerate(details["recordings"] or [], 1):
            with urllib.request.urlopen(rec["url"]) as answer:
                data = answer.read()
            client.put_object(Bucket=bucket, Key=f"naive/{sid}/{n}.mp3", Body=data)
    return time.perf_counter() - started


def fresh(bench: Bench, name: str, **sim_args: Any) -> tuple[Simulator, Path]:
    state = bench.work / name
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    return Simulator(seed=11, **sim_args), state


def job_peak(env: dict[str, str], args: list[str], hwm: Path) -> tuple[float, float, int]:
    """Run ``exotel-archiver ARGS`` as its own process: seconds, peak RSS (MiB), exit code.

    The peak is the process's own ``VmHWM`` (read at its exit), not ``wait4``'s ``ru_maxrss``:
    Linux carries the parent's high-water mark over ``exec`` into the child's (a parent that
    built a 100 000-object archive would be measured instead of the job)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", HWM_WRAPPER, str(hwm), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.perf_counter() - started
    return seconds, int(hwm.read_text()) / 1024, proc.returncode
