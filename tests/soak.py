"""The soak: the long-running worker for N minutes against hostile traffic, then every check.

    python -m tests.soak --minutes 30 [--rate-limit N] [--report PATH] [--seed N] [--keep]

Real processes only: SeaweedFS (``tests/seaweed.py``) with a fresh bucket, the simulator over
real HTTP in a thread of this process (real clock), and ``python -m archiver run`` as a
subprocess with JSON logs and ``/metrics``. For the whole duration a call is added every 1-2.5 s
(active first, finished 8-12 s later, one recording of 16-64 KiB), with a mix: ~5 % whose call
details carry a malformed recording URL, ~3 % whose v1 item has an invalid ``Sid`` or
``DateCreated``, four calls stuck (two listed in progress forever, two over but processing
forever), and ~5 % API/download faults (500, 429, cut bodies, expired URLs).

"Good" calls are the plain ones and the bad-v1-item ones: the active poll finds the latter, so
they must be archived through v3 all the same, their v1 item skipped and reported. See
docs/testing.md ("Soak") for what is checked and how to read the report. Exit 0 when every check
passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from archiver.config import OPTIONS, load_settings
from archiver.errors import ConfigError
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS, free_port
from tests.support import exotel_env

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "soak"
GOOD, MALFORMED, BAD_V1 = "good", "malformed_url", "bad_v1_item"
STUCK_ACTIVE, STUCK_PROCESSING = "stuck_active", "stuck_processing"
ARCHIVABLE = (GOOD, BAD_V1)
STUCK_AT = {1: STUCK_ACTIVE, 2: STUCK_PROCESSING, 5: STUCK_ACTIVE, 6: STUCK_PROCESSING}
"""Call numbers fed as stuck: early, so they outgrow the stuck age within the run."""
MALFORMED_URLS = (
    "https://host:99999/r.mp3",  # port out of range
    "https://a..b/r.mp3",  # empty host label
    f"https://{'a' * 64}.example/r.mp3",  # a label over 63 characters
    "https://" + ".".join(["b" * 63] * 5) + "/r.mp3",  # a host name over 253 characters
    "https://[::1/r.mp3",  # an unclosed IPv6 bracket
    "https://host:port/r.mp3",  # a port that is not a number
)
SKIPPED_METRIC = "exotel_archiver_skipped_items_total"
STUCK_METRIC = "exotel_archiver_stuck_calls_now"
DONE = ("archived", "already_archived", "no_recording", "failed")
"""Ledger outcomes that end a call's tracking: a stuck call must have none of them."""


@dataclass
class Fed:
    sid: str
    kind: str
    added: float
    """When it was fed (monotonic); once the run is over, its age at the last scrape."""
    finish_at: float | None
    hostile: str = ""
    """The malformed URL, or the v1 field patched, or the patched Sid value."""
    finished: float | None = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class SoakReport:
    minutes: float
    seed: int
    duration_s: float = 0.0
    fed: dict[str, int] = field(default_factory=dict)
    archived: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_items: float | None = None
    stuck_calls: float | None = None
    stuck_after_s: float | None = None
    rss_start_mib: float | None = None
    rss_end_mib: float | None = None
    rss_peak_mib: float | None = None
    api_requests: int = 0
    busiest_minute: int = 0
    rate_limit: int = 0
    exit_code: int | None = None
    stop_seconds: float | None = None
    idle_wait_s: float = 0.0
    """Seconds from the end of the feed until the worker had finished what it could."""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}

    def text(self) -> str:
        def mib(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} MiB"

        def shown(v: float | None) -> str:
            return "metric absent" if v is None else f"{v:g}"

        lines = [
            f"soak: {self.minutes:g} min requested, {self.duration_s:.0f} s run, seed {self.seed}",
            "calls fed: " + ", ".join(f"{k} {v}" for k, v in self.fed.items()),
            f"archived: {self.archived}; failed by reason: "
            + (", ".join(f"{k} {v}" for k, v in self.failed_by_reason.items()) or "none"),
            f"skipped v1 items ({SKIPPED_METRIC}): {shown(self.skipped_items)}",
            f"stuck calls ({STUCK_METRIC}): {shown(self.stuck_calls)}; stuck age "
            + ("not available" if self.stuck_after_s is None else f"{self.stuck_after_s:g} s"),
            f"RSS: start {mib(self.rss_start_mib)}, end {mib(self.rss_end_mib)}, "
            f"peak {mib(self.rss_peak_mib)}",
            f"API: {self.api_requests} requests, busiest minute {self.busiest_minute} "
            f"(budget {self.rate_limit}/min)",
            f"worker exit code: {self.exit_code}"
            + ("" if self.stop_seconds is None else f", {self.stop_seconds:.1f} s after SIGTERM"),
        ]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append("PASS" if self.ok else "FAIL: " + ", ".join(c.name for c in self.failed or []))
        return "\n".join(lines)


# --- the worker's environment ----------------------------------------------------------------


def stuck_setting(base: dict[str, str], wanted: float) -> tuple[dict[str, str], float | None]:
    """The stuck-age option (an ``ARCHIVER_*STUCK*`` variable) set to about ``wanted`` seconds,
    and the age it gives in seconds; ({}, None) when this archiver has no such option. The unit
    is found by loading the settings with two values and seeing which daemon field moves."""
    option = next((o for o in OPTIONS if "STUCK" in o.env.upper()), None)
    if option is None:
        return {}, None

    def daemon_with(value: float) -> dict[str, Any]:
        text = str(int(value)) if option.kind == "int" else f"{value:g}"
        return dataclasses.asdict(load_settings(env={**base, option.env: text}).daemon)

    try:
        low = max(float(option.minimum or 0), 1.0)
        one, two = daemon_with(low), daemon_with(low * 2)
        moved = [k for k in one if one[k] != two[k]]
        if not moved:
            return {}, None
        scale = float(two[moved[0]] - one[moved[0]]) / low
        value = max(wanted / scale, float(option.minimum or 0))
        if option.kind == "int":
            value = float(math.ceil(value))
        return {option.env: f"{value:g}"}, float(daemon_with(value)[moved[0]])
    except ConfigError:
        return {}, None


def worker_env(
    sim: Simulator, base_url: str, seaweed: SeaweedFS, bucket: str, work: Path, minutes: float
) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "NOTIFY_", "ARCHIVER_", "EXOTEL_", "PYTHONPATH"))
    }
    sweep_minutes = 0.5 if minutes <= 5 else 3.0
    return {
        **inherited,
        **seaweed.env(),
        **exotel_env(sim, base_url, f"s3://{bucket}/{PREFIX}", work / "state"),
        "PYTHONPATH": str(ROOT),
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        "ARCHIVER_LOG_FORMAT": "json",
        "ARCHIVER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "ARCHIVER_POLL_INTERVAL": "3",
        "ARCHIVER_RECHECK_INTERVAL": "10",
        "ARCHIVER_SWEEP_INTERVAL": f"{sweep_minutes:g}",
        "ARCHIVER_SWEEP_LOOKBACK": "1",
        "ARCHIVER_RECORDING_GRACE": "0",
        "ARCHIVER_SHUTDOWN_GRACE": "5",
        "ARCHIVER_MAX_WAIT": "5",
    }


# --- observing -------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def scrape(address: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def metric(text: str | None, name: str) -> float | None:
    """The sum of every sample of ``name`` (any labels); None when the metric is absent."""
    if text is None:
        return None
    values = [
        float(m.group(1))
        for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    ]
    return sum(values) if values else None


def ledger_calls(state: Path) -> dict[str, tuple[str, str]]:
    """call SID -> (outcome, detail), read beside the worker (read-only, as verify does)."""
    path = state / "ledger.sqlite3"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT call_sid, outcome, COALESCE(detail, '') FROM calls").fetchall()
        return {str(sid): (str(outcome), str(detail)) for sid, outcome, detail in rows}
    except sqlite3.Error:
        return {}
    finally:
        db.close()


# --- feeding ---------------------------------------------------------------------------------


def feed_one(
    sim: Simulator, rng: random.Random, n: int, now: float, without: frozenset[str]
) -> Fed:
    if n in STUCK_AT:
        kind = STUCK_AT[n]
    elif n % 20 == 9:
        kind = MALFORMED
    elif n % 33 == 14:
        kind = BAD_V1
    else:
        kind = GOOD
    if kind in without:
        kind = GOOD
    call = sim.add_call(
        state="active", recordings=1, size=rng.randint(16, 64) * 1024, created=sim.now()
    )
    fed = Fed(call.sid, kind, now, None if kind == STUCK_ACTIVE else now + rng.uniform(8, 12))
    if kind == MALFORMED:
        fed.hostile = MALFORMED_URLS[(n // 20) % len(MALFORMED_URLS)]
        sim.faults.recording_url_for[call.sid] = fed.hostile
    elif kind == BAD_V1:
        if (n // 33) % 2:
            fed.hostile = "DateCreated"
            sim.faults.bulk_item_patches[call.sid] = {"DateCreated": "not a date"}
        else:
            fed.hostile = f"bad sid!{call.sid[:12]}"
            sim.faults.bulk_item_patches[call.sid] = {"Sid": fed.hostile}
        fed.finish_at = now + 14  # long enough on the active list to be seen there
    return fed


def finish(sim: Simulator, fed: Fed, now: float) -> None:
    if fed.kind == STUCK_PROCESSING:  # over, but v3 says active for a year
        call = sim.calls[fed.sid]
        call.end = min(call.end, sim.now() - timedelta(seconds=2))
        call.start = min(call.start, call.end)
        call.ready_at = sim.now() + timedelta(days=365)
    else:
        sim.finish(fed.sid)
    fed.finished = now


# --- the run ---------------------------------------------------------------------------------


def run_soak(
    minutes: float = 30.0,
    *,
    rate_limit: int | None = None,
    seed: int = 15,
    seaweed: SeaweedFS | None = None,
    workdir: Path | None = None,
    without: tuple[str, ...] = (),
    say: Any = None,
) -> SoakReport:
    """Run the soak and return its report (``report.ok``: every check passed). ``seaweed``: an
    already started server to create the bucket in (the test suite's); otherwise one is started
    and stopped here. ``workdir``: where the worker's state, logs and last metrics go (kept);
    by default a temporary directory, removed at the end. ``without``: kinds of call not fed
    (plain good calls instead), to look at one problem alone. ``say``: a function given
    progress lines (None: quiet)."""
    say = say or (lambda _line: None)
    report = SoakReport(minutes=minutes, seed=seed)
    work = workdir or Path(tempfile.mkdtemp(prefix="exotel-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    own_seaweed = seaweed is None
    if seaweed is None:
        seaweed = SeaweedFS(work / "seaweed")
        seaweed.start()
    bucket = "soak-" + secrets.token_hex(4)
    seaweed.client().create_bucket(Bucket=bucket)
    sim = Simulator(
        api_key="soak-key-" + secrets.token_hex(4),
        api_token="soak-token-" + secrets.token_hex(12),
        seed=seed,
        rate_limit_per_minute=200,  # Exotel's per-account limit
    )
    faults = sim.faults
    faults.api_500_rate, faults.api_429_rate = 0.015, 0.01
    faults.cut_rate, faults.expired_rate = 0.015, 0.01
    proc: subprocess.Popen[bytes] | None = None
    try:
        with SimulatorServer(sim) as server:
            env = worker_env(sim, server.base_url, seaweed, bucket, work, minutes)
            duration = minutes * 60.0
            stuck_env, report.stuck_after_s = stuck_setting(env, min(60.0, duration / 4))
            env.update(stuck_env)
            if rate_limit is not None:
                env["EXOTEL_RATE_LIMIT"] = str(rate_limit)
            report.rate_limit = load_settings(env=env).exotel.rate_limit
            proc, fed = _soak(sim, env, work, duration, report, frozenset(without), say)
            _check(sim, seaweed, bucket, env, work, report, fed)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if own_seaweed:
            seaweed.stop()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _soak(
    sim: Simulator,
    env: dict[str, str],
    work: Path,
    duration: float,
    report: SoakReport,
    without: frozenset[str],
    say: Any,
) -> tuple[subprocess.Popen[bytes], list[Fed]]:
    rng = random.Random(report.seed)
    address = env["ARCHIVER_METRICS_LISTEN"]
    state = work / "state"
    stdout, stderr = (work / "worker.stdout").open("wb"), (work / "worker.stderr").open("wb")
    started = time.monotonic()
    since = sim.clock()
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"], env=env, cwd=ROOT, stdout=stdout, stderr=stderr
    )
    stdout.close()
    stderr.close()
    fed: list[Fed] = []
    warmup = min(max(30.0, duration * 0.1), duration / 2)
    samples: list[tuple[float, float]] = []
    last_sample = last_say = 0.0
    next_add, n = started + 2.0, 0

    def observe(now: float) -> None:
        nonlocal last_sample
        if now - last_sample >= 3.0:
            last_sample = now
            rss = rss_mib(proc.pid)
            if rss is not None:
                samples.append((now - started, rss))
            text = scrape(address)
            if text is not None:
                (work / "metrics.last").write_text(text)

    while time.monotonic() - started < duration and proc.poll() is None:
        now = time.monotonic()
        if now >= next_add:
            n += 1
            fed.append(feed_one(sim, rng, n, now, without))
            next_add = now + rng.uniform(1.0, 2.5)
        for f in fed:
            if f.finished is None and f.finish_at is not None and now >= f.finish_at:
                finish(sim, f, now)
        observe(now)
        if now - last_say >= 60:
            last_say = now
            rss = f"{samples[-1][1]:.1f} MiB" if samples else "n/a"
            say(f"{now - started:.0f} s: {len(fed)} calls fed, worker RSS {rss}")
        time.sleep(0.2)
    feed_end = time.monotonic()
    report.fed = dict(Counter(f.kind for f in fed))

    def sweeps() -> float:  # done or failed: either way the v1 listing was read
        text = scrape(address)
        return sum(
            metric(text, f"exotel_archiver_{m}_total") or 0 for m in ("sweeps", "sweep_errors")
        )

    # Idle: the calls fed last have ended, every good call is archived, every malformed one has
    # failed, and a whole sweep has read the listing since the last call ended (the bad v1 items
    # in it): two sweeps done after that moment, as the first may have begun before it.
    ended_at: float | None = None  # sweeps done when the last fed call had ended
    bound = 3 * float(env["ARCHIVER_SWEEP_INTERVAL"]) * 60 + 60
    while proc.poll() is None and time.monotonic() - feed_end < bound:
        now = time.monotonic()
        for f in fed:
            if f.finished is None and f.finish_at is not None and now >= f.finish_at:
                finish(sim, f, now)
        if ended_at is None and all(f.finished is not None or f.finish_at is None for f in fed):
            ended_at = sweeps()
        calls = ledger_calls(state)
        if (
            all(calls.get(f.sid, ("",))[0] == "archived" for f in fed if f.kind in ARCHIVABLE)
            and all(calls.get(f.sid, ("",))[0] == "failed" for f in fed if f.kind == MALFORMED)
            and ended_at is not None
            and sweeps() >= ended_at + 2
        ):
            break
        observe(now)
        time.sleep(1.0)
    report.idle_wait_s = time.monotonic() - feed_end
    stopping = time.monotonic()
    observe(stopping + 3.0)
    after = [rss for t, rss in samples if t >= warmup]
    if after:
        report.rss_start_mib, report.rss_end_mib = after[0], after[-1]
    report.rss_peak_mib = max((rss for _t, rss in samples), default=None)
    report.api_requests = sum(1 for t in sim.api_log if t >= since)
    report.busiest_minute = sim.busiest_minute(since)
    if proc.poll() is None:
        stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        report.stop_seconds = time.monotonic() - stop
    else:
        report.check(
            "worker kept running",
            False,
            f"the worker exited with {proc.returncode} after {feed_end - started:.0f} s, "
            "before it was told to stop",
        )
    report.exit_code = proc.poll()
    report.duration_s = time.monotonic() - started
    for f in fed:  # from here on: the call's age when the worker was last scraped
        f.added = stopping - f.added
    return proc, fed


# --- the checks ------------------------------------------------------------------------------


def _few(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


@dataclass
class Seen:
    """What the run left behind, read once for the checks."""

    work: Path
    fed: list[Fed]
    metrics: str | None
    calls: dict[str, tuple[str, str]]
    stderr: str
    stdout: str
    messages: list[str]
    """Each stderr line's message (and error text); the raw line when it is not JSON."""
    not_json: list[str]

    def of(self, *kinds: str) -> list[Fed]:
        return [f for f in self.fed if f.kind in kinds]

    def outcome(self, sid: str) -> str:
        return self.calls.get(sid, ("nothing", ""))[0]


def _seen(work: Path, fed: list[Fed]) -> Seen:
    last = work / "metrics.last"
    stderr = (work / "worker.stderr").read_text(errors="replace")
    messages, not_json = [], []
    for line in filter(str.strip, stderr.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            messages.append(f"{event.get('message', '')} {event.get('error', '')}")
        else:
            messages.append(line)
            not_json.append(line[:160])
    return Seen(
        work,
        fed,
        last.read_text() if last.exists() else None,
        ledger_calls(work / "state"),
        stderr,
        (work / "worker.stdout").read_text(errors="replace"),
        messages,
        not_json,
    )


def _check(
    sim: Simulator,
    seaweed: SeaweedFS,
    bucket: str,
    env: dict[str, str],
    work: Path,
    report: SoakReport,
    fed: list[Fed],
) -> None:
    seen = _seen(work, fed)
    if report.stop_seconds is not None:
        report.check(
            "exit 0, promptly after SIGTERM",
            report.exit_code == 0 and report.stop_seconds <= 15,
            f"exit code {report.exit_code}, {report.stop_seconds:.1f} s after SIGTERM"
            + (" (did not exit in 30 s)" if report.exit_code is None else ""),
        )
    else:  # it had died: say of what
        tail = [m for m in seen.messages if m.strip()][-2:]
        report.checks[-1].detail += "; last log lines: " + _few(tail, 2)
    _check_archive(sim, seaweed, bucket, env, report, seen)
    _check_hostile(report, seen)
    _check_health(sim, seaweed, report, seen)


def _check_archive(
    sim: Simulator,
    seaweed: SeaweedFS,
    bucket: str,
    env: dict[str, str],
    report: SoakReport,
    seen: Seen,
) -> None:
    """Every good call archived exactly once, byte for byte, one manifest entry per object;
    nothing for the others; ``archiver verify`` agrees."""
    client = seaweed.client()
    keys: dict[str, list[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        for obj in page.get("Contents", []):
            if "/recording-" in obj["Key"]:
                keys.setdefault(obj["Key"].split("/")[-2], []).append(obj["Key"])
    manifest = read_manifest(seen.work / "state" / "manifest.jsonl")
    entries = [e for e in manifest if e.get("kind") == "recording"]
    per_key = Counter(f"{PREFIX}/{e.get('key')}" for e in entries)
    problems: list[str] = []
    good = seen.of(*ARCHIVABLE)
    for f in good:
        found = keys.get(f.sid, [])
        if len(found) != 1:
            problems.append(f"{f.kind} call {f.sid}: {len(found)} recording object(s)")
        elif client.get_object(Bucket=bucket, Key=found[0])["Body"].read() != (
            sim.recording_bytes(f.sid, 1)
        ):
            problems.append(f"{f.kind} call {f.sid}: the object's bytes differ from the source")
        elif per_key[found[0]] != 1:
            problems.append(f"{f.kind} call {f.sid}: {per_key[found[0]]} manifest entries")
        elif seen.outcome(f.sid) != "archived":
            problems.append(f"{f.kind} call {f.sid}: the ledger says {seen.outcome(f.sid)}")
    report.archived = len(good) - len(problems)
    report.check(
        "every good call archived exactly once",
        not problems,
        f"{report.archived} of {len(good)} good calls (bad v1 items included)"
        + (f"; {_few(problems)}" if problems else ""),
    )
    named = {e.get("call_sid") for e in entries}
    stray = [
        f"{f.kind} call {f.sid}"
        for f in seen.fed
        if f.kind not in ARCHIVABLE and (f.sid in keys or f.sid in named)
    ]
    report.check("nothing stored for a bad or stuck call", not stray, _few(stray) or "none")
    verify = subprocess.run(
        [sys.executable, "-m", "archiver", "verify"],
        env={**env, "ARCHIVER_LOG_FORMAT": "text"},
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    said = verify.stderr.decode(errors="replace").splitlines()[-3:]
    report.check(
        "archiver verify exits 0",
        verify.returncode == 0,
        f"exit {verify.returncode}" + ("" if verify.returncode == 0 else ": " + _few(said, 3)),
    )


def _check_hostile(report: SoakReport, seen: Seen) -> None:
    """Malformed URLs failed their call; bad v1 items skipped and reported; stuck calls kept
    and reported."""
    malformed = seen.of(MALFORMED)
    bad = [
        f"call {f.sid} ({f.hostile}): the ledger says {seen.outcome(f.sid)}"
        + ("" if seen.outcome(f.sid) != "failed" else " without a reason")
        for f in malformed
        if seen.outcome(f.sid) != "failed" or not seen.calls[f.sid][1].strip()
    ]
    pattern = r'^exotel_archiver_failures_total\{reason="([^"]*)"\} (\S+)$'
    for m in re.finditer(pattern, seen.metrics or "", re.M):
        report.failed_by_reason[m.group(1)] = int(float(m.group(2)))
    report.check(
        "every malformed-URL call failed with its reason",
        not bad,
        f"{len(malformed) - len(bad)} of {len(malformed)}" + (f"; {_few(bad)}" if bad else ""),
    )

    report.skipped_items = metric(seen.metrics, SKIPPED_METRIC)
    bad_v1 = seen.of(BAD_V1)
    unnamed = [
        f"call {f.sid} ({f.hostile})"
        for f in bad_v1
        # a bad Sid is named by its value; a bad DateCreated by the call's own SID
        if not any(
            "skip" in m.lower() and (f.hostile if f.hostile.startswith("bad sid!") else f.sid) in m
            for m in seen.messages
        )
    ]
    if report.skipped_items is None:
        detail, ok = f"metric absent: /metrics has no {SKIPPED_METRIC}", False
    else:
        ok = report.skipped_items >= len(bad_v1) and not unnamed
        detail = f"{report.skipped_items:g} counted for {len(bad_v1)} bad item(s)"
        if unnamed:
            detail += "; no log line names the skipped item of " + _few(unnamed)
    report.check("bad v1 items skipped and reported", ok, detail)
    sweeps = metric(seen.metrics, "exotel_archiver_sweeps_total") or 0
    errors = metric(seen.metrics, "exotel_archiver_sweep_errors_total") or 0
    report.check(
        "every sweep completed",
        sweeps >= 1 and errors == 0,
        f"{sweeps:g} sweep(s) done, {errors:g} failed",
    )

    stuck = seen.of(STUCK_ACTIVE, STUCK_PROCESSING)
    dropped = [
        f"{f.kind} call {f.sid}: the ledger says {seen.outcome(f.sid)}"
        for f in stuck
        if seen.outcome(f.sid) in ("nothing", *DONE)
    ]
    report.check("stuck calls still tracked", not dropped, _few(dropped) or f"{len(stuck)} tracked")
    report.stuck_calls = metric(seen.metrics, STUCK_METRIC)
    old = [f for f in stuck if f.added > (report.stuck_after_s or 0) + 15]
    silent = [
        f"{f.kind} call {f.sid}"
        for f in old
        if not any("stuck" in m.lower() and f.sid in m for m in seen.messages)
    ]
    if report.stuck_after_s is None:
        ok, detail = False, "not available: archiver.config has no ARCHIVER_*STUCK* option"
    elif report.stuck_calls is None:
        ok, detail = False, f"metric absent: /metrics has no {STUCK_METRIC}"
    elif not old:
        ok, detail = True, f"not checked: no stuck call reached {report.stuck_after_s:g} s + 15 s"
    else:
        ok = report.stuck_calls >= len(old) and not silent
        detail = f"gauge {report.stuck_calls:g} for {len(old)} call(s) past the stuck age"
        if silent:
            detail += "; no log line names " + _few(silent)
    report.check("stuck calls reported", ok, detail)


def _check_health(sim: Simulator, seaweed: SeaweedFS, report: SoakReport, seen: Seen) -> None:
    """Memory, the API budget, the logs' form, secrets."""
    if report.rss_start_mib is None or report.rss_end_mib is None:
        report.check("RSS flat", False, "no RSS sample after the warm-up")
    else:
        limit = report.rss_start_mib * 1.25 + 8
        report.check(
            "RSS flat",
            report.rss_end_mib <= limit,
            f"start {report.rss_start_mib:.1f} MiB, end {report.rss_end_mib:.1f} MiB "
            f"(limit {limit:.1f})",
        )
    report.check(
        "API requests within budget",
        report.busiest_minute <= report.rate_limit,
        f"busiest minute {report.busiest_minute}, budget {report.rate_limit}/min",
    )
    report.check(
        "every stderr line is JSON",
        not seen.not_json,
        f"{len(seen.messages)} lines"
        + (f", {len(seen.not_json)} not: {_few(seen.not_json, 2)}" if seen.not_json else ""),
    )
    outputs = {"stderr": seen.stderr, "stdout": seen.stdout}
    traced = [name for name, text in outputs.items() if "Traceback" in text]
    report.check("no traceback", not traced, ", ".join(traced) or "none")
    signatures = {
        m.group(1)
        for url in list(sim.issued_urls)
        for m in re.finditer(r"X-Amz-Signature=(\w+)", url)
    }
    literal = {
        "API token": sim.api_token,
        "URL access key": sim.url_access_key,
        "AWS secret key": seaweed.secret_key,
    }
    places = [(name, text.encode()) for name, text in outputs.items()]
    places += [
        (str(p.relative_to(seen.work)), p.read_bytes())
        for p in [seen.work / "metrics.last", *(seen.work / "state").rglob("*")]
        if p.is_file()
    ]
    leaks: list[str] = []
    for where, data in places:
        found = [name for name, secret in literal.items() if secret.encode() in data]
        if {t.decode() for t in re.findall(rb"[0-9a-f]{64}", data)} & signatures:
            found.append("an X-Amz-Signature")
        leaks += [f"{name} in {where}" for name in found]
    report.check(
        "no secret in the logs, metrics or state directory",
        not leaks,
        _few(leaks) or f"{len(places)} files, {len(signatures)} signatures searched",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to feed calls")
    parser.add_argument("--rate-limit", type=int, help="EXOTEL_RATE_LIMIT for the worker")
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    parser.add_argument("--seed", type=int, default=15, help="seed of the mix and the faults")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=(MALFORMED, BAD_V1, STUCK_ACTIVE, STUCK_PROCESSING),
        help="feed no call of this kind (repeatable): to look at one problem alone",
    )
    args = parser.parse_args(argv)
    work = None
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="exotel-soak-"))
        print(f"work directory (kept): {work}", file=sys.stderr)
    report = run_soak(
        args.minutes,
        rate_limit=args.rate_limit,
        seed=args.seed,
        workdir=work,
        without=tuple(args.without),
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(report.text())
    if args.report:
        args.report.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
