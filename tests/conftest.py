"""Shared fixtures: a real S3 server (SeaweedFS) for the session, fresh buckets per test."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.browser import Chromium, chromium_for_tests
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import exotel_env

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    folder = Path(tempfile.mkdtemp(prefix="seaweedfs-tests-"))
    server = SeaweedFS(folder)
    try:
        server.start()
    except RuntimeError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3_env(seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point boto3 (in the code under test) at SeaweedFS, and at nothing of the developer's."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def lock_bucket(seaweed: SeaweedFS) -> str:
    """A new bucket with Object Lock enabled (SeaweedFS enforces it as AWS does)."""
    name = f"lock-bucket-{next(_bucket_numbers)}"
    seaweed.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def bucket(seaweed: SeaweedFS) -> str:
    name = f"test-bucket-{next(_bucket_numbers)}"
    seaweed.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Debian's Chromium, headless (installed with apt when missing: tests/browser.py)."""
    return chromium_for_tests()


@pytest.fixture
def sim() -> Simulator:
    """A fresh simulated Exotel account (tests may override with their own clock or seed)."""
    return Simulator(seed=7)


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    """``sim`` served over real HTTP on loopback, from a background thread."""
    with SimulatorServer(sim, host="127.0.0.1", port=0) as srv:
        yield srv


@pytest.fixture
def proxy(seaweed: SeaweedFS) -> Iterator[FaultyS3Proxy]:
    """FaultyS3Proxy in front of SeaweedFS: S3 answers a test injects (``proxy.fail(...)``)."""
    with FaultyS3Proxy(seaweed.endpoint) as p:
        yield p


@pytest.fixture
def service_env(
    sim: Simulator, server: SimulatorServer, seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> dict[str, str]:
    """The environment of a real ``python -m archiver`` process: ``sim`` over HTTP, the
    destination ``s3://BUCKET/calls`` on SeaweedFS, state in ``tmp_path/state``, nothing of
    the developer's AWS setup, the worker's intervals at their minimum (1 s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NOTIFY_"))}
    return {
        **env,
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/calls", tmp_path / "state"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "ARCHIVER_POLL_INTERVAL": "1",
        "ARCHIVER_RECHECK_INTERVAL": "1",
    }


@pytest.fixture(autouse=True)
def _rescue_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's older tests test the per-call v3 path (still the path of every call the
    listing gives no URL for, of ``archive SID`` and of ``--rescue off``); the rescue lane
    (issue 18) has its own tests, which set ``ARCHIVER_RESCUE=on`` in their environments."""
    monkeypatch.setenv("ARCHIVER_RESCUE", "off")


@pytest.fixture(autouse=True)
def _short_late_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify waits ``LATE_GRACE`` for a worker's commit of an object in doubt; the suite's
    tampered archives need not wait 15 s each (tests of the wait set their own)."""
    from archiver import verify

    monkeypatch.setattr(verify, "LATE_GRACE", 0.3, raising=False)
