"""Hostile recording URLs fail their call, never the run (issue 15, item 1).

A few hundred malformed URLs, generated deterministically (seeded patterns x variations), go
through the URL layer one by one: each is refused up front with a typed error and a reason
(``bad_url`` or ``unsafe_address``), before any DNS lookup or connection, and the message
carries no signature. A sample of them, on calls of the simulator mixed with good calls and with
S3 answers refusing some objects (FaultyS3Proxy), goes through ``exotel-archiver archive``
(click) and ``exotel-archiver run`` (a real process, stopped with SIGTERM): every bad call is
failed with its reason, every good one archived once, byte for byte, no traceback, no secret.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from click.testing import CliRunner

from archiver.addresses import AddressPolicy, GuardedResolver
from archiver.cli import main
from archiver.errors import ExotelProtocolError, UnsafeAddress, error_reason
from archiver.exotel.models import IST, parse_call_details
from archiver.expiry import url_deadline
from archiver.ledger import Ledger
from archiver.manifest import read_manifest
from archiver.redact import strip_url
from archiver.simulator import Simulator, SimulatorServer
from archiver.transfer import Partial, download
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import NoDns, exotel_env, free_port, scrape

PREFIX = "hostile"
SIG_VALUE, CRED_VALUE = "f00dfacecafe1515", "AKIAHOSTILE15"
SIGNED = f"X-Amz-Signature={SIG_VALUE}&X-Amz-Credential={CRED_VALUE}"
SECRETS = (SIG_VALUE, CRED_VALUE)
BAD, UNSAFE = "bad_url", "unsafe_address"


# --- the hostile URLs --------------------------------------------------------------------------


def _long_host(rng: random.Random) -> str:
    labels: list[str] = []
    while sum(len(x) + 1 for x in labels) <= 254:
        labels.append("h" * rng.randint(40, 63))
    return ".".join(labels)


def _insert(rng: random.Random, url: str, text: str) -> str:
    at = rng.randint(len("https://"), len(url))
    return url[:at] + text + url[at:]


GOOD = "https://recordings.example.com/calls/r.mp3"
PATTERNS: dict[str, Any] = {
    "port out of range": lambda r: (
        f"https://rec{r.randint(0, 99)}.example.com:"
        f"{r.choice([65536, 65537, 99999, 100000, 123456789, 10**20])}/r.mp3",
        BAD,
    ),
    "port not a number": lambda r: (
        f"https://rec.example.com:{r.choice(['-1', 'abc', '8o', '0x50', '+80', '١٢٣', '8_0'])}/r",
        BAD,
    ),
    "empty label": lambda r: (
        f"https://{r.choice(['a..b', '.example.com', 'example..com', '..', 'example.com..'])}"
        f"{r.choice(['', ':443'])}/r.mp3",
        BAD,
    ),
    "label over 63": lambda r: (f"https://{'a' * r.randint(64, 400)}.example.com/r.mp3", BAD),
    "host over 253": lambda r: (f"https://{_long_host(r)}/r.mp3", BAD),
    "idna": lambda r: (
        "https://"
        + r.choice(
            [
                "\u2488.com",
                "exa\udcffmple.com",
                "a\u200b.com",
                "\u00ad.com",
                "ex\u3002\u3002ample.com",
                "\ufffd.com",
                "x\u0301\u0301\u0301" * 30 + ".com",
            ]
        )
        + "/r.mp3",
        BAD,
    ),
    "brackets": lambda r: (
        f"https://{r.choice(['[::1', '[zz::1]', '[::1]]', '[fe80::1%25eth0', '[]', '[::1]x'])}/r",
        BAD,
    ),
    "space or control": lambda r: (
        _insert(r, GOOD, r.choice([" ", "\t", "\n", "\r\nX-Injected: 1\r\n", "\x00", "\x7f"])),
        BAD,
    ),
    "no host": lambda r: (
        r.choice(
            [
                *("https://:443/r.mp3", "https:///r.mp3", "https://", "http:", "https:r.mp3"),
                *("https://?x=1", "https://#f", "http://:/"),
            ]
        ),
        BAD,
    ),
    "user info": lambda r: (
        f"https://{r.choice(['user:pw', 'user', '', ':', 'a%40b'])}@recordings.example.com/r",
        UNSAFE,
    ),
    "absurd length": lambda r: (
        r.choice(
            [
                f"https://recordings.example.com/{'a' * r.randint(9000, 200_000)}.mp3",
                f"https://recordings.example.com/r.mp3?X-Amz-Security-Token={'f' * 20_000}",
            ]
        ),
        BAD,
    ),
    "none-ish": lambda r: (r.choice(["None", "null", "undefined", "NaN", "[]", "{}", "0"]), BAD),
    "numeric host": lambda r: (
        f"https://{r.choice(['256.1.1.1', '1.2.3.999', '999999999999', '10.0.0.0.1'])}/r.mp3",
        BAD,
    ),
    "other scheme": lambda r: (
        r.choice(["ftp://rec.example.com/r", "file:///etc/passwd", "gopher://rec.example.com/"]),
        UNSAFE,
    ),
}


def hostile_urls(per_pattern: int = 40, seed: int = 15) -> list[tuple[str, str, str]]:
    """(pattern, url, expected reason), deterministic; half of them carry a signature."""
    rng = random.Random(seed)
    seen: dict[str, tuple[str, str, str]] = {}
    for name, make in PATTERNS.items():
        for _ in range(per_pattern):
            url, reason = make(rng)
            if rng.random() < 0.5 and "?" not in url and "#" not in url:
                url += "?" + SIGNED
            seen.setdefault(url, (name, url, reason))
    return list(seen.values())


HOSTILE = hostile_urls()


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text[:300]


# --- breadth: the URL layer ----------------------------------------------------------------------


def test_the_generator_is_big_and_covers_every_pattern() -> None:
    assert len(HOSTILE) >= 250
    assert {name for name, _, _ in HOSTILE} == set(PATTERNS)


async def test_every_hostile_url_is_refused_up_front_with_its_reason(tmp_path: Path) -> None:
    policy = AddressPolicy.for_hosts(["http://127.0.0.1:1"], allow_private=False)
    dns = NoDns()
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, inner=dns))
    wrong: list[str] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for name, url, reason in HOSTILE:
            what = "recording-1 of call c0ffee"
            # The helpers that see the URL before any request never raise on it.
            try:
                strip_url(url)
                url_deadline(url, 0.0)
                parse_call_details(_details(url))
            except ExotelProtocolError:
                pass
            except Exception as exc:
                wrong.append(f"{name}: {url[:80]!r} -> a helper raised {exc!r}"[:300])
            for attempt in ("check_url", "download"):
                try:
                    if attempt == "check_url":
                        policy.check_url(url, what=what)
                    else:
                        with (tmp_path / "spool").open("w+b") as spool:
                            await download(session, url, Partial(spool), what=what, policy=policy)
                except UnsafeAddress as exc:
                    message = str(exc)
                    _no_secret(message)
                    assert message.startswith(what) and len(message) < 400, message
                    assert "\n" not in message and "\r" not in message, message
                    if error_reason(exc) != reason:
                        wrong.append(f"{name}: {url[:80]!r} -> {error_reason(exc)}: {message}")
                except Exception as exc:  # the point: nothing else escapes
                    wrong.append(f"{name}: {url[:80]!r} -> {attempt} raised {exc!r}"[:300])
                else:
                    wrong.append(f"{name}: {url[:80]!r} -> {attempt} accepted it")
    assert wrong == [], "\n".join(wrong[:40])
    assert dns.asked == []  # refused before any lookup, let alone a connection


def _details(url: str) -> dict[str, Any]:
    return {
        "sid": "c0ffee",
        "state": "terminal",
        "status": "completed",
        "created_time": "2026-01-02 10:00:00+05:30",
        "recordings": [{"url": url}],
    }


# --- end to end ----------------------------------------------------------------------------------

REJECTS = [
    (400, "InvalidArgument"),
    (400, "InvalidRequest"),
    (409, "Conflict"),
    (411, "MissingContentLength"),
    (400, "KeyTooLongError"),
    (422, "UnprocessableEntity"),
    (416, "InvalidRange"),
    (400, "EntityTooLarge"),
]


def _sample(count: int, seed: int) -> list[tuple[str, str, str]]:
    """``count`` hostile URLs, every pattern at least once, cut to a size a call can carry."""
    rng = random.Random(seed)
    by_pattern: dict[str, list[tuple[str, str, str]]] = {}
    for item in HOSTILE:
        if len(item[1]) < 30_000:
            by_pattern.setdefault(item[0], []).append(item)
    chosen = [rng.choice(items) for items in by_pattern.values()]
    rest = [i for i in HOSTILE if i not in chosen and len(i[1]) < 30_000]
    return chosen + rng.sample(rest, count - len(chosen))


def _expected(url: str, reason: str) -> str:
    """What the call's reason is: a URL the call-details parser already refuses as not
    http(s) is a protocol error of the answer; the rest are judged by the URL layer."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        return reason
    return reason if scheme in ("http", "https") else "exotel_protocol_error"


class World:
    """The calls of one end-to-end run: hostile URLs, S3 rejects, good calls."""

    def __init__(self, sim: Simulator, proxy: FaultyS3Proxy, *, hostile: int, good: int) -> None:
        self.expect: dict[str, str] = {}
        for _name, url, reason in _sample(hostile, seed=hostile):
            call = sim.add_call(size=2000)
            sim.faults.recording_url_for[call.sid] = url
            self.expect[call.sid] = _expected(url, reason)
        for status, code in REJECTS:
            call = sim.add_call(size=2000)
            sid = call.sid
            proxy.fail(
                lambda m, p, sid=sid: m == "PUT" and f"/{sid}/recording-1" in p,
                times=1000,
                status=status,
                code=code,
            )
            self.expect[sid] = "storage_rejected"
        self.good = [sim.add_call(recordings=2, size=3000).sid for _ in range(good)]

    def check(self, sim: Simulator, seaweed: SeaweedFS, bucket: str, state: Path) -> None:
        ledger = Ledger(state / "ledger.sqlite3")
        try:
            outcomes = {sid: ledger.call_outcome(sid) for sid in [*self.expect, *self.good]}
            details = [str(row) for row in ledger.unarchived()]
        finally:
            ledger.close()
        assert {s for s, o in outcomes.items() if o == "failed"} == set(self.expect)
        assert {s for s, o in outcomes.items() if o == "archived"} == set(self.good)
        _no_secret(" ".join(details))
        client = seaweed.client()
        objects = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                if "/_manifest/" not in item["Key"] and "/recording-" in item["Key"]:
                    body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    objects[item["Key"]] = body
        wanted = {}
        for sid in self.good:
            folder = f"{PREFIX}/{sim.calls[sid].created.astimezone(IST):%Y/%m/%d}/{sid}"
            for n in (1, 2):
                wanted[f"{folder}/recording-{n}.mp3"] = sim.recording_bytes(sid, n)
        assert objects == wanted  # every good recording once, byte for byte; nothing else
        entries = read_manifest(state / "manifest.jsonl")
        assert {e["call_sid"] for e in entries} == set(self.good)
        keys = [e["key"] for e in entries if e["kind"] == "recording"]
        assert len(keys) == len(set(keys)) == len(wanted)


def test_archive_fails_each_hostile_call_and_archives_the_rest(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    world = World(sim, proxy, hostile=40, good=8)
    state = tmp_path / "state"
    env = {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.1",
        "ARCHIVER_CONCURRENCY": "4",
    }
    report = tmp_path / "report.json"
    sids = [*world.expect, *world.good]
    result = CliRunner().invoke(main, ["archive", *sids, "--report", str(report)], env=env)
    out = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{result.exception!r}\n{out[-3000:]}") from result.exception
    assert result.exit_code == 1, out[-3000:]  # done, with failures
    assert "Traceback" not in out
    _no_secret(out)
    for secret in (sim.api_key, sim.api_token, seaweed.secret_key):
        assert secret not in out
    calls = {c["call_sid"]: c for c in json.loads(report.read_text())["calls"]}
    reasons = {sid: calls[sid]["reason"] for sid in world.expect}
    assert reasons == world.expect
    assert all(calls[sid]["outcome"] == "archived" for sid in world.good)
    world.check(sim, seaweed, bucket, state)
    assert sim.counters.get("recording_requests", 0) == 2 * len(world.good) + len(REJECTS)


def test_the_worker_fails_each_hostile_call_and_keeps_running(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    world = World(sim, proxy, hostile=24, good=5)
    state = tmp_path / "state"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME")},
        **seaweed.env(),
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.1",
        "ARCHIVER_POLL_INTERVAL": "1",
        "ARCHIVER_RECHECK_INTERVAL": "1",
        "ARCHIVER_METRICS_LISTEN": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        total = len(world.expect) + len(world.good)
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                _, text = scrape(port)
            except OSError:
                time.sleep(0.2)
                continue
            done = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("exotel_archiver_calls_total{")
                and ('"archived"' in line or '"failed"' in line)
            )
            if done >= total:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate(timeout=10)[1].decode()[-3000:]
        failures: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith("exotel_archiver_failures_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                failures[reason] += int(float(line.rsplit(" ", 1)[1]))
        assert failures == Counter(world.expect.values()), text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = err.decode()
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    _no_secret(log)
    for secret in (sim.api_key, sim.api_token, seaweed.secret_key):
        assert secret not in log
    world.check(sim, seaweed, bucket, state)
