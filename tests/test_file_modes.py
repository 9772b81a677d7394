"""Local files are private to the archiver's user, whatever the umask: outside systemd (the
README's plain commands, the demo) the usual umask 022 would make recordings, the ledger, the
manifest and the reports readable by every user of the host.

Every file the archiver creates in a local destination or its state directory is 0600, every
directory it creates 0700; a directory that already existed (a destination root the operator
made on purpose) keeps its mode. The commands run as real processes with umask 022.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.files import write_atomic
from archiver.simulator import Simulator
from archiver.simulator.server import SimulatorServer
from tests.support import exotel_env


def umask_022() -> None:
    os.umask(0o022)


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``exotel-archiver ARGS`` as a process of its own, started with umask 022."""
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=umask_022,
    )


def modes(root: Path) -> dict[str, int]:
    """The permission bits of ``root`` and of everything under it, by path relative to it."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def wrong_modes(root: Path, *, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """What under ``root`` is not 0600 (a file) or 0700 (a directory), except ``keep``."""
    wrong = {}
    for rel, mode in modes(root).items():
        if rel in keep:
            continue
        want = 0o700 if (root / rel).is_dir() else 0o600
        if mode != want:
            wrong[rel] = f"{mode:04o}, not {want:04o}"
    return wrong


def test_archive_creates_only_private_files_and_directories(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    calls = [sim.add_call(recordings=2), sim.add_call(recordings=1)]
    out, state = tmp_path / "out", tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(out), state)
    report = state / "reports" / "run.json"  # a folder of its own: created by the archiver too
    done = cli("archive", *(c.sid for c in calls), "--report", str(report), env=env)
    assert done.returncode == 0, done.stderr
    assert len(list(out.rglob("recording-*"))) == 3 and report.is_file()
    assert {"ledger.sqlite3", "manifest.jsonl", "writer.lock", "spool"} <= {
        p.name for p in state.iterdir()
    }
    assert wrong_modes(out) == {}
    assert wrong_modes(state) == {}

    # A second run, as the worker runs every day: what it adds (and the ledger's WAL) too.
    again = cli("archive", sim.add_call(recordings=1).sid, env=env)
    assert again.returncode == 0, again.stderr
    assert len(list(out.rglob("recording-*"))) == 4
    assert wrong_modes(out) == {}
    assert wrong_modes(state) == {}


def test_an_existing_destination_root_keeps_its_mode(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    # The operator made the root 0750 for a group (a backup agent) on purpose: not loosened, not
    # tightened. What the archiver creates inside it is still private.
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o750)
    env = exotel_env(sim, server.base_url, str(out), tmp_path / "state")
    done = cli("archive", sim.add_call(recordings=1).sid, env=env)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert wrong_modes(out, keep=(".",)) == {}


def test_the_demo_creates_only_private_files_and_directories(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    done = cli("demo", "--dir", str(demo), "--calls", "4", env={})
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(demo.rglob("recording-*"))
    assert wrong_modes(demo) == {}


def test_reports_are_replaced_privately(tmp_path: Path) -> None:
    # write_atomic replaces a file by a new one: the new one is private too, even where the
    # old one was not, and the folder it creates on the way.
    old = os.umask(0o022)
    try:
        target = tmp_path / "a" / "b" / "report.json"
        write_atomic(target, "{}\n")
        target.chmod(0o644)
        write_atomic(target, "{}\n")
    finally:
        os.umask(old)
    assert wrong_modes(tmp_path / "a") == {}


STRACE = shutil.which("strace")


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_a_new_directory_is_fsynced_into_its_parent(tmp_path: Path) -> None:
    # Durability cannot be observed without pulling the plug; what can be observed is the
    # system calls: after each mkdir, the parent directory is opened and fsynced, so the new
    # name survives a power loss (as the files written into it do).
    assert STRACE is not None
    target = tmp_path / "one" / "two"
    code = "import sys; from pathlib import Path; from archiver.files import make_dirs; "
    code += "make_dirs(Path(sys.argv[1]))"
    traced = subprocess.run(
        [
            STRACE,
            "-f",
            "-e",
            "trace=mkdir,mkdirat,openat,fsync",
            "-o",
            str(tmp_path / "trace"),
            sys.executable,
            "-c",
            code,
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert traced.returncode == 0, traced.stderr
    calls = (tmp_path / "trace").read_text().splitlines()
    for made, parent in ((tmp_path / "one", tmp_path), (target, tmp_path / "one")):
        at = next(
            i
            for i, c in enumerate(calls)
            if re.search(rf'mkdir(at)?\(.*"{re.escape(str(made))}"', c)
        )
        assert "= 0" in calls[at], calls[at]
        rest = calls[at + 1 :]
        opened = next(
            c for c in rest if re.search(rf'openat\(.*"{re.escape(str(parent))}", O_RDONLY', c)
        )
        fd = re.search(r"= (\d+)$", opened)
        assert fd is not None, opened
        assert any(re.search(rf"fsync\({fd.group(1)}\)\s+= 0", c) for c in rest), (
            f"no fsync of {parent} after creating {made}:\n" + "\n".join(rest[:20])
        )


def test_make_dirs_leaves_an_existing_directory_as_it_is(tmp_path: Path) -> None:
    from archiver.files import make_dirs

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    make_dirs(mine / "new" / "deeper")
    assert modes(mine) == {".": 0o755, "new": 0o700, "new/deeper": 0o700}
