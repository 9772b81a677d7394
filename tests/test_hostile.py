"""Hostile and malformed input, end to end: the simulator serves the bad thing over real HTTP,
``exotel-archiver archive``/``backfill`` run through click, SeaweedFS is the store.

Every case checks the clear message (the problem, and the fix where there is one), the exit
code (0 done, 1 done with failures, 2 usage/configuration), that no traceback is shown, and what
ended up in the bucket and the manifest: a failed call is never recorded as archived.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from click.testing import CliRunner, Result

from archiver.addresses import AddressPolicy, GuardedResolver
from archiver.cli import main
from archiver.errors import UnsafeAddress
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from archiver.simulator.faults import DROP
from archiver.transfer import Partial, download
from tests.s3proxy import FaultyS3Proxy
from tests.support import exotel_env, outcome

PREFIX = "hostile"
FIX_PRIVATE = "ARCHIVER_ALLOW_PRIVATE_ADDRESSES"
LOOKALIKE = "cabfb1dfa8c5e1c7f2c458423b7716b\u0417"  # ends in a Cyrillic Ze, not a digit 3


# --- helpers -----------------------------------------------------------------------------------


def invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, args, env=env)


def clean(result: Result, code: int, *needles: str) -> str:
    """The run ended with ``code``, no traceback, and its output names every needle."""
    out = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unexpected {result.exception!r}\n{out}") from result.exception
    assert result.exit_code == code, out
    assert "Traceback" not in out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    return out


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def env(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, state: Path
) -> dict[str, str]:
    return {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.1",
    }


def stored(seaweed: Any, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket but the sealed manifest segments, key → bytes."""
    client = seaweed.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if "/_manifest/" not in item["Key"]:
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def manifest(state: Path) -> list[dict[str, Any]]:
    return read_manifest(state / "manifest.jsonl")


def nothing_archived(seaweed: Any, bucket: str, state: Path, sid: str | None = None) -> None:
    assert stored(seaweed, bucket) == {}
    assert manifest(state) == []
    if sid is not None and (state / "ledger.sqlite3").exists():
        assert outcome(state, sid) != "archived"
    spool = state / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []


def key_of(sim: Simulator, sid: str, name: str) -> str:
    created = sim.calls[sid].created.astimezone(IST)
    return f"{PREFIX}/{created:%Y/%m/%d}/{sid}/{name}"


def rehost(netloc: str, scheme: str = "http") -> Any:
    """A rewrite of pre-signed URLs onto another host (path and signature kept)."""

    def rewrite(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit((scheme, netloc, parts.path, parts.query, ""))

    return rewrite


# --- API side: call details --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", "the body is not JSON"),
        (b"", "application/json", "the body is not JSON"),
        (b'{"response": {"call_details": {"sid": ', "application/json", "not JSON"),
        (b"[1, 2, 3]", "application/json", "the JSON answer is not an object"),
        (b'{"request_id": "x"}', "application/json", "the answer has no 'response' object"),
        (
            b'{"response": {"code": 200, "status": "success"}}',
            "application/json",
            "response.call_details is missing or not an object",
        ),
        (b'{"response": {"call_details": 1e999}}', "application/json", "not an object"),
        (b"\xff\xfe\x00garbage", "application/octet-stream", "not JSON"),
    ],
)
def test_call_details_that_are_not_the_documented_json(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    body: bytes,
    content_type: str,
    message: str,
) -> None:
    call = sim.add_call()
    sim.faults.details_body, sim.faults.details_content_type = body, content_type
    out = clean(invoke(["archive", call.sid], env), 1, "FAILED", call.sid, message)
    assert "archived: 0 calls" in out
    nothing_archived(seaweed, bucket, state, call.sid)
    assert outcome(state, call.sid) == "failed"
    assert sim.counters["recording_requests"] == 0


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"created_time": DROP}, "field 'created_time' is missing or null"),
        ({"state": DROP}, "field 'state' is missing or null"),
        (
            {
                k: None
                for k in ("state", "status", "created_time", "direction", "recordings", "legs")
            },
            "is missing or null",
        ),
        ({"created_time": 1667496280}, "field 'created_time' has type int, expected str"),
        ({"state": ["terminal"]}, "field 'state' has type list, expected str"),
        ({"total_talk_time": "59"}, "field 'total_talk_time' has type str, expected int"),
        ({"total_duration": -84}, "field 'total_duration' is negative"),
        ({"digits": {"1": 2}}, "field 'digits' has type dict"),
        ({"created_time": "1970-01-01 05:30:00+05:30"}, "created_time is the 1970 sentinel"),
        ({"state": "TERMINAL"}, "unknown state 'TERMINAL'"),
        ({"status": "busy"}, "unknown status 'busy'"),
        ({"recordings": {"url": "https://x/y.mp3"}}, "'recordings' is not an array"),
        ({"recordings": [{"url": 42}]}, "recordings[0] has no 'url' string"),
        ({"recordings": [None]}, "recordings[0] has no 'url' string"),
        ({"sid": 12345}, "field 'sid' has type int"),
        ({"sid": LOOKALIKE}, "invalid call SID"),
        ({"sid": "ab\x00cd"}, "invalid call SID"),
        ({"sid": "abc\u2215..\u2215etc"}, "invalid call SID"),  # division slashes
        ({"sid": "0123456789abcdef0123456789abcdef"}, "the answer is about another call"),
    ],
)
def test_call_details_with_missing_wrong_or_unknown_fields(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    patch: dict[str, Any],
    message: str,
) -> None:
    bad, good = sim.add_call(), sim.add_call()
    sim.faults.details_patch = patch
    out = clean(invoke(["archive", bad.sid], env), 1, "FAILED", bad.sid, message)
    assert "Exotel API requests: 1," in out  # a protocol error is not retried
    nothing_archived(seaweed, bucket, state, bad.sid)
    sim.faults.details_patch = {}  # the run is not poisoned: the next call archives
    clean(invoke(["archive", good.sid], env), 0)
    assert stored(seaweed, bucket)[key_of(sim, good.sid, "recording-1.mp3")] == (
        sim.recording_bytes(good.sid, 1)
    )


def test_the_same_recording_listed_twice_is_stored_once(
    sim: Simulator,
    server: SimulatorServer,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
) -> None:
    call = sim.add_call(recordings=2, size=5000)
    url = sim.presign(server.base_url, sim.calls[call.sid], 1)
    other = sim.presign(server.base_url, sim.calls[call.sid], 2)
    # the first file twice (once with another signature), then the second
    resigned = url.replace("X-Amz-Expires=300", "X-Amz-Expires=299")
    sim.faults.details_patch = {"recordings": [{"url": url}, {"url": resigned}, {"url": other}]}
    clean(invoke(["archive", call.sid], env), 0, "archived: 1 calls")
    objects = stored(seaweed, bucket)
    recordings = {k: v for k, v in objects.items() if "/recording-" in k}
    assert recordings == {
        key_of(sim, call.sid, "recording-1.mp3"): sim.recording_bytes(call.sid, 1),
        key_of(sim, call.sid, "recording-3.mp3"): sim.recording_bytes(call.sid, 2),
    }
    entries = [e for e in manifest(state) if e["kind"] == "recording"]
    assert [(e["index"], e["sha256"]) for e in entries] == [
        (1, hashlib.sha256(sim.recording_bytes(call.sid, 1)).hexdigest()),
        (3, hashlib.sha256(sim.recording_bytes(call.sid, 2)).hexdigest()),
    ]
    assert sim.counters["recording_requests"] == 2


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://recordings.example/a.mp3",
        "javascript:alert(1)",
        "data:audio/mpeg;base64,SUQzBAAAAAAAAP/7kGQ=",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "//recordings.example/a.mp3",
    ],
)
def test_recording_urls_that_are_not_http_are_refused(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path, url: str
) -> None:
    call = sim.add_call()
    sim.faults.details_recordings = lambda _signed: url
    clean(invoke(["archive", call.sid], env), 1, "FAILED", "is not an http(s) URL")
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["recording_requests"] == 0


@pytest.mark.parametrize(
    "host, why",
    [
        ("169.254.169.254", "the cloud metadata address"),
        ("[fd00:ec2::254]", "the cloud metadata address"),
        ("[::ffff:169.254.169.254]", "the cloud metadata address"),
        ("169.254.10.1", "link-local"),
        ("[fe80::1]", "link-local"),
        ("127.0.0.2", "loopback"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.10", "private"),
        ("[fd12:3456::1]", "private"),
        ("100.64.0.1", "not a public address"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_recording_urls_to_non_public_addresses_are_refused(
    sim: Simulator,
    server: SimulatorServer,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    host: str,
    why: str,
) -> None:
    call = sim.add_call()
    port = urlsplit(server.base_url).port
    sim.faults.details_recordings = rehost(f"{host}:{port}")
    out = clean(invoke(["archive", call.sid], env), 1, "FAILED", f"({why})", "refused")
    assert "X-Amz-Signature" not in out and "X-Amz-Credential" not in out
    nothing_archived(seaweed, bucket, state, call.sid)
    assert outcome(state, call.sid) == "failed"
    assert sim.counters["v3_call_details"] == 1  # refused for good: no fresh URL, no retry
    if why not in ("the cloud metadata address", "unspecified", "multicast"):
        assert FIX_PRIVATE in out


@pytest.mark.parametrize("allow", ["off", "on"])
def test_private_recording_host_needs_the_setting_but_the_api_host_is_trusted(
    sim: Simulator,
    server: SimulatorServer,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    allow: str,
) -> None:
    """The API is configured as http://localhost:PORT (trusted); recordings come from
    127.0.0.1 — the same simulator, but not the configured host."""
    call = sim.add_call(size=20_000)
    port = urlsplit(server.base_url).port
    local = f"http://localhost:{port}"
    sim.faults.details_recordings = rehost(f"127.0.0.1:{port}")
    run_env = {
        **env,
        "EXOTEL_API_URL": local,
        "EXOTEL_V1_API_URL": local,
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": allow,
    }
    if allow == "off":
        clean(invoke(["archive", call.sid], run_env), 1, "127.0.0.1 (loopback)", FIX_PRIVATE)
        nothing_archived(seaweed, bucket, state, call.sid)
    else:
        clean(invoke(["archive", call.sid], run_env), 0, "archived: 1 calls")
        key = key_of(sim, call.sid, "recording-1.mp3")
        assert stored(seaweed, bucket)[key] == sim.recording_bytes(call.sid, 1)


def test_the_metadata_address_is_refused_even_when_private_addresses_are_allowed(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call()
    sim.faults.details_recordings = rehost("169.254.169.254")
    run_env = {**env, "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on"}
    clean(invoke(["archive", call.sid], run_env), 1, "the cloud metadata address")
    nothing_archived(seaweed, bucket, state, call.sid)


def test_a_redirect_to_the_metadata_address_is_not_followed(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call()
    sim.faults.redirect_to = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    sim.faults.recording_script.extend(["redirect"] * 5)
    clean(invoke(["archive", call.sid], env), 1, "169.254.169.254 (the cloud metadata address)")
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["recording_requests"] == 1


def test_a_redirect_loop_is_cut_short(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call()
    sim.faults.recording_script.extend(["redirect"] * 20)
    clean(invoke(["archive", call.sid], env), 1, "more than 3 redirects")
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["recording_requests"] == 4  # the first request and three hops


class _StaticResolver(AbstractResolver):
    """DNS as an attacker controls it: every name resolves to ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("allow", [False, True])
async def test_a_public_looking_name_resolving_to_loopback_is_refused_at_connect_time(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, allow: bool
) -> None:
    """DNS rebinding: the URL names a public-looking host; at connect time it resolves to
    127.0.0.1. The check runs on the resolved address, in the session's own connector."""
    import aiohttp

    call = sim.add_call(size=9000)
    port = urlsplit(server.base_url).port
    url = rehost(f"recordings.example.com:{port}")(
        sim.presign(server.base_url, sim.calls[call.sid], 1)
    )
    policy = AddressPolicy.for_hosts([server.base_url], allow_private=allow)
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, inner=_StaticResolver("127.0.0.1"))
    )
    policy.check_url(url, what="up front")  # a name: nothing to say before resolving it
    with (tmp_path / "spool").open("w+b") as spool:
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            if not allow:
                with pytest.raises(UnsafeAddress, match=r"recordings\.example\.com.*loopback"):
                    await download(session, url, Partial(spool), what="rec", policy=policy)
                assert sim.counters["recording_requests"] == 0
                assert spool.seek(0, 2) == 0
            else:
                got = await download(session, url, Partial(spool), what="rec", policy=policy)
                spool.seek(0)
                assert spool.read() == sim.recording_bytes(call.sid, 1) and got.size == 9000


# --- API side: extreme sizes -------------------------------------------------------------------


def test_a_very_long_custom_field_is_archived_as_received(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call(size=3000)
    sim.faults.details_patch = {"custom_field": "\u0905" * 1_000_000}  # 3 MB of UTF-8
    clean(invoke(["archive", call.sid], env), 0, "archived: 1 calls")
    objects = stored(seaweed, bucket)
    details = json.loads(objects[key_of(sim, call.sid, "call.json")])
    assert details["response"]["call_details"]["custom_field"] == "\u0905" * 1_000_000
    [entry] = [e for e in manifest(state) if e["kind"] == "call_details"]
    assert (
        entry["sha256"] == hashlib.sha256(objects[key_of(sim, call.sid, "call.json")]).hexdigest()
    )


def test_an_answer_over_16_mib_fails_the_call_not_the_run(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    huge, fine = sim.add_call(), sim.add_call()
    sim.faults.details_patch = {"custom_field": "x" * (17 * 1024 * 1024)}
    clean(invoke(["archive", huge.sid], env), 1, "answer larger than 16777216 bytes")
    nothing_archived(seaweed, bucket, state, huge.sid)
    sim.faults.details_patch = {}
    clean(invoke(["archive", fine.sid], env), 0)


def test_a_10000_character_direction_makes_a_bounded_folder(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call(size=3000)
    sim.faults.details_patch = {"direction": "outbound-" + "x" * 10_000}
    run_env = {**env, "ARCHIVER_KEY_TEMPLATE": "{direction}/{call_sid}"}
    clean(invoke(["archive", call.sid], run_env), 0, "archived: 1 calls")
    folder = ("outbound-" + "x" * 10_000)[:64]
    assert stored(seaweed, bucket)[f"{PREFIX}/{folder}/{call.sid}/recording-1.mp3"] == (
        sim.recording_bytes(call.sid, 1)
    )


# --- API side: the v1 listing (backfill) --------------------------------------------------------


@pytest.fixture
def listed_day(sim: Simulator) -> tuple[str, list[Any]]:
    """Three calls with recordings, two days ago; the day as YYYY-MM-DD."""
    day = datetime.now(IST) - timedelta(days=2)
    noon = day.replace(hour=12, minute=0, second=0, microsecond=0)
    calls = [sim.add_call(created=noon + timedelta(minutes=n), size=2000) for n in range(3)]
    return f"{noon:%Y-%m-%d}", calls


def backfill(day: str, env: dict[str, str]) -> Result:
    return invoke(["backfill", "--since", day, "--until", day], env)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>maintenance</html>", "the body is not JSON"),
        (b'{"Calls": "none", "Metadata": {}}', "no 'Calls' list or 'Metadata' object"),
        (b'{"Calls": [], "Metadata": []}', "no 'Calls' list or 'Metadata' object"),
        (b"null", "the JSON answer is not an object"),
    ],
)
def test_v1_pages_that_are_not_the_documented_json(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    listed_day: tuple[str, list[Any]],
    body: bytes,
    message: str,
) -> None:
    day, _ = listed_day
    sim.faults.bulk_body = body
    clean(backfill(day, env), 1, "error:", message)
    nothing_archived(seaweed, bucket, state)
    assert sim.counters["v3_call_details"] == 0
    sim.faults.bulk_body = None  # a failed listing was not saved as complete: listed again
    clean(backfill(day, env), 0, "archived: 3 calls")
    assert len([k for k in stored(seaweed, bucket) if "/recording-" in k]) == 3


def test_a_v1_page_over_16_mib_is_refused(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    listed_day: tuple[str, list[Any]],
) -> None:
    day, _ = listed_day
    item = {"Sid": "a" * 32, "DateCreated": "2026-01-01 00:00:00", "Status": "completed"}
    page = {"Calls": [item] * 200_000, "Metadata": {"NextPageUri": None}}
    sim.faults.bulk_body = json.dumps(page).encode()
    assert len(sim.faults.bulk_body) > 16 * 1024 * 1024
    clean(backfill(day, env), 1, "answer larger than 16777216 bytes")
    nothing_archived(seaweed, bucket, state)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"Sid": "../../etc/passwd"}, "invalid call SID"),
        ({"Sid": LOOKALIKE}, "invalid call SID"),
        ({"Sid": None}, "invalid call SID"),
        ({"DateCreated": "yesterday"}, "is not YYYY-MM-DD HH:MM:SS"),
        ({"DateCreated": 1700000000}, "DateCreated is not a string"),
    ],
)
def test_v1_items_with_hostile_fields_are_skipped_and_reported(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    listed_day: tuple[str, list[Any]],
    patch: dict[str, Any],
    message: str,
) -> None:
    day, _ = listed_day
    sim.faults.bulk_items_patch = patch
    out = clean(backfill(day, env), 1, "GET call list", message)
    assert "page 1" in out
    nothing_archived(seaweed, bucket, state)
    assert sim.counters["v3_call_details"] == 0


@pytest.mark.parametrize(
    "next_uri, message",
    [
        ("https://{host}/v1/Accounts/simaccount/Calls.json?After=x", "changes the scheme"),
        ("file:///etc/passwd", "changes the scheme"),
        ("//evil.example/v1/Accounts/simaccount/Calls.json", "points to another host"),
        ("http://169.254.169.254/latest/meta-data/", "points to another host"),
        ("http://{host}@evil.example/v1/", "points to another host"),
    ],
)
def test_a_next_page_uri_to_another_scheme_or_host_is_refused(
    sim: Simulator,
    server: SimulatorServer,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    listed_day: tuple[str, list[Any]],
    next_uri: str,
    message: str,
) -> None:
    day, _ = listed_day
    sim.faults.next_page_uri = next_uri.format(host=urlsplit(server.base_url).netloc)
    clean(backfill(day, env), 1, "NextPageUri", message)
    assert sim.counters["v1_bulk"] == 1  # never followed
    nothing_archived(seaweed, bucket, state)


# --- recording side ----------------------------------------------------------------------------


def test_a_gzip_encoded_recording_is_stored_decoded(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call(size=300_000)
    sim.faults.recording_script.append("gzip")
    clean(invoke(["archive", call.sid], env), 0, "archived: 1 calls")
    body = sim.recording_bytes(call.sid, 1)
    assert gzip.compress(body) != body  # the wire carried other bytes than the audio
    key = key_of(sim, call.sid, "recording-1.mp3")
    assert stored(seaweed, bucket)[key] == body
    [entry] = [e for e in manifest(state) if e["kind"] == "recording"]
    assert entry["sha256"] == hashlib.sha256(body).hexdigest() and entry["size"] == len(body)
    assert entry["format"] == "mp3"
    head = seaweed.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "audio/mpeg" and "ContentEncoding" not in head


@pytest.mark.parametrize(
    "fault, message",
    [
        ("gzip_lie", "the encoded body does not decode"),
        ("brotli", "encoded as 'br', which the archiver does not decode"),
    ],
)
def test_recordings_with_an_encoding_that_cannot_be_decoded_are_refused(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    fault: str,
    message: str,
) -> None:
    call = sim.add_call()
    sim.faults.recording_script.extend([fault] * 5)
    clean(invoke(["archive", call.sid], env), 1, "FAILED", message)
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["recording_requests"] == 1  # permanent: not retried


@pytest.mark.parametrize(
    "fault, size, message",
    [
        ("endless", 64 * 1024, "goes on past the 1 MiB limit"),
        ("gzip_bomb", 64 * 1024, "goes on past the 1 MiB limit"),
        ("huge_length", 64 * 1024, "announces 10737418240 bytes, over the 1 MiB limit"),
        (None, 1024 * 1024 + 1, "announces 1048577 bytes, over the 1 MiB limit"),
    ],
)
def test_recordings_over_the_size_cap_fail_for_good_and_leave_nothing(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    fault: str | None,
    size: int,
    message: str,
) -> None:
    call = sim.add_call(size=size)
    if fault:
        sim.faults.recording_script.extend([fault] * 5)
    run_env = {**env, "ARCHIVER_MAX_RECORDING_SIZE": "1"}
    out = clean(invoke(["archive", call.sid], run_env), 1, "FAILED", message)
    assert "ARCHIVER_MAX_RECORDING_SIZE" in out
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["recording_requests"] == 1  # not retried


def test_a_recording_of_exactly_the_cap_is_archived(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path
) -> None:
    call = sim.add_call(size=1024 * 1024)
    clean(invoke(["archive", call.sid, "--max-recording-size", "1"], env), 0, "archived: 1")
    key = key_of(sim, call.sid, "recording-1.mp3")
    assert stored(seaweed, bucket)[key] == sim.recording_bytes(call.sid, 1)


# --- storage side ------------------------------------------------------------------------------


def test_a_missing_bucket_stops_a_backfill_before_anything_is_fetched(
    sim: Simulator, env: dict[str, str], listed_day: tuple[str, list[Any]]
) -> None:
    day, _ = listed_day
    run_env = {**env, "ARCHIVER_DESTINATION": "s3://no-such-bucket-for-backfill/x"}
    clean(backfill(day, run_env), 2, "no-such-bucket-for-backfill", "does not exist")
    assert sim.counters["v3_call_details"] == 0 and sim.counters["recording_requests"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        # HEAD has no error body: the store's 403 can only say "denied" (both causes named)
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789abcdef"}, "check the credentials"),
        ({"AWS_ACCESS_KEY_ID": "AKIANOTKNOWNANYWHERE"}, "check the credentials"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "no AWS credentials found"),
    ],
)
def test_wrong_or_missing_storage_credentials_exit_2_without_showing_them(
    sim: Simulator,
    env: dict[str, str],
    seaweed: Any,
    bucket: str,
    state: Path,
    change: dict[str, str],
    message: str,
) -> None:
    call = sim.add_call()
    out = clean(invoke(["archive", call.sid], {**env, **change}), 2, "error:", message)
    for value in change.values():
        assert not value or value not in out
    assert seaweed.secret_key not in out
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["v3_call_details"] == 0  # stopped before the first call


class _WrongRegionS3(FaultyS3Proxy):
    """SeaweedFS ignores the region; AWS does not. A bucket in eu-west-1 asked from another
    region answers as AWS does: HEAD → 301, others → 400 AuthorizationHeaderMalformed; with the
    ``x-amz-bucket-region`` header when ``tell`` (AWS itself), without it when not (some
    gateways in front of S3)."""

    REGION = "eu-west-1"
    tell = True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/s3/", auth)
        if scope and scope.group(1) != self.REGION:
            self.log.append(("WRONG-REGION", request.path_qs))
            headers = {"x-amz-bucket-region": self.REGION} if self.tell else {}
            if request.method == "HEAD":
                return web.Response(status=301, headers=headers)
            xml = (
                "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region "
                f"'{scope.group(1)}' is wrong; expecting '{self.REGION}'</Message></Error>"
            )
            return web.Response(
                status=400, text=xml, content_type="application/xml", headers=headers
            )
        return await super()._handle(request)


@pytest.mark.parametrize("tell", [True, False])
def test_a_bucket_in_another_region(
    sim: Simulator, seaweed: Any, env: dict[str, str], bucket: str, state: Path, tell: bool
) -> None:
    """Told the bucket's region (as AWS tells it), botocore re-signs for it and the archive is
    complete; not told, the run stops with exit 2 naming AWS_DEFAULT_REGION."""
    call = sim.add_call(size=4000)
    key = key_of(sim, call.sid, "recording-1.mp3")
    with _WrongRegionS3(seaweed.endpoint) as proxy:
        proxy.tell = tell
        run_env = {**env, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        result = invoke(["archive", call.sid], run_env)
        assert any(method == "WRONG-REGION" for method, _ in proxy.log)
        if tell:
            clean(result, 0, "archived: 1 calls")
            assert stored(seaweed, bucket)[key] == sim.recording_bytes(call.sid, 1)
            return
        clean(result, 2, "is in another region", "set AWS_DEFAULT_REGION")
        nothing_archived(seaweed, bucket, state, call.sid)
        right = {**run_env, "AWS_DEFAULT_REGION": "eu-west-1"}
        clean(invoke(["archive", call.sid], right), 0, "archived: 1 calls")
    assert stored(seaweed, bucket)[key] == sim.recording_bytes(call.sid, 1)


def test_object_lock_required_but_absent_exits_2_and_writes_nothing(
    sim: Simulator, env: dict[str, str], seaweed: Any, bucket: str, state: Path, tmp_path: Path
) -> None:
    call = sim.add_call()
    config = tmp_path / "archiver.toml"
    config.write_text(
        '[retention]\ndefault = "sebi"\n[retention.classes.sebi]\nperiod = "5y"\n'
        'lock = "compliance"\nat_end = "keep"\n'
    )
    out = clean(
        invoke(["--config", str(config), "archive", call.sid], env),
        2,
        "sebi",
        "does not have it enabled",
        "Object Lock",
    )
    assert "Nothing was archived" in out
    nothing_archived(seaweed, bucket, state, call.sid)
    assert sim.counters["v3_call_details"] == 0


# --- configuration and command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--since", "2026-02-30", "--until", "2026-03-01"], "'2026-02-30' does not match"),
        (["--since", "yesterday", "--until", "2026-03-01"], "does not match the format"),
        (["--range", "2026-05-01...2026-05-02"], "is not SINCE..UNTIL"),
    ],
)
def test_bad_dates_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    clean(invoke(["backfill", *args], {"ARCHIVER_CONFIG": ""}), 2, message)


def test_since_after_until_is_named_with_the_fix(sim: Simulator, env: dict[str, str]) -> None:
    today = datetime.now(IST).date()
    since, until = today - timedelta(days=1), today - timedelta(days=5)
    clean(
        invoke(["backfill", "--since", str(since), "--until", str(until)], env),
        2,
        f"--since {since} is after --until {until}: swap them",
    )
    assert sim.counters["api_requests"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ARCHIVER_DESTINATION": "s3://Bad_Bucket/x"}, "'Bad_Bucket' is not a valid bucket name"),
        ({"ARCHIVER_DESTINATION": "s3://"}, "is not a valid bucket name"),
        ({"ARCHIVER_DESTINATION": "s3://good-bucket/../../etc"}, "invalid object key"),
        ({"ARCHIVER_DESTINATION": "ftp://host/x"}, "ftp://host/x"),
        ({"ARCHIVER_DESTINATION": ""}, "no destination set"),
        ({"EXOTEL_REGION": "frankfurt"}, "must be one of singapore, mumbai"),
        ({"EXOTEL_API_KEY": ""}, "Exotel credentials missing: set EXOTEL_API_KEY"),
        ({"EXOTEL_ACCOUNT_SID": ""}, "EXOTEL_ACCOUNT_SID"),
        ({"ARCHIVER_MAX_RECORDING_SIZE": "0"}, "ARCHIVER_MAX_RECORDING_SIZE must be between"),
        (
            {"ARCHIVER_MAX_RECORDING_SIZE": "2GiB"},
            "ARCHIVER_MAX_RECORDING_SIZE must be a whole number",
        ),
        ({"ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "maybe"}, "must be one of on, off"),
    ],
)
def test_bad_settings_exit_2_naming_the_problem(
    sim: Simulator, env: dict[str, str], change: dict[str, str], message: str
) -> None:
    call = sim.add_call()
    clean(invoke(["archive", call.sid], {**env, **change}), 2, "error", message)
    assert sim.counters["v3_call_details"] == 0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_config_file_that_is_a_directory(tmp_path: Path, how: str) -> None:
    args, env = ["archive", "abc"], {"ARCHIVER_CONFIG": str(tmp_path)}
    if how == "flag":
        args, env = ["--config", str(tmp_path), *args], {"ARCHIVER_CONFIG": ""}
    clean(invoke(args, env), 2, "--config", "is a directory")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root reads a file with permissions 000 anyway; the directory case covers OSError",
)
def test_an_unreadable_config_file(tmp_path: Path) -> None:
    config = tmp_path / "archiver.toml"
    config.write_text("[exotel]\n")
    config.chmod(0)
    try:
        clean(
            invoke(["--config", str(config), "archive", "abc"], {"ARCHIVER_CONFIG": ""}),
            2,
            "cannot read config file",
            "Permission denied",
        )
    finally:
        config.chmod(0o600)


def test_an_unknown_region_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "archiver.toml"
    config.write_text('[exotel]\nregion = "mars"\n')
    clean(
        invoke(["--config", str(config), "archive", "abc"], {"ARCHIVER_CONFIG": ""}),
        2,
        f"exotel.region in config file {config} must be one of singapore, mumbai",
    )


@pytest.mark.parametrize(
    "sid", [LOOKALIKE, "abc%2F..%2Fetc", "a" * 65, "abc def", "", "caf\u00e9", "..", "a\\b"]
)
def test_hostile_call_sid_arguments_are_usage_errors(sid: str) -> None:
    clean(invoke(["archive", sid], {"ARCHIVER_CONFIG": ""}), 2, "invalid call SID")
