"""Secrets never reach anything the archiver writes, and TLS is verified everywhere.

The secrets: the Exotel API key and token, the X-Amz-Signature and X-Amz-Credential of the
pre-signed recording URLs, the AWS secret key (and session token), the webhook secret. Each test
gives them distinctive values and then searches every byte written: stdout, stderr (both log
formats, DEBUG), the state directory (ledger, its WAL, manifest, reports), every object in the
bucket (recordings, call.json, voice-log.json, legs.json, manifest segments) and /metrics.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import aiohttp
import boto3
import pytest
from botocore.config import Config

from archiver.config import load_settings
from archiver.errors import ArchiverError
from archiver.exotel.models import IST
from archiver.log import setup_logging
from archiver.redact import strip_signed_urls
from archiver.simulator import Simulator, SimulatorServer
from archiver.transfer import Partial, download, recording_session
from tests.seaweed import SeaweedFS, free_port
from tests.support import exotel_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sim() -> Simulator:
    """An account whose API key and token are unique strings (found nowhere else by chance)."""
    return Simulator(
        api_key="exokey" + secrets.token_hex(10),
        api_token="exotok" + secrets.token_hex(12),
        seed=11,
    )


def forms(value: str) -> set[str]:
    """A secret and the encodings it could be written in."""
    return {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}


def url_secrets(sim: Simulator) -> set[str]:
    """The signatures and credentials of every pre-signed URL the simulator handed out."""
    found = {sim.url_access_key}
    for url in sim.issued_urls:
        query = parse_qs(urlsplit(url).query)
        found.update(query["X-Amz-Signature"])
        found.update(query["X-Amz-Credential"])
    return found


def all_secrets(sim: Simulator, seaweed: SeaweedFS, *extra: str) -> dict[str, str]:
    """Every secret form → a label (the label is what a failure shows, never the secret)."""
    basic = base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()
    named = {
        "exotel api key": sim.api_key,
        "exotel api token": sim.api_token,
        "basic auth header": basic,
        "aws secret key": seaweed.secret_key,
        "aws access key id": seaweed.access_key,
        **{f"extra secret {i}": value for i, value in enumerate(extra)},
    }
    out = {form: label for label, value in named.items() for form in forms(value)}
    for i, value in enumerate(sorted(url_secrets(sim))):
        out.update(dict.fromkeys(forms(value), f"url secret {i} ({value[:4]}...)"))
    return out


def leaks(where: str, data: bytes, secret_forms: dict[str, str]) -> list[str]:
    return [f"{label} in {where}" for form, label in secret_forms.items() if form.encode() in data]


def bucket_contents(seaweed: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = seaweed.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- 1. a whole backfill under faults, at DEBUG, in both log formats ---------------------------


def _backfill(env: dict[str, str], since: str, until: str, report: Path) -> Any:
    args = [sys.executable, "-m", "archiver", "backfill", "--since", since, "--until", until]
    return subprocess.run(
        [*args, "--report", str(report)], env=env, capture_output=True, timeout=240, cwd=ROOT
    )


@pytest.mark.slow
@pytest.mark.parametrize("lane", ["v3", "rescue"])
def test_no_secret_anywhere_after_a_faulty_backfill_and_a_daemon_run(
    lane: str,
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    day = datetime.now(IST).date() - timedelta(days=3)
    calls = sim.populate(70, day=day, sizes=(3000, 9000))
    with_audio = [c for c in calls if c.recordings]
    # permanent failures: recordings served as HTML, and one always cut off
    html_calls = {c.sid for c in with_audio[:3]}
    for c in with_audio[:3]:
        c.content_type = "text/html"
        sim._register(c)
    sim.faults.always_cut.add(with_audio[3].sid)
    sim.faults.recording_script.extend(["xml200", "noise", "empty"])
    sim.faults.api_500_rate, sim.faults.api_429_rate = 0.08, 0.05
    sim.faults.cut_rate, sim.faults.expired_rate = 0.1, 0.1
    sim.faults.retry_after = 0.05
    webhook_secret = "whsec" + secrets.token_hex(10)

    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EXOTEL_"))},
        **seaweed.env(),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/archive", state),
        "EXOTEL_RATE_LIMIT": "5000",
        "ARCHIVER_ATTEMPTS": "6",
        "ARCHIVER_MAX_WAIT": "0.2",
        "ARCHIVER_LOG_LEVEL": "debug",
        "ARCHIVER_VOICE_LOGS": "audio",
        "ARCHIVER_LEGS": "on",
        "ARCHIVER_WEBHOOK_SECRET": webhook_secret,
        # The rescue lane (issue 18): recordings from the listing's pre-signed URLs, call-v1.json.
        "ARCHIVER_RESCUE": "on" if lane == "rescue" else "off",
    }
    outputs: dict[str, bytes] = {}
    first_half = str(day - timedelta(days=1))
    for fmt in ("text", "json"):  # the second run retries the failures of the first
        run_env = {**env, "ARCHIVER_LOG_FORMAT": fmt}
        done = _backfill(run_env, first_half, str(day), tmp_path / f"report-{fmt}.json")
        assert done.returncode == 1, done.stderr.decode()[-3000:]  # some calls failed for good
        assert b"Traceback" not in done.stderr
        outputs[f"backfill stdout ({fmt})"] = done.stdout
        outputs[f"backfill stderr ({fmt})"] = done.stderr
        assert b"DEBUG" in done.stderr.upper()  # the debug lines were written, and searched
    stderr_lines = outputs["backfill stderr (json)"].splitlines()
    json_lines = [json.loads(line) for line in stderr_lines if line.startswith(b"{")]
    assert any(line["level"] == "debug" for line in json_lines)

    report = json.loads((tmp_path / "report-json.json").read_text())
    failed = {r["call_sid"] for r in report["result"]["calls"] if r["outcome"] == "failed"}
    assert html_calls | {with_audio[3].sid} <= failed
    # the faults were exercised: refreshed URLs, 5xx, 429, cut-offs
    assert sim.counters["expired_refusals"] > 0 and sim.counters["server_errors"] > 0
    assert sim.counters["rate_limited"] > 0 and sim.counters["range_requests"] > 0

    # a short daemon run with the metrics listener, to read /metrics
    port = free_port()
    active = sim.add_call(state="active")
    daemon_env = {
        **env,
        "ARCHIVER_LOG_FORMAT": "json",
        "ARCHIVER_METRICS_LISTEN": f"127.0.0.1:{port}",
        "ARCHIVER_POLL_INTERVAL": "1",
        "ARCHIVER_RECHECK_INTERVAL": "1",
        "ARCHIVER_SWEEP_INTERVAL": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=daemon_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    metrics = b""

    def wait_for(pattern: bytes) -> bytes:
        deadline, text = time.monotonic() + 60, b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = bytes(r.read())
            except OSError:
                text = b""
            if re.search(pattern, text):
                return text
            time.sleep(0.3)
        return text

    try:
        wait_for(rb"watched_active_calls 1")  # seen in progress...
        sim.finish(active.sid)  # ...then over: archived by the worker
        metrics = wait_for(rb'calls_total\{outcome="archived"\} [1-9]')
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert re.search(rb'calls_total\{outcome="archived"\} [1-9]', metrics), metrics.decode()
    assert proc.returncode == 0, err.decode()[-3000:]
    outputs.update({"metrics": metrics, "daemon stdout": out, "daemon stderr": err})

    stored = bucket_contents(seaweed, bucket)
    assert any(k.endswith("/call.json") for k in stored)
    assert any(k.endswith("/voice-log.json") for k in stored)
    assert any(k.endswith("/call-v1.json") for k in stored) == (lane == "rescue")
    assert any("/_manifest/" in k for k in stored)
    written = {
        **outputs,
        **{f"bucket object {k}": v for k, v in stored.items()},
        **files_under(state),  # ledger, WAL, manifest.jsonl, JSON summaries
        **{str(p): p.read_bytes() for p in tmp_path.glob("report-*.json")},
    }
    assert any(name.endswith(("-wal", ".sqlite3")) for name in written)
    assert len(sim.issued_urls) > len(with_audio)  # fresh URLs were handed out, and searched
    secret_forms = all_secrets(sim, seaweed, webhook_secret)
    found = [leak for where, data in written.items() for leak in leaks(where, data, secret_forms)]
    assert not found, "\n".join(found[:40])

    # call.json is still the response as received, less the query strings of its URLs
    some = next(k for k in stored if k.endswith("/call.json"))
    details = json.loads(stored[some])["response"]["call_details"]
    assert details["recordings"] and all("?" not in r["url"] for r in details["recordings"])
    assert all(
        r["url"].startswith(server.base_url + "/exotel-recordings/") for r in details["recordings"]
    )


def test_snapshot_stripping_keeps_every_other_byte() -> None:
    signed = "https://s3.example/rec/a.mp3?X-Amz-Signature=feedface&X-Amz-Credential=AKIAX%2F1"
    body = (
        '{"request_id": "r1",  "response": {"call_details": {"sid": "abc", "recordings": '
        f'[{{"url": "{signed}"}}, {{"url": "{signed.replace("/", chr(92) + "/")}"}}], '
        '"note": "caf\\u00e9 \\"q\\"", "page": "https://api.example/v3?page=2"}}}\n'
    ).encode()
    out = strip_signed_urls(body)
    assert b"feedface" not in out and b"AKIAX" not in out
    assert out == body.replace(signed.encode(), b"https://s3.example/rec/a.mp3").replace(
        signed.replace("/", "\\/").encode(), b"https://s3.example/rec/a.mp3"
    )
    assert json.loads(out)["response"]["call_details"]["page"] == "https://api.example/v3?page=2"


def test_snapshot_stripping_sees_a_signed_url_hidden_behind_json_escapes() -> None:
    """A string with no literal '?' or '@' can still be a signed URL once its escapes are read."""
    hidden = "https://s3.example/rec/a.mp3\\u003fX-Amz-Signature=feedface"
    userinfo = "https://user:pass\\u0040s3.example/rec/b.mp3"
    body = f'{{"recordings": [{{"url": "{hidden}"}}, {{"url": "{userinfo}"}}]}}'.encode()
    out = strip_signed_urls(body)
    assert b"feedface" not in out and b"pass" not in out
    urls = [r["url"] for r in json.loads(out)["recordings"]]
    assert urls == ["https://s3.example/rec/a.mp3", "https://s3.example/rec/b.mp3"]


# --- the AWS session token: SeaweedFS refuses an unknown one, so test it at the logging layer ---


def test_botocore_debug_output_never_shows_the_session_token_or_signature(
    seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    token = "FwoGZXIvYXdzE" + secrets.token_hex(24)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    handler = setup_logging("debug", fmt="text")
    try:
        # ours at DEBUG keeps botocore at INFO...
        assert logging.getLogger("botocore").getEffectiveLevel() == logging.INFO
        # ...and one turned up on purpose still passes the redactor
        logging.getLogger("botocore").setLevel(logging.DEBUG)
        client = boto3.client(
            "s3",
            endpoint_url=seaweed.endpoint,
            aws_access_key_id=seaweed.access_key,
            aws_secret_access_key=seaweed.secret_key,
            aws_session_token=token,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}),
        )
        with pytest.raises(Exception) as refused:  # SeaweedFS does not know the token
            client.put_object(Bucket="nope", Key="k", Body=b"x")
        logging.getLogger("archiver.test").error("put failed: %s", refused.value)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("botocore").setLevel(logging.NOTSET)
    err = capfd.readouterr().err
    assert "X-Amz-Security-Token" in err and "Authorization" in err  # the headers were logged
    assert "Signature=" in err
    for value in (token, seaweed.secret_key, seaweed.access_key):
        assert value not in err
    assert not re.search(r"Signature=[0-9a-f]{16}", err)


# --- 2. reprs and error messages of real objects -----------------------------------------------


def test_settings_and_their_parts_mask_secrets(tmp_path: Path) -> None:
    key, token, hook = "k" + secrets.token_hex(8), "t" + secrets.token_hex(8), secrets.token_hex(9)
    settings = load_settings(
        env={
            "EXOTEL_ACCOUNT_SID": "acct",
            "EXOTEL_API_KEY": key,
            "EXOTEL_API_TOKEN": token,
            "ARCHIVER_WEBHOOK_SECRET": hook,
            "ARCHIVER_WEBHOOK_BASIC_AUTH": f"user:{hook}pw",
            "ARCHIVER_DESTINATION": str(tmp_path / "out"),
            "ARCHIVER_STATE_DIR": str(tmp_path / "state"),
            "ARCHIVER_CONFIG": "",
        }
    )
    assert settings.exotel.api_key.reveal() == key  # the values are there...
    texts = [repr(settings), str(settings), repr(settings.exotel), str(settings.exotel)]
    texts += [repr(settings.daemon), repr(settings.retry), repr(settings.exotel.api_token)]
    texts += [f"{settings.exotel.api_key}", f"{settings.daemon.webhook_secret!s}"]
    for text in texts:  # ...but no repr or str shows them
        for value in (key, token, hook):
            assert value not in text


@pytest.fixture
def signed_url(sim: Simulator, server: SimulatorServer) -> tuple[str, set[str]]:
    call = sim.add_call(size=20_000)
    url = sim.presign(server.base_url, call, 1)
    return url, url_secrets(sim)


@pytest.mark.parametrize(
    "fault, error",
    [
        ("expired", "RecordingExpired"),
        ("html", "NotARecording"),
        ("xml200", "NotARecording"),
        ("empty", "NotARecording"),
        ("noise", "NotARecording"),
        ("cut", "RecordingTransferError"),
        ("short_length", "RecordingTransferError"),
        ("bad-signature", "RecordingExpired"),
        ("no-such-key", "RecordingUnavailable"),
        ("connection-refused", "RecordingTransferError"),
    ],
)
async def test_download_errors_never_show_the_signature(
    sim: Simulator,
    signed_url: tuple[str, set[str]],
    fault: str,
    error: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url, secret_values = signed_url
    if fault == "bad-signature":
        url = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        secret_values.add(parse_qs(urlsplit(url).query)["X-Amz-Signature"][0])
    elif fault == "no-such-key":
        url = url.replace("/exotel-recordings/", "/exotel-recordings/x")
    elif fault == "connection-refused":
        parts = urlsplit(url)
        url = url.replace(f":{parts.port}/", f":{free_port()}/")
    else:
        sim.faults.recording_script.append(fault)
    handler = setup_logging("debug", fmt="json")
    try:
        with tempfile.TemporaryFile() as spool:
            async with recording_session() as session:
                with pytest.raises(ArchiverError) as caught:
                    await download(session, url, Partial(spool), what="recording 1 of call x")
        exc = caught.value
        assert type(exc).__name__ == error
        # what a log line with the traceback would show; and the raw aiohttp error behind it
        logging.getLogger("archiver.test").error("failed", exc_info=exc)
        context = exc.__context__
        if context is not None:
            logging.getLogger("archiver.test").error("raw: %r", context, exc_info=context)
    finally:
        logging.getLogger().removeHandler(handler)
    logged = capfd.readouterr().err
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), logged]
    assert "127.0.0.1" in texts[0]  # the message names the host (without the query)
    for text in texts:
        for value in secret_values:
            assert value not in text and quote(value, safe="") not in text


async def test_aiohttp_response_errors_are_scrubbed_by_the_log_filter(
    signed_url: tuple[str, set[str]], capfd: pytest.CaptureFixture[str]
) -> None:
    """aiohttp's own exceptions carry the full URL (query included) in str() and repr()."""
    url, secret_values = signed_url
    handler = setup_logging("info", fmt="text")
    try:
        bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=1")
        async with aiohttp.ClientSession() as session, session.get(bad) as r:
            with pytest.raises(aiohttp.ClientResponseError) as caught:
                r.raise_for_status()
        raw = f"{caught.value!s} {caught.value.request_info!r}"
        assert any(v in raw for v in secret_values)  # the raw error does carry them...
        logging.getLogger("archiver.test").warning("%r", caught.value.request_info)
        logging.getLogger("aiohttp.client").error("boom %s", raw, exc_info=caught.value)
    finally:
        logging.getLogger().removeHandler(handler)
    logged = capfd.readouterr().err
    assert "ClientResponseError" in logged
    for value in secret_values:  # ...the log lines do not
        assert value not in logged and quote(value, safe="") not in logged


# --- 3. TLS --------------------------------------------------------------------------------------

_UNVERIFIED = re.compile(
    r"ssl\s*=\s*False|verify\s*=\s*False|verify_ssl\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False"
    r"|_create_unverified_context|PYTHONHTTPSVERIFY|InsecureRequestWarning"
)
ALLOWED_UNVERIFIED: dict[str, str] = {}
"""File → why it may turn TLS verification off (with a loud warning). None does today."""


def test_no_code_turns_tls_verification_off() -> None:
    offenders = []
    for path in sorted((ROOT / "archiver").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if _UNVERIFIED.search(line) and relative not in ALLOWED_UNVERIFIED:
                offenders.append(f"{relative}:{n}: {line.strip()}")
    assert not offenders, "TLS verification turned off:\n" + "\n".join(offenders)


def test_the_tls_guard_catches_what_it_should() -> None:
    for line in ("TCPConnector(ssl=False)", "client(verify=False)", "ctx.verify_mode = CERT_NONE"):
        assert _UNVERIFIED.search(line)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a self-signed certificate (and no cryptography)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def https_server(sim: Simulator, self_signed: tuple[Path, Path]) -> Iterator[SimulatorServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    with SimulatorServer(sim, ssl_context=context) as srv:
        assert srv.base_url.startswith("https://")
        yield srv


def test_a_self_signed_exotel_endpoint_is_refused_until_its_ca_is_given(
    sim: Simulator, https_server: SimulatorServer, self_signed: tuple[Path, Path], tmp_path: Path
) -> None:
    day = datetime.now(IST).date() - timedelta(days=3)
    calls = [c for c in sim.populate(6, day=day, sizes=(2000, 4000)) if c.recordings]
    out, state = tmp_path / "out", tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SSL_CERT", "EXOTEL_"))},
        **exotel_env(sim, https_server.base_url, str(out), state),
    }
    args = [sys.executable, "-m", "archiver", "backfill", "--since", str(day), "--until", str(day)]

    refused = subprocess.run(args, env=env, capture_output=True, timeout=120, cwd=ROOT)
    err = refused.stderr.decode()
    assert refused.returncode == 2, err
    assert "Traceback" not in err
    assert "certificate verify failed" in err and "self-signed certificate" in err
    assert "SSL_CERT_FILE" in err and "AWS_CA_BUNDLE" in err and "private CA" in err
    assert sim.counters["api_requests"] == 0  # the handshake failed: nothing was sent
    assert not out.exists() or not list(out.rglob("recording-*"))

    trusted = {**env, "SSL_CERT_FILE": str(self_signed[0])}
    done = subprocess.run(args, env=trusted, capture_output=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    stored = {p.parent.name for p in out.rglob("recording-*.*")}
    assert stored == {c.sid for c in calls}
    for c in calls:  # the bytes that came over TLS are the recording's
        (path,) = [p for p in out.rglob("recording-1.*") if p.parent.name == c.sid]
        assert path.read_bytes() == sim.recording_bytes(c.sid, 1)


async def test_recording_downloads_verify_the_certificate_too(
    sim: Simulator, https_server: SimulatorServer
) -> None:
    """Even when the API is trusted, a recording host with a bad certificate is refused."""
    call = sim.add_call()
    url = sim.presign(https_server.base_url, call, 1)
    with tempfile.TemporaryFile() as spool:
        async with recording_session() as session:
            with pytest.raises(ArchiverError) as caught:
                await download(session, url, Partial(spool), what="recording 1 of call x")
    message = str(caught.value)
    assert type(caught.value).__name__ == "CertificateError" and not caught.value.retryable
    assert "certificate verify failed" in message and "SSL_CERT_FILE" in message
    assert "X-Amz-Signature" not in message and "?" not in message
    assert sim.counters["recording_requests"] == 0


def test_s3_certificate_failures_are_permanent_and_name_the_fix(
    self_signed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 endpoint with an untrusted certificate: StoragePermanent naming AWS_CA_BUNDLE."""
    import asyncio

    from archiver.errors import StoragePermanent
    from archiver.sinks.s3 import S3Sink

    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    import threading

    def accept() -> None:  # a TLS server that only ever does the handshake
        for _ in range(3):
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    sink = S3Sink("bucket", endpoint_url=f"https://127.0.0.1:{port}", region="us-east-1")
    with pytest.raises(StoragePermanent) as caught:
        asyncio.run(sink.check())
    listener.close()
    message = str(caught.value)
    assert "certificate verify failed" in message and "AWS_CA_BUNDLE" in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message


def test_the_worker_stops_with_exit_2_when_the_exotel_certificate_is_refused(
    sim: Simulator, https_server: SimulatorServer, tmp_path: Path
) -> None:
    """Polling against an untrusted certificate is not retried forever: every request would
    fail alike, so ``run`` stops with the fix named (systemd then does not restart it)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SSL_CERT", "EXOTEL_"))},
        **exotel_env(sim, https_server.base_url, str(tmp_path / "out"), tmp_path / "state"),
        "ARCHIVER_POLL_INTERVAL": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    assert "certificate verify failed" in err and "SSL_CERT_FILE" in err
    assert sim.counters["api_requests"] == 0
