"""A real headless browser for the tests: Debian's Chromium (``/usr/bin/chromium``).

The machines the suite runs on (a developer's container, CI's fresh one) are Debian, root, with
Debian's package mirror reachable, but without Chromium: ``chromium()`` installs it with apt the
first time (``apt-get install -y --no-install-recommends chromium``, after ``apt-get update``
when the package lists lack it), so CI needs no manual step. When it cannot (not root, no
mirror), the test fails with the reason under ``CI=true`` and is skipped elsewhere.

Chromium runs once per page with the flags below: without the networking ones it stalls on a
closed network (it phones home for components, sync, QUIC probes), and ``--no-sandbox`` because
the suite runs as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
APT_TIMEOUT = 1800.0
"""Seconds the install may take (measured: see docs/testing.md)."""
RUN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Chromium:
    path: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            done = subprocess.run(
                [str(self.path), *FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        if done.returncode != 0:
            raise AssertionError(f"chromium {args} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def dump_dom(self, page: Path) -> str:
        """The DOM as Chromium rendered ``page`` (serialized HTML)."""
        return self._run("--dump-dom", page.resolve().as_uri()).stdout

    def screenshot(self, page: Path, out: Path, *, width: int = 1200, height: int = 1600) -> bytes:
        """A PNG of ``page`` in a ``width`` x ``height`` window."""
        out.unlink(missing_ok=True)
        self._run(f"--screenshot={out}", f"--window-size={width},{height}", page.resolve().as_uri())
        if not out.exists():
            raise AssertionError(f"chromium wrote no screenshot to {out}")
        return out.read_bytes()


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args],
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
        env=env,
    )


def install() -> str | None:
    """Install Chromium with apt; None when done, else why it could not be."""
    if os.geteuid() != 0:
        return "not root: install it with `apt-get install chromium` (as root)"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine: install Chromium at /usr/bin/chromium"
    began = time.monotonic()
    done = _apt("install", "-y", "--no-install-recommends", "chromium")
    if done.returncode != 0:  # the package lists may be missing or stale
        update = _apt("update")
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-500:]}"
        done = _apt("install", "-y", "--no-install-recommends", "chromium")
    took = time.monotonic() - began
    if done.returncode != 0:
        return f"apt-get install chromium failed: {done.stderr.strip()[-500:]}"
    print(
        f"\n[tests/browser.py] installed Chromium with apt in {took:.0f} s",
        file=sys.__stderr__ or sys.stderr,
    )
    return None


def chromium_for_tests() -> Chromium:
    """Chromium for a test: installed when missing; else a failure under CI=true, a skip."""
    if not CHROMIUM.exists():
        why = install()
        if why is None and not CHROMIUM.exists():
            why = f"apt installed chromium, but {CHROMIUM} is not there"
        if why is not None:
            message = f"Chromium is needed for this test and could not be installed: {why}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    return Chromium(CHROMIUM)
