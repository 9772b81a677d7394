"""Private recording URLs: HTTP Basic to the allow-listed Exotel hosts only, over https (H1).

An account without pre-signed URLs (``Simulator(private_recordings=True)``) hands out unsigned
recording URLs served only with HTTP Basic of the API key and token. The archiver sends them
only under the rules of ``archiver.recording_auth``; every test here asserts on what a real
listening server received (the simulator counts each request that carried ``Authorization``).

The credentials go only to port 443 (the rule), so the servers here listen on port 443 of two
random loopback addresses (127.x.y.z, all of 127/8 is loopback on Linux): that needs root or
CAP_NET_BIND_SERVICE, and those tests are skipped, saying so, where binding port 443 is refused.
Names (recordings.exotel.com and its look-alikes) are resolved to the first address by the
session's resolver; the certificate (made with the openssl CLI) names all of them, so TLS
passes and the request really reaches the server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from archiver.addresses import AddressPolicy, GuardedResolver
from archiver.config import load_settings
from archiver.errors import ArchiverError, ConfigError, RecordingAuthRequired
from archiver.recording_auth import RecordingAuth, refusal, same_origin
from archiver.redact import Redactor
from archiver.simulator import Simulator, SimulatorServer
from archiver.simulator.calls import SimCall
from archiver.transfer import Partial, download
from tests.seaweed import SeaweedFS
from tests.support import child_env, exotel_env, ledger_rows, recordings_in, run_archiver

PREFIX = "private"
EXOTEL = "recordings.exotel.com"
CYRILLIC_E = "\u0435"  # looks like "e"
LOOKALIKE_NAMES = (
    f"{EXOTEL}.evil.com",
    f"evil{EXOTEL}",
    f"r{CYRILLIC_E}cordings.exotel.com".encode("idna").decode(),  # xn--... punycode
)


# --- helpers -----------------------------------------------------------------------------------


def basic(sim: Simulator) -> str:
    return base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()


def secret_forms(sim: Simulator) -> dict[str, str]:
    return {sim.api_key: "api key", sim.api_token: "api token", basic(sim): "basic header"}


def leaks(where: str, data: bytes, sim: Simulator) -> list[str]:
    return [
        f"{label} in {where}" for form, label in secret_forms(sim).items() if form.encode() in data
    ]


def private_sim(seed: int = 18) -> Simulator:
    return Simulator(
        api_key="exokey" + random.randbytes(8).hex(),
        api_token="exotok" + random.randbytes(10).hex(),
        seed=seed,
        private_recordings=True,
    )


def path_of(sim: Simulator, call: SimCall, index: int = 1) -> str:
    """The path (and nothing else) of a recording's unsigned URL."""
    return sim.private_url("", call, index)


def sent_credentials(sim: Simulator) -> int:
    return sim.counters.get("credentialed_requests", 0)


class ToOne(AbstractResolver):
    """Every name resolves to one loopback address (the servers of this module)."""

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
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


# --- fixtures: two loopback addresses on port 443, a certificate naming everything ------------


def _can_bind(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def addresses() -> tuple[str, str]:
    """Two loopback addresses whose ports 443, 444 and 80 are free here."""
    rng = random.Random()
    for _ in range(20):
        a, b, c = rng.randint(1, 254), rng.randint(1, 254), rng.randint(1, 250)
        pair = (f"127.{a}.{b}.{c}", f"127.{a}.{b}.{c + 1}")
        if all(_can_bind(h, p) for h in pair for p in (443, 444, 80)):
            return pair
    pytest.skip("cannot listen on port 443 of a loopback address here (needs root)")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory, addresses: tuple[str, str]) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "cert.pem", folder / "key.pem"
    names = [EXOTEL, *LOOKALIKE_NAMES, "localhost"]
    alt = ",".join([*(f"IP:{a}" for a in addresses), *(f"DNS:{n}" for n in names)])
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(crt), "-subj", f"/CN={EXOTEL}"),
            *("-addext", f"subjectAltName={alt}"),
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    return context


@contextlib.contextmanager
def serving(
    sim: Simulator, host: str, port: int, cert: tuple[Path, Path] | None
) -> Iterator[SimulatorServer]:
    context = server_context(cert) if cert is not None else None
    with SimulatorServer(sim, host, port, ssl_context=context) as srv:
        yield srv


def cli_env(
    sim: Simulator, base_url: str, seaweed: SeaweedFS, bucket: str, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """A child archiver's environment: ``sim`` at ``base_url``, SeaweedFS, nothing else."""
    return child_env(
        **{
            **seaweed.env(),
            **exotel_env(sim, base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
            "ARCHIVER_ATTEMPTS": "2",
            "ARCHIVER_MAX_WAIT": "0.2",
            **extra,
        }
    )


def no_leak_anywhere(sim: Simulator, seaweed: SeaweedFS, bucket: str, *outputs: Any) -> None:
    found: list[str] = []
    for n, text in enumerate(outputs):
        found += leaks(f"output {n}", text.encode() if isinstance(text, str) else text, sim)
    client = seaweed.client()
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        found += leaks(item["Key"], body, sim)
    assert not found


# --- the whole command, over real HTTPS --------------------------------------------------------


def test_a_private_recording_is_archived_byte_for_byte_over_https_to_an_allow_listed_host(
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    sim = private_sim()
    call = sim.add_call(recordings=2, size=300 * 1024)
    sim.faults.recording_script = deque(["cut"])  # the first body is cut: a Range resume follows
    host = addresses[0]
    with serving(sim, host, 443, cert) as srv:
        env = cli_env(
            sim,
            srv.base_url,
            seaweed,
            bucket,
            tmp_path,
            SSL_CERT_FILE=str(cert[0]),
            ARCHIVER_RECORDING_AUTH_HOSTS=f"{EXOTEL},{host}",
        )
        report = tmp_path / "report.json"
        done = run_archiver(["archive", call.sid, "--report", str(report)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = recordings_in(seaweed, bucket, PREFIX)
    assert sorted(stored.values()) == sorted(sim.recording_bytes(call.sid, i) for i in (1, 2))
    assert sim.counters["range_requests"] == 1  # the resume carried the credentials too
    assert sim.counters["unauthorized_recording_requests"] == 0
    assert sent_credentials(sim) == sim.counters["recording_requests"] == 3
    assert sim.counters[f"credentialed_requests:{host}"] == 3
    no_leak_anywhere(sim, seaweed, bucket, done.stdout, done.stderr, report.read_bytes())


def _assert_failed_clearly(done: subprocess.CompletedProcess[str], state: Path, sid: str) -> str:
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    ((outcome, reason, detail),) = ledger_rows(
        state, f"SELECT outcome, reason, detail FROM calls WHERE call_sid = '{sid}'"
    )
    assert (outcome, reason) == ("failed", "recording_auth_required")
    assert "private" in detail and "ARCHIVER_RECORDING_AUTH_HOSTS" in detail
    assert "pre-signed" in detail and "https" in detail
    assert detail in done.stderr + done.stdout
    return str(detail)


def test_a_host_not_allow_listed_gets_no_credentials_and_the_call_fails_naming_the_fix(
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    sim = private_sim()
    call = sim.add_call()
    with serving(sim, addresses[0], 443, cert) as srv:
        env = cli_env(sim, srv.base_url, seaweed, bucket, tmp_path, SSL_CERT_FILE=str(cert[0]))
        done = run_archiver(["archive", call.sid], env)  # the default list: recordings.exotel.com
    detail = _assert_failed_clearly(done, tmp_path / "state", call.sid)
    assert "not in ARCHIVER_RECORDING_AUTH_HOSTS" in detail and addresses[0] in detail
    assert sent_credentials(sim) == 0
    assert sim.counters["unauthorized_recording_requests"] == 1  # refused once, not retried
    no_leak_anywhere(sim, seaweed, bucket, done.stdout, done.stderr)


def test_plain_http_gets_no_credentials_even_to_an_allow_listed_host(
    seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    sim = private_sim()
    call = sim.add_call()
    with SimulatorServer(sim) as srv:
        env = cli_env(
            sim, srv.base_url, seaweed, bucket, tmp_path, ARCHIVER_RECORDING_AUTH_HOSTS="127.0.0.1"
        )
        done = run_archiver(["archive", call.sid], env)
    detail = _assert_failed_clearly(done, tmp_path / "state", call.sid)
    assert "not https" in detail
    assert sent_credentials(sim) == 0
    no_leak_anywhere(sim, seaweed, bucket, done.stdout, done.stderr)


def test_a_redirect_to_another_allow_listed_server_never_carries_the_credentials(
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    sim = private_sim()
    call = sim.add_call()
    other = Simulator(sim.account_sid, sim.api_key, sim.api_token, private_recordings=True)
    first, second = addresses
    with serving(sim, first, 443, cert) as srv, serving(other, second, 443, cert):
        sim.faults.redirect_to = f"https://{second}{path_of(sim, call)}"
        sim.faults.recording_script = deque(["redirect"])
        env = cli_env(
            sim,
            srv.base_url,
            seaweed,
            bucket,
            tmp_path,
            SSL_CERT_FILE=str(cert[0]),
            ARCHIVER_RECORDING_AUTH_HOSTS=f"{first},{second}",
        )
        done = run_archiver(["archive", call.sid], env)
    detail = _assert_failed_clearly(done, tmp_path / "state", call.sid)
    assert "redirect" in detail
    assert sim.counters[f"credentialed_requests:{first}"] == 1  # the first hop, its own host
    assert other.counters["recording_requests"] == 1  # reached, and without credentials
    assert sent_credentials(other) == 0


# --- one download, URL by URL, each against a real listening server -----------------------------


@pytest.fixture(scope="module")
def lookalike_servers(
    addresses: tuple[str, str], cert: tuple[Path, Path]
) -> Iterator[tuple[Simulator, Simulator, SimCall]]:
    """A private account on ``addresses[0]`` (443 and 444 https, 80 http) and a second one on
    ``addresses[1]`` (443), with one call registered in both."""
    sim, other = private_sim(seed=1), private_sim(seed=1)
    other.api_key, other.api_token = sim.api_key, sim.api_token  # it would accept them
    call = sim.add_call()
    other._register(call)
    first, second = addresses
    with (
        serving(sim, first, 443, cert),
        serving(sim, first, 444, cert),
        serving(sim, first, 80, None),
        serving(other, second, 443, cert),
    ):
        yield sim, other, call


async def fetch(url: str, sim: Simulator, addresses: tuple[str, str], cert: Path) -> str:
    """``download(url)`` with the credentials for recordings.exotel.com and both addresses,
    every name resolved to the first address: ``ok`` or the error's reason."""
    auth = RecordingAuth.from_credentials(sim.api_key, sim.api_token, (EXOTEL, *addresses))
    policy = AddressPolicy(allow_private=True)
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, ToOne(addresses[0])),
        ssl=ssl.create_default_context(cafile=str(cert)),
    )
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:
        with tempfile.TemporaryFile() as spool:
            try:
                await download(
                    session, url, Partial(spool), what="recording 1", policy=policy, auth=auth
                )
            except ArchiverError as exc:
                assert sim.api_token not in str(exc) and basic(sim) not in str(exc)
                return type(exc).__name__
    return "ok"


POSITIVE = {
    "the host itself": "https://{exotel}{path}",
    "port 443 written out": "https://{exotel}:443{path}",
    "scheme in upper case": "HTTPS://{exotel}{path}",
}
REACHES_THE_SERVER = {
    "longer name": "https://{exotel}.evil.com{path}",
    "name with a prefix": "https://evil{exotel}{path}",
    "punycode look-alike": "https://" + LOOKALIKE_NAMES[2] + "{path}",
    "upper case": "https://RECORDINGS.EXOTEL.COM{path}",
    "mixed case": "https://Recordings.Exotel.com{path}",
    "port 444": "https://{exotel}:444{path}",
    "plain http": "http://{exotel}{path}",
    "plain http, port 80": "http://{exotel}:80{path}",
    "a signature-like query": "https://{exotel}{path}?Signature=abc&Expires=1",
    "double-encoded X-Amz": "https://{exotel}{path}?X%252DAmz%252DSignature=1",
}
REFUSED_BEFORE_ANY_CONNECTION = {
    "user-info naming the host": "https://{exotel}@{first}:443{path}",
    "user and password": "https://user:pass@{exotel}{path}",
    "host and port as user-info": "https://{exotel}:443@{first}{path}",
    "backslash before @": "https://{first}:443\\@{exotel}{path}",
    "unicode look-alike": f"https://r{CYRILLIC_E}cordings.exotel.com{{path}}",
    "trailing dot": "https://{exotel}.{path}",
}


def _url(template: str, sim: Simulator, call: SimCall, addresses: tuple[str, str]) -> str:
    return template.format(exotel=EXOTEL, first=addresses[0], path=path_of(sim, call))


@pytest.mark.parametrize("template", POSITIVE.values(), ids=POSITIVE.keys())
async def test_the_allow_listed_host_over_https_gets_the_credentials(
    template: str,
    lookalike_servers: tuple[Simulator, Simulator, SimCall],
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
) -> None:
    """The control: the harness below can send credentials, so its negatives mean something."""
    sim, _, call = lookalike_servers
    before = sent_credentials(sim)
    assert await fetch(_url(template, sim, call, addresses), sim, addresses, cert[0]) == "ok"
    assert sent_credentials(sim) == before + 1


@pytest.mark.parametrize("template", REACHES_THE_SERVER.values(), ids=REACHES_THE_SERVER.keys())
async def test_look_alike_hosts_ports_and_schemes_get_no_credentials(
    template: str,
    lookalike_servers: tuple[Simulator, Simulator, SimCall],
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
) -> None:
    sim, _, call = lookalike_servers
    before, reached = sent_credentials(sim), sim.counters["recording_requests"]
    got = await fetch(_url(template, sim, call, addresses), sim, addresses, cert[0])
    assert got == "RecordingAuthRequired"  # the server answered 401: it got no credentials
    assert sim.counters["recording_requests"] == reached + 1
    assert sent_credentials(sim) == before


@pytest.mark.parametrize(
    "template",
    REFUSED_BEFORE_ANY_CONNECTION.values(),
    ids=REFUSED_BEFORE_ANY_CONNECTION.keys(),
)
async def test_user_info_tricks_never_connect_at_all(
    template: str,
    lookalike_servers: tuple[Simulator, Simulator, SimCall],
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
) -> None:
    sim, other, call = lookalike_servers
    before, reached = sent_credentials(sim), sim.counters["recording_requests"]
    other_credentials = sent_credentials(other)
    got = await fetch(_url(template, sim, call, addresses), sim, addresses, cert[0])
    assert got in ("UnsafeAddress", "BadUrl", "RecordingAuthRequired"), got
    assert sent_credentials(sim) == before and sent_credentials(other) == other_credentials
    if got != "RecordingAuthRequired":
        assert sim.counters["recording_requests"] == reached


async def test_a_pre_signed_url_on_the_allow_listed_host_gets_no_credentials(
    lookalike_servers: tuple[Simulator, Simulator, SimCall],
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
) -> None:
    """With an Authorization header too, S3 (and the simulator) would answer 400."""
    sim, _, call = lookalike_servers
    before = sent_credentials(sim)
    url = sim.presign(f"https://{EXOTEL}", call, 1)
    assert await fetch(url, sim, addresses, cert[0]) == "ok"
    assert sent_credentials(sim) == before


@pytest.mark.parametrize("where", ["second", "http", "port 444"])
async def test_a_redirect_off_the_origin_drops_the_credentials(
    where: str,
    lookalike_servers: tuple[Simulator, Simulator, SimCall],
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
) -> None:
    sim, other, call = lookalike_servers
    target = {
        "second": f"https://{addresses[1]}",  # allow-listed too, but another origin
        "http": f"http://{EXOTEL}",
        "port 444": f"https://{EXOTEL}:444",
    }[where]
    sim.faults.redirect_to = target + path_of(sim, call)
    sim.faults.recording_script = deque(["redirect"])
    before, other_before = sent_credentials(sim), other.counters["recording_requests"]
    other_credentials = sent_credentials(other)
    try:
        got = await fetch(f"https://{EXOTEL}{path_of(sim, call)}", sim, addresses, cert[0])
    finally:
        sim.faults.redirect_to, sim.faults.recording_script = None, deque()
    assert got == "RecordingAuthRequired"  # the target answered 401: no credentials came
    assert sent_credentials(sim) == before + 1  # the first hop only
    assert sent_credentials(other) == other_credentials
    if where == "second":
        assert other.counters["recording_requests"] == other_before + 1


async def test_a_redirect_to_the_same_origin_keeps_the_credentials(
    lookalike_servers: tuple[Simulator, Simulator, SimCall],
    addresses: tuple[str, str],
    cert: tuple[Path, Path],
) -> None:
    sim, _, call = lookalike_servers
    sim.faults.recording_script = deque(["redirect"])  # to the recording's own URL
    before = sent_credentials(sim)
    assert await fetch(f"https://{EXOTEL}{path_of(sim, call)}", sim, addresses, cert[0]) == "ok"
    assert sent_credentials(sim) == before + 2


# --- the rules, and the setting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (f"https://{EXOTEL}/a.mp3", True),
        (f"https://{EXOTEL}:443/a.mp3", True),
        (f"https://{EXOTEL}/a.mp3?download=1", True),
        (f"https://{EXOTEL}/a.mp3#x", True),
        (f"https://{EXOTEL}:/a.mp3", False),
        (f"https://{EXOTEL}:0443/a.mp3", False),
        (f"https://{EXOTEL}%2e/a.mp3", False),
        (f"https://{EXOTEL}/a b.mp3", False),
        (f"https://{EXOTEL}/a\t.mp3", False),
        (f"https://{EXOTEL}/a\\b.mp3", False),
        (f"https://{EXOTEL}/caf\u00e9.mp3", False),
        ("https://recordings.\uff45xotel.com/a.mp3", False),  # fullwidth e: NFKC to exotel
        (f"https://{EXOTEL}/a.mp3?X-Amz-Signature=1", False),
        (f"https://{EXOTEL}/a.mp3?x-amz-date=1", False),
        (f"https://{EXOTEL}/a.mp3?AWSAccessKeyId=A&Expires=1&Signature=s", False),
        (f"https://{EXOTEL}/a.mp3?se=2026&sig=x", False),
        (f"https://{EXOTEL}#@evil.com/a.mp3", True),  # the fragment is not sent; host is Exotel's
        (f"https://evil.com#@{EXOTEL}/a.mp3", False),
        (f"https://evil.com?@{EXOTEL}/a.mp3", False),
        (f"ftp://{EXOTEL}/a.mp3", False),
        ("https://[::1]/a.mp3", False),
        ("", False),
    ],
)
def test_header_for_follows_every_rule(url: str, allowed: bool) -> None:
    auth = RecordingAuth.from_credentials("key", "token", (EXOTEL,))
    expected = "Basic " + base64.b64encode(b"key:token").decode()
    assert auth.header_for(url) == (expected if allowed else None), refusal(url, (EXOTEL,))


def test_no_credentials_no_header_and_the_repr_hides_them() -> None:
    assert (
        RecordingAuth.from_credentials("", "token", (EXOTEL,)).header_for(f"https://{EXOTEL}/a")
        is None
    )
    auth = RecordingAuth.from_credentials("exokey1234", "exotok5678", (EXOTEL,))
    shown = repr(auth) + str(auth) + json.dumps(str(auth))
    assert "exotok5678" not in shown and "exokey1234" not in shown and "Basic" not in shown
    assert base64.b64encode(b"exokey1234:exotok5678").decode() not in shown


def test_same_origin() -> None:
    assert same_origin(f"https://{EXOTEL}/a", f"https://{EXOTEL}:443/b?x")
    assert not same_origin(f"https://{EXOTEL}/a", f"http://{EXOTEL}/a")
    assert not same_origin(f"https://{EXOTEL}/a", f"https://{EXOTEL}:444/a")
    assert not same_origin(f"https://{EXOTEL}/a", "https://127.0.0.1/a")


def _settings(hosts: str) -> Any:
    env = {
        "EXOTEL_ACCOUNT_SID": "acct",
        "EXOTEL_API_KEY": "k",
        "EXOTEL_API_TOKEN": "t",
        "ARCHIVER_CONFIG": "",
        "ARCHIVER_RECORDING_AUTH_HOSTS": hosts,
    }
    return load_settings(env=env)


@pytest.mark.parametrize(
    "value",
    [
        f"https://{EXOTEL}",
        f"{EXOTEL}/exotelrecordings",
        f"{EXOTEL}:443",
        f"user@{EXOTEL}",
        "*.exotel.com",
        "recordings .exotel.com",
        f"{EXOTEL}.",
        "[::1]",
        f"{EXOTEL.upper()}x\u00e9",
    ],
)
def test_the_host_list_refuses_anything_but_host_names(value: str) -> None:
    with pytest.raises(ConfigError, match="ARCHIVER_RECORDING_AUTH_HOSTS") as caught:
        _settings(f"{EXOTEL},{value}")
    assert "host names" in str(caught.value)


def test_the_host_list_is_lower_cased_and_trimmed() -> None:
    assert _settings(" Recordings.Exotel.com , 127.0.0.1").recording_auth_hosts == (
        EXOTEL,
        "127.0.0.1",
    )


def test_recording_auth_required_is_not_retried() -> None:
    assert not RecordingAuthRequired("x").retryable


def test_the_basic_header_value_is_a_known_secret_for_the_log_filter() -> None:
    settings = _settings(EXOTEL)
    value = RecordingAuth.from_settings(settings).header_for(f"https://{EXOTEL}/a.mp3")
    assert value is not None
    scrubbed = Redactor(settings.secrets).scrub(f"sent {value.split()[1]} to the host")
    assert value.split()[1] not in scrubbed
