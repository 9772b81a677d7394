"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import Settings, load_settings
from archiver.ledger import Ledger
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.seaweed import free_port as free_port  # one definition, used by SeaweedFS too

UNDER_SYSTEMD = {
    "INVOCATION_ID": "8c5b0e3cf4a6495c8b8ff0a2d2b0d7a1",
    "JOURNAL_STREAM": "8:12345",
}
"""What the archiver sees of systemd: a unit's invocation id and its journal on stderr."""

GENERAL_30D = """
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "none"
at_end = "delete"
"""
"""A [retention] table: every call in one class, kept 30 days, then deleted; no Object Lock."""

GENERAL_30D_LOCKED = """
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "governance"
at_end = "keep"
"""
"""A [retention] table whose one class asks for Object Lock (GOVERNANCE, 30 days)."""

ORDERS_APP = "233516"
ORDERS_BY_APP = f"""
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "governance"
at_end = "delete"

[retention.classes.orders]
period = "3y"
lock = "compliance"
at_end = "keep"

[[retention.rules]]
class = "orders"
app_id = "{ORDERS_APP}"
"""
"""Two locked classes — ``general`` (30 days, GOVERNANCE, then deleted) and ``orders`` (3 years,
COMPLIANCE, kept) — and one rule only the v3 details decide (``app_id``): a rescued call's objects
are stored unbound and bound at enrichment. ``.replace(f'app_id = "{ORDERS_APP}"', ...)`` makes
it a rule the v1 fields decide."""


def current_lock(seaweed: SeaweedFS, bucket: str, key: str) -> dict[str, Any] | None:
    """The Object Lock retention (``Mode``, ``RetainUntilDate``) of the key's current version —
    what protects the object — or None if it has none."""
    s3 = seaweed.client()
    try:
        return dict(s3.get_object_retention(Bucket=bucket, Key=key)["Retention"])
    except s3.exceptions.ClientError as exc:
        if "NoSuchObjectLockConfiguration" in str(exc) or "ObjectLockConfiguration" in str(exc):
            return None
        raise


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Metric samples as scraped: (sample name, labels) -> value."""


def exotel_env(sim: Simulator, base_url: str, destination: str, state: Path) -> dict[str, str]:
    """The environment that points the archiver at ``sim`` and a destination."""
    return {
        "EXOTEL_ACCOUNT_SID": sim.account_sid,
        "EXOTEL_API_KEY": sim.api_key,
        "EXOTEL_API_TOKEN": sim.api_token,
        "EXOTEL_API_URL": base_url,
        "EXOTEL_V1_API_URL": base_url,
        "ARCHIVER_DESTINATION": destination,
        "ARCHIVER_STATE_DIR": str(state),
        "ARCHIVER_CONFIG": "",
        "ARCHIVER_RESCUE": "off",  # the per-call path; the lane's tests turn it on
    }


async def archive_in_two_runs(
    sim: Simulator, base_url: str, destination: str, tmp_path: Path
) -> Settings:
    """Three calls (one with two recordings) archived in two runs into ``destination``: two
    manifest segments: seq 1-5 (3 recordings, 2 call.json) and seq 6-7."""
    settings = load_settings(env=exotel_env(sim, base_url, destination, tmp_path / "state"))
    await archive_calls(settings, [sim.add_call(recordings=2).sid, sim.add_call().sid])
    await archive_calls(settings, [sim.add_call().sid])
    return settings


def add_bulk_objects(
    state_dir: Path, root: Path, count: int, *, call_sid: str | None = None
) -> list[str]:
    """``count`` small files in the local destination ``root``, recorded in the ledger of
    ``state_dir`` as the archive records objects: bound to the class ``general``, their
    retain-until date long past. One call each, or all recordings of ``call_sid``. In one
    transaction: setup for the memory tests and the benchmark, not archiving. Their keys."""
    body = b"hello"
    digest = hashlib.sha256(body).hexdigest()
    db = sqlite3.connect(state_dir / "ledger.sqlite3")
    try:
        (start,) = db.execute(
            "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM objects "
            "UNION SELECT MAX(seq) FROM events)"
        ).fetchone()
        rows, keys = [], []
        for n in range(count):
            sid, idx = (call_sid, n + 1) if call_sid else (f"bulk{n:08d}", 1)
            key = f"2026/09/01/{sid}/recording-{idx}.mp3"
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            keys.append(key)
            rows.append(
                (start + n + 1, sid, "recording", idx, key, str(path), len(body), digest,
                 "audio/mpeg", "mp3", f"https://recordings.example/{sid}-{idx}.mp3",
                 "2026-09-01T10:00:00+05:30", "2026-09-01T05:00:00.000Z", "bulk", "general",
                 "2026-10-01T04:30:00Z")
            )  # fmt: skip
        db.executemany(
            "INSERT INTO objects (seq, call_sid, kind, idx, key, location, size, sha256, "
            "content_type, format, source, call_created, archived_at, worker, retention_class, "
            "retain_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.commit()
    finally:
        db.close()
    return keys


# --- processes and waiting ---------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll ``condition`` from a synchronous test until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def clean_env() -> dict[str, str]:
    """This process's environment without systemd's marks (the suite may itself run in a unit)."""
    return {k: v for k, v in os.environ.items() if k not in UNDER_SYSTEMD}


def status_json(env: Mapping[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """``exotel-archiver status --json ARGS``: its exit code and its JSON."""
    result = invoke(["status", "--json", *args], env)
    return result.exit_code, json.loads(result.stdout)


def ledger_rows(state: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` in the state directory's ledger, read-only."""
    with closing(sqlite3.connect(f"{(state / 'ledger.sqlite3').as_uri()}?mode=ro", uri=True)) as db:
        return list(db.execute(sql))


def worker_env(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> dict[str, str]:
    """For a real ``python -m archiver run`` against ``sim``: quick polls and rechecks, a local
    destination and state directory in ``tmp_path``."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("AWS_", "NOTIFY_"))}
    return {
        **env,
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
        "ARCHIVER_POLL_INTERVAL": "1",
        "ARCHIVER_RECHECK_INTERVAL": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``python -m archiver``: nothing of the developer's AWS or
    archiver settings, this checkout importable, ``extra`` on top."""
    env = {
        k: v
        for k, v in clean_env().items()
        if not k.startswith(("AWS_", "ARCHIVER_", "EXOTEL_", "NOTIFY_", "CREDENTIALS_DIRECTORY"))
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["ARCHIVER_CONFIG"] = ""
    env["ARCHIVER_RESCUE"] = "off"  # as in the suite's own process (conftest.py); "on" in extra
    env.update(extra)
    return env


def run_archiver(
    args: list[str], env: dict[str, str], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """``python -m archiver ARGS`` as a child process, its output captured (unless ``kwargs``
    say otherwise)."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "archiver", *args],
        env=env,
        text=True,
        timeout=120,
        **({"capture_output": True} | kwargs),
    )


def invoke(args: Sequence[str], env: Mapping[str, str]) -> Result:
    """``exotel-archiver ARGS`` through click, in this process; an exception other than the
    command's own exit is a test failure showing the output."""
    result = CliRunner().invoke(main, list(args), env=dict(env))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{result.exception!r}\n{result.output}") from result.exception
    return result


# --- what ended up in the ledger, the bucket, the log, /metrics --------------------------------


def outcome(state: Path, sid: str) -> str | None:
    """The ledger's outcome of call ``sid`` in the state directory ``state`` (None: unknown, or
    no ledger yet — reading it never creates one)."""
    return outcomes(state, sid)[sid]


def outcomes(state: Path, *sids: str) -> dict[str, str | None]:
    """The ledger's outcome of each call in ``sids``, by call sid."""
    if not (state / "ledger.sqlite3").exists():
        return dict.fromkeys(sids)
    ledger = Ledger(state / "ledger.sqlite3")
    try:
        return {sid: ledger.call_outcome(sid) for sid in sids}
    finally:
        ledger.close()


def recordings_in(seaweed: SeaweedFS, bucket: str, prefix: str) -> dict[str, bytes]:
    """The recording objects under ``prefix/`` of ``bucket``, key -> body."""
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
        if "/recording-" in o["Key"]
    }


def json_lines(stderr: str | bytes) -> list[dict[str, Any]]:
    """Every line of ``stderr`` as a JSON object; the test fails on the first line that is not
    one (JSON log mode promises nothing else on stderr)."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    out: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line {n} is not JSON: {line!r}")
        assert isinstance(event, dict), f"stderr line {n} is not a JSON object: {line!r}"
        out.append(event)
    return out


def non_json_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not a JSON object (blank lines aside)."""
    bad = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(event, dict):
            bad.append(line)
    return bad


def scrape(port: int) -> tuple[str, str]:
    """``GET /metrics`` of a worker listening on the loopback ``port``: (content type, text)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        return answer.headers["Content-Type"], answer.read().decode()


def exposed(text: str) -> tuple[dict[str, str], Samples]:
    """(name as exposed -> type, samples), read by prometheus_client's own parser."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        types[name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, samples


# --- no DNS ------------------------------------------------------------------------------------


class NoDns(AbstractResolver):
    """Every lookup is recorded (and fails): a refused URL must never get this far."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        raise OSError("no DNS in this test")

    async def close(self) -> None:
        pass


# --- private mount namespaces (unshare -m, as root) --------------------------------------------


def can_mount_privately(tmp_path: Path, script: Callable[[Path], str]) -> bool:
    """Whether mounts in a private namespace work here (root, unshare and mount present):
    ``script(probe)``, run under ``unshare -m``, mounts something on the new folder ``probe``
    and (if its mount holds) leaves no ``probe/x`` visible from outside; it must exit 0."""
    if shutil.which("unshare") is None or shutil.which("mount") is None or os.geteuid() != 0:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script(probe)], capture_output=True, timeout=30
    )
    return result.returncode == 0 and not (probe / "x").exists()


def read_only(folder: Path, then: str) -> str:
    """A shell line that makes ``folder`` a read-only bind mount (in this mount namespace), then
    runs ``then``."""
    where = shlex.quote(str(folder))
    return (
        "mount --make-rprivate / && "
        f"mount --bind {where} {where} && mount -o remount,ro,bind {where} && {then}"
    )


def tmpfs(folder: Path, then: str, size: str = "1m") -> str:
    """A shell line mounting a ``size`` tmpfs on ``folder`` (in this mount namespace only),
    then running ``then``."""
    where = shlex.quote(str(folder))
    return f"mount --make-rprivate / && mount -t tmpfs -o size={size} tmpfs {where} && {then}"


HWM_WRAPPER = """
import atexit, runpy, sys
path = sys.argv[1]
def hwm():
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(l for l in status if l.startswith("VmHWM:")).split()[1])
atexit.register(hwm)
sys.argv = ["exotel-archiver", *sys.argv[2:]]
runpy.run_module("archiver", run_name="__main__")
"""
"""``python -c HWM_WRAPPER FILE ARGS``: runs ``exotel-archiver ARGS`` and writes its own peak
RSS (``VmHWM``, kB) to FILE at exit (``wait4``'s ``ru_maxrss`` carries the parent's high-water
mark over ``exec``, so it overstates a child started from a big process such as pytest)."""

STREAM_PREFIX = "calls"
"""The destination prefix of ``streamed_env``."""


def streamed_env(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    proxy_endpoint: str,
    bucket: str,
    state: Path,
    **extra: str,
) -> dict[str, str]:
    """A child archiver's environment for streamed uploads: S3 through a FaultyS3Proxy at
    ``proxy_endpoint``, 5 MiB parts, 4 in flight, 2 attempts with short waits."""
    return {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{STREAM_PREFIX}", state),
        "AWS_ENDPOINT_URL": proxy_endpoint,
        "AWS_CONFIG_FILE": str(state.parent / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(state.parent / "no-aws-credentials"),
        "EXOTEL_RATE_LIMIT": "6000",
        "ARCHIVER_PART_SIZE": "5",
        "ARCHIVER_PART_CONCURRENCY": "4",
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.2",
        **extra,
    }


def recording_key(sim: Simulator, sid: str, prefix: str = STREAM_PREFIX) -> str:
    """The key of a call's first recording (mp3) under ``prefix``, in the default layout."""
    from archiver.exotel.models import IST

    day = sim.calls[sid].created.astimezone(IST)
    return f"{prefix}/{day:%Y/%m/%d}/{sid}/recording-1.mp3"


# --- client-side encryption (issue 19) ---------------------------------------------------------


def write_keys(folder: Path, kind: str = "x25519") -> tuple[Path, Path]:
    """A fresh key pair as PEM files: (public, private)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa, x25519

    private: Any = (
        x25519.X25519PrivateKey.generate()
        if kind == "x25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=3072)
    )
    public_path, private_path = folder / f"{kind}-public.pem", folder / f"{kind}-private.pem"
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return public_path, private_path


def decrypt(private: Path, data: bytes) -> bytes:
    """``data`` (an envelope) decrypted with the private key file ``private``, checked."""
    from archiver.envelope import Decryptor, Identity

    decryptor = Decryptor(Identity.from_file(private, None))
    return decryptor.update(data) + decryptor.finish()
