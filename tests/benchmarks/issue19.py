"""Issue 19's rows: what client-side encryption and SSE cost, against the same run without them.

Each row runs ``exotel-archiver backfill`` as its own process (through the VmHWM wrapper, so its
own peak RSS is read), the encrypted and the plain side in the same run, on the same machine,
against the same SeaweedFS:

- **19A** — one large recording (1 GiB; 128 MiB with --quick) at default settings, streamed in
  multipart parts: with ``--encrypt-to`` (X25519) against without. Throughput ratio (target
  >= 0.8) and the encrypted side's peak RSS against the large-recording target (<= 150 MiB).
- **19B** — 200 recordings of 1 MiB (20 with --quick), from the spool: with ``--encrypt-to``
  against without (target >= 0.8), and with ``--sse aes256`` against without (target >= 0.9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archiver.simulator import SimulatorServer
from tests.benchmarks.harness import (
    Bench,
    MiB,
    Row,
    Run,
    add_calls,
    archived,
    archiver_env,
    backfill,
    fresh,
)
from tests.support import write_keys

FIGURES = ("19A", "19B")
"""``--only 19`` runs them all."""
RSS_TARGET = 150.0
"""MiB: the large-recording target (figure 2, issue 17's 2B)."""


def _run(bench: Bench, name: str, calls: int, size: int, **extra: str) -> tuple[Run, int]:
    sim, state = fresh(bench, name)
    add_calls(sim, calls, size)
    with SimulatorServer(sim) as server:
        env = archiver_env(bench, sim, server, bench.bucket(), state, **extra)
        run = backfill(bench, env, state)
    return run, archived(run)


def _keys(bench: Bench) -> Path:
    folder = bench.work / "keys"
    folder.mkdir(exist_ok=True)
    return write_keys(folder)[0]


def row_a(bench: Bench) -> None:
    size = int(bench.n(1024, 128)) * MiB
    public = _keys(bench)
    plain, got_plain = _run(bench, "19a-plain", 1, size)
    sealed, got_sealed = _run(bench, "19a-sealed", 1, size, ARCHIVER_ENCRYPT_TO=str(public))
    rate = size / MiB / sealed.seconds if got_sealed else 0.0
    base = size / MiB / plain.seconds if got_plain else 0.0
    mib = size // MiB
    bench.add(
        Row(
            "19A",
            f"one {mib} MiB recording, --encrypt-to (streamed)",
            rate,
            "MiB/s",
            f"the same without encryption ({base:.1f} MiB/s)",
            rate / base if base else None,
            target=">= 0.8",
            met=bool(base) and rate / base >= 0.8,
            note=f"CPU {sealed.cpu_seconds:.1f} s against {plain.cpu_seconds:.1f} s",
        )
    )
    bench.add(
        Row(
            "19A",
            f"peak RSS, {mib} MiB recording, --encrypt-to",
            sealed.peak_mib,
            "MiB",
            f"without encryption {plain.peak_mib:.1f} MiB",
            sealed.peak_mib / plain.peak_mib if plain.peak_mib else None,
            target=f"<= {RSS_TARGET:g}",
            met=0 < sealed.peak_mib <= RSS_TARGET,
            note="the child's VmHWM",
        )
    )


def row_b(bench: Bench) -> None:
    calls = int(bench.n(200, 20))
    public = _keys(bench)
    plain, got_plain = _run(bench, "19b-plain", calls, MiB)
    sealed, got_sealed = _run(bench, "19b-sealed", calls, MiB, ARCHIVER_ENCRYPT_TO=str(public))
    sse, got_sse = _run(bench, "19b-sse", calls, MiB, ARCHIVER_SSE="aes256")
    base = got_plain / plain.seconds
    for label, run, got, target in (
        ("--encrypt-to", sealed, got_sealed, 0.8),
        ("--sse aes256", sse, got_sse, 0.9),
    ):
        rate = got / run.seconds
        bench.add(
            Row(
                "19B",
                f"{calls} x 1 MiB recordings, {label}",
                rate,
                "rec/s",
                f"the same without ({base:.1f} rec/s)",
                rate / base if base else None,
                target=f">= {target}",
                met=got == calls and bool(base) and rate / base >= target,
                note=f"{got}/{calls} archived; CPU {run.cpu_seconds:.1f} s against "
                f"{plain.cpu_seconds:.1f} s",
            )
        )


def steps(bench: Bench) -> list[tuple[str, Any]]:
    """(name, callable) for run.py's main."""
    return [("19A", lambda: row_a(bench)), ("19B", lambda: row_b(bench))]
