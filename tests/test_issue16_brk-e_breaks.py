"""Issue 16, round two, brk-e: the round-one fixes (secrets, closed pipes, a local destination
that cannot be a directory, ``archive --wait``) attacked again.

Each test runs the real program (``python -m archiver`` in its own process) against the
simulator over real HTTP and a real local directory, and fails on a bug found by review; none
fixes anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.support import child_env, exotel_env, outcome, run_archiver
from tests.test_terminal import on_a_terminal, screen

# --- 3. a local destination that is a loop of symbolic links ----------------------------------


@pytest.mark.parametrize(
    "args",
    [["archive", "SID"], ["run"], ["verify"], ["backfill", "--since", "DAY", "--until", "DAY"]],
    ids=["archive", "run", "verify", "backfill"],
)
@pytest.mark.parametrize("where", ["is-a-loop", "under-a-loop"])
def test_a_local_destination_in_a_symlink_loop_is_a_traceback_and_exit_1(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, args: list[str], where: str
) -> None:
    """``_NOT_A_DIRECTORY`` lists ELOOP as a configuration error (exit 2, no retry), but the
    loop never gets that far: ``LocalSink.__init__`` calls ``Path.resolve()``, which raises
    ``RuntimeError("Symlink loop from ...")`` on Python 3.11, nobody catches it, and every
    command ends with a traceback and exit 1 — the worker (``run``) is restarted by systemd
    for ever on a destination no restart can mend (``RestartPreventExitStatus=2`` only keeps
    a configuration error down)."""
    loop = tmp_path / "links"
    loop.mkdir()
    (loop / "a").symlink_to("b")
    (loop / "b").symlink_to("a")
    destination = loop / "a" if where == "is-a-loop" else loop / "a" / "calls"
    day = "2026-11-01"
    args = [sim.add_call().sid if a == "SID" else day if a == "DAY" else a for a in args]
    env = child_env(**exotel_env(sim, server.base_url, str(destination), tmp_path / "state"))
    done = run_archiver(args, env)
    assert sim.counters.get("api_requests", 0) == 0  # holds: nothing asked of Exotel
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.returncode == 2, f"exit {done.returncode}:\n{done.stderr[-1500:]}"


# --- 2. stderr closed (``2>&-``) --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["", "json", "text"], ids=["auto", "json", "text"])
def test_with_stderr_closed_the_command_does_nothing_and_exits_1(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, fmt: str
) -> None:
    """``exotel-archiver archive SID --report r.json 2>&-`` (a cron line, a daemonizing wrapper
    that closes fd 2): Python's ``sys.stderr`` is None; ``wants_json()`` /
    ``setup_logging()`` call ``None.isatty()`` and the command dies of an AttributeError
    before it starts (exit 1; with ARCHIVER_LOG_FORMAT=json exit 120): nothing archived, no
    summary on stdout, no report — and the exit code says "some calls failed". A closed
    stderr should drop the output (as ``DropWhenClosed`` does for a closed pipe), not the
    run."""
    sid = sim.add_call().sid
    report = tmp_path / "report.json"
    env = child_env(**exotel_env(sim, server.base_url, str(tmp_path / "dest"), tmp_path / "state"))
    if fmt:
        env["ARCHIVER_LOG_FORMAT"] = fmt
    done = subprocess.run(
        [sys.executable, "-m", "archiver", "archive", sid, "--report", str(report)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(2),  # what the shell's 2>&- does
        timeout=120,
    )
    assert done.returncode == 0, f"exit {done.returncode}, stdout {done.stdout!r}"
    assert outcome(tmp_path / "state", sid) == "archived"
    assert b"archived: 1 calls" in done.stdout
    assert json.loads(report.read_text())["counts"]["archived"] == 1


# --- 1. a URL signature in a failure's detail ------------------------------------------------

SIGNATURE = "vjbyPxybdZaNmGa7yT272YEAiv4"
CREDENTIAL = "AKIAEXAMPLEKEYID7777"


class _EchoingStore(BaseHTTPRequestHandler):
    """A recording host whose 404 names the request it refuses, query string and all (as
    gateways and S3-compatible stores may: ``<Message>`` is free text)."""

    def do_GET(self) -> None:
        body = (
            f"<Error><Code>NoSuchKey</Code><Message>No such key: {self.path}</Message></Error>"
        ).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def echoing_store() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingStore)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_signature_in_a_failure_detail_reaches_status_and_the_report(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, echoing_store: int
) -> None:
    """The recording host's ``<Message>`` is copied into the failure's detail
    (``transfer._s3_error``). The log and the ``FAILED`` line redact the pre-signed URL's
    ``Signature``/``AWSAccessKeyId`` (the Redactor on the handler, ``emit``'s
    ``_scrub``), but the very same detail is written raw into the ``--report`` file, and
    ``status`` (screen and ``--json``: the failure's example) prints it from the ledger
    unredacted — while status redacts a run's ``error`` and reconcile redacts its notes."""
    sid = sim.add_call().sid
    sim.faults.recording_url_for[sid] = (
        # S3's query-string authentication (SigV2), as S3 recording links have it
        f"http://127.0.0.1:{echoing_store}/r.mp3?AWSAccessKeyId={CREDENTIAL}"
        f"&Expires=1764614400&Signature={SIGNATURE}%3D"
    )
    report = tmp_path / "report.json"
    env = child_env(
        **exotel_env(sim, server.base_url, str(tmp_path / "dest"), tmp_path / "state"),
        ARCHIVER_ATTEMPTS="1",
        ARCHIVER_ALLOW_PRIVATE_ADDRESSES="on",
    )
    done = run_archiver(["archive", sid, "--report", str(report)], env)
    assert done.returncode == 1, done.stderr[-1500:]
    assert "NoSuchKey" in done.stderr  # the failure was about that answer
    assert SIGNATURE not in done.stderr and CREDENTIAL not in done.stderr  # holds: log redacted

    leaks = {}
    if SIGNATURE in report.read_text() or CREDENTIAL in report.read_text():
        leaks["--report"] = report.read_text()
    for args in (["status"], ["status", "--json"]):
        shown = run_archiver(args, env)
        if SIGNATURE in shown.stdout or CREDENTIAL in shown.stdout:
            leaks[" ".join(args)] = shown.stdout
    assert not leaks, (
        "URL signature shown by: " + ", ".join(leaks) + "\n" + "\n".join(leaks.values())
    )


# --- 4. archive: the progress total ------------------------------------------------------------


@pytest.mark.parametrize("wait", [False, True], ids=["no-wait", "wait"])
def test_a_call_sid_given_twice_leaves_the_progress_bar_half_full(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, wait: bool
) -> None:
    """``archive A A`` (a pasted list with a repeat) archives A once — the calls are
    de-duplicated (``dict.fromkeys``) — but ``Progress`` is given ``len(call_sids)``: the bar
    of a finished run ends at ``1/2``, half full, "about 0 s left", as if a call were still to
    come."""
    sid = sim.add_call().sid
    env = child_env(**exotel_env(sim, server.base_url, str(tmp_path / "dest"), tmp_path / "state"))
    args = ["archive", sid, sid, *(["--wait=30s"] if wait else [])]
    code, raw, out = on_a_terminal(args, env)
    assert code == 0, screen(raw)
    assert "archived: 1 calls" in out
    bars = [line for line in screen(raw) if line.startswith("Archiving")]
    assert bars, screen(raw)
    assert " 1/1 " in bars[-1], f"the last bar: {bars[-1]!r}"
