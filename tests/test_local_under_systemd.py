"""A local destination the archiver may not write stops it at start, before any API request,
with a configuration error (exit 2) that names the fix — under systemd, the drop-in.

The shipped units make the whole file system read-only but the state directory
(``ProtectSystem=strict``), so a local destination outside it fails with EROFS ("Read-only file
system"); a directory the service's transient user does not own fails with EACCES. Both are
made real here, not simulated: EROFS by a read-only bind mount in a private mount namespace
(``unshare -m``, which needs root — the test suite runs as root in its container), EACCES by a
path under /sys, where even root may not create anything. "Under systemd" is what the archiver
sees of it: ``INVOCATION_ID`` (and ``JOURNAL_STREAM``) in the environment.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.simulator import Simulator
from archiver.simulator.server import SimulatorServer
from tests.support import UNDER_SYSTEMD, can_mount_privately, clean_env, exotel_env, read_only

DOC_SECTION = "docs/installation.md#a-local-directory-as-the-destination"


def archiver_command(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "archiver", *args])


YESTERDAY = str((datetime.now(IST) - timedelta(days=1)).date())
COMMANDS = {
    "archive": ["archive", "CALL"],
    "run": ["run"],
    "backfill": ["backfill", "--since", YESTERDAY, "--until", YESTERDAY],
}


def assert_refused_at_start(
    result: subprocess.CompletedProcess[str], sim: Simulator, *must: str
) -> str:
    err = result.stderr
    assert result.returncode == 2, f"exit code {result.returncode}:\n{result.stdout}\n{err}"
    assert "Traceback" not in err, err
    requests = sim.counters.get("api_requests", 0)
    assert requests == 0, f"{requests} API request(s) before the check:\n{err}"
    for text in must:
        assert text in err, f"{text!r} not in:\n{err}"
    return err


@pytest.fixture
def read_only_ok(tmp_path: Path) -> None:
    # A touch under the read-only bind mount must fail.
    if not can_mount_privately(
        tmp_path, lambda probe: read_only(probe, f"! touch {shlex.quote(str(probe))}/x")
    ):
        pytest.skip("no read-only bind mount here (needs root and unshare -m)")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_destination_under_systemd_names_the_drop_in(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, read_only_ok: None, command: str
) -> None:
    mounted = tmp_path / "srv"
    destination = mounted / "recordings"
    mounted.mkdir()
    call = sim.add_call(recordings=1)
    args = [a.replace("CALL", call.sid) for a in COMMANDS[command]]
    env = {
        **clean_env(),
        **exotel_env(sim, server.base_url, str(destination), tmp_path / "state"),
        **UNDER_SYSTEMD,
    }
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", read_only(mounted, "exec " + archiver_command(*args))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = assert_refused_at_start(
        result,
        sim,
        f"the local destination {destination} cannot be written",
        "read-only file system",
        f"ReadWritePaths={destination}",
        "/etc/systemd/system/exotel-.service.d/",
        DOC_SECTION,
    )
    assert "None" not in err and "Errno" not in err
    assert not destination.exists()


def test_a_read_only_destination_outside_systemd_is_about_the_path(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, read_only_ok: None
) -> None:
    mounted = tmp_path / "srv"
    mounted.mkdir()
    env = {**clean_env(), **exotel_env(sim, server.base_url, str(mounted), tmp_path / "state")}
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            read_only(mounted, "exec " + archiver_command("archive", sim.add_call().sid)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = assert_refused_at_start(
        result, sim, f"the local destination {mounted} cannot be written", "read-only file system"
    )
    assert "ReadWritePaths" not in err and "systemd" not in err


@pytest.mark.parametrize("systemd", [True, False], ids=["under-systemd", "outside-systemd"])
def test_a_destination_it_may_not_write_is_refused_at_start(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, systemd: bool
) -> None:
    # sysfs lets no one create a file or folder, root included: a real EACCES/EPERM.
    destination = Path("/sys/kernel/exotel-archiver-test")
    if destination.exists() or not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel here")
    env = {
        **clean_env(),
        **exotel_env(sim, server.base_url, str(destination), tmp_path / "state"),
        **(UNDER_SYSTEMD if systemd else {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "archiver", "archive", sim.add_call().sid],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = assert_refused_at_start(
        result, sim, f"the local destination {destination} cannot be written", "permission"
    )
    if systemd:
        assert f"ReadWritePaths={destination}" in err and DOC_SECTION in err
    else:
        assert "ReadWritePaths" not in err and "systemd" not in err
        assert "ARCHIVER_DESTINATION" in err


def test_a_full_local_destination_stops_the_run_with_exit_1_not_a_config_error(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, read_only_ok: None
) -> None:
    """A full disk concerns every call, so the run stops at once rather than download every
    recording for nothing; but space can be freed, so it is exit 1 (systemd restarts it), not
    the exit 2 of a configuration error, which it never restarts. Nothing is recorded for the
    call that did not fit, and nothing half-written is left at its key."""
    mounted = tmp_path / "srv"
    mounted.mkdir()
    big = sim.add_call(size=3 * 1024 * 1024)
    small = sim.add_call(size=20_000)
    env = {
        **clean_env(),
        **exotel_env(sim, server.base_url, str(mounted), tmp_path / "state"),
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.1",
        "ARCHIVER_CONCURRENCY": "1",
    }
    where = shlex.quote(str(mounted))
    line = (
        f"mount --make-rprivate / && mount -t tmpfs -o size=1m tmpfs {where} && "
        + archiver_command("archive", big.sid, small.sid)
        + f"; code=$?; find {where} -name 'recording-*' -type f; exit $code"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", line], env=env, capture_output=True, text=True, timeout=120
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert re.search(r"error: .*the disk is full: free space there", out), out
    assert "Traceback" not in out
    assert f"{big.sid}/recording-1" not in result.stdout, "a half-written recording was left"
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        assert ledger.call_outcome(big.sid) != "archived"
        assert not ledger.objects_of(big.sid) or all(
            o.kind != "recording" for o in ledger.objects_of(big.sid)
        )
    finally:
        ledger.close()
