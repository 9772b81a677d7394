"""``--help`` shows what matters: each command has only the flags of the settings it reads.

The option table (``archiver.options.OPTIONS``) says which commands read each option; the first
test checks that every command shows exactly those flags, in sections, with an example. The
second runs every command for real (the simulator over HTTP, SeaweedFS with Object Lock, a
``[retention]`` table, voice logs and legs on, expiring URLs) and records which settings it
reads: each flag a command shows must be read by it. Before, ``verify``, ``export-bag``,
``manifest export`` and each ``retention`` command showed 27-38 options, most of them unread
(``--voice-logs``, ``--part-size``, ``--rate-limit``, ``--api-url``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

import archiver.cli._shared as shared
from archiver.cli import main
from archiver.cli._help import OWN
from archiver.exotel.models import IST
from archiver.options import GROUPS, OPTIONS
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, free_port

WITHOUT_SETTINGS = {"demo", "simulate"}


def commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command of the CLI as (path, command), e.g. ("retention plan", ...)."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} ")
        else:
            yield path, command


def flags(command: click.Command) -> set[str]:
    return {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def help_text(path: str) -> str:
    result = CliRunner().invoke(
        main, [*path.split(), "--help"], prog_name="exotel-archiver", terminal_width=100
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_shows_exactly_the_options_the_table_gives_it() -> None:
    seen = set()
    for path, command in commands():
        seen.add(path)
        expected = {o.flag for o in OPTIONS if o.flag and path in o.commands}
        shown = flags(command) & {o.flag for o in OPTIONS if o.flag}
        assert shown == expected, path
        text = help_text(path)
        assert "\nExample:\n  exotel-archiver " + path in text, path
        sections = [line[:-1] for line in text.splitlines() if line and line[0] != " "]
        order = [s for s in (OWN, *GROUPS) if s in sections]
        assert sections[1 : 1 + len(order)] == order, (path, sections)
        if path not in WITHOUT_SETTINGS:
            assert "--config" in flags(command), path
    # Every command the table names exists (a typo in the table would hide a flag).
    named = {c for o in OPTIONS for c in o.commands}
    assert named <= seen, named - seen


@pytest.mark.parametrize(
    "path",
    [
        "verify",
        "export-bag",
        "manifest export",
        "retention plan",
        "retention apply",
        "retention hold",
        "retention purge",
        "retention audit",
    ],
)
def test_commands_that_never_call_exotel_show_no_exotel_or_download_flags(path: str) -> None:
    text = help_text(path)
    for flag in ("--voice-logs", "--part-size", "--rate-limit", "--api-url", "--concurrency"):
        assert flag not in text, (path, flag)
    assert len(text.splitlines()) < 110, path


# --- each flag shown is read ------------------------------------------------------------------

READ_AS: dict[str, tuple[str, ...]] = {
    "account_sid": ("exotel.account_sid",),
    "region": ("exotel.api_url", "exotel.v1_api_url"),
    "api_url": ("exotel.api_url",),
    "v1_api_url": ("exotel.v1_api_url",),
    "timezone": ("exotel.timezone",),
    "rate_limit": ("exotel.rate_limit",),
    "attempts": ("retry.attempts",),
    "max_wait": ("retry.max_wait",),
    "key_template": ("key_layout",),
    "sse_kms_key_id": ("sse",),
    "sse_kms_context": ("sse",),
}
"""Where a setting is read in ``Settings``, when not under its own name (or ``daemon.KEY``)."""


def read_as(key: str) -> tuple[str, ...]:
    option = next(o for o in OPTIONS if o.key == key)
    if key in READ_AS:
        return READ_AS[key]
    return (f"daemon.{key}",) if option.section == "daemon" else (key,)


def tracked(obj: Any, prefix: str, reads: set[str]) -> Any:
    """A copy of the frozen dataclass ``obj`` that adds each attribute read to ``reads``."""

    def getter(self: Any, name: str) -> Any:
        if not name.startswith("_"):
            reads.add(prefix + name)
        return object.__getattribute__(self, name)

    cls = type(obj)
    copy = object.__new__(type(f"Tracked{cls.__name__}", (cls,), {"__getattribute__": getter}))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in ("exotel", "daemon", "retry"):
            value = tracked(value, f"{f.name}.", reads)
        object.__setattr__(copy, f.name, value)
    return copy


RULES = """
[retention]
default = "general"

[retention.classes.general]
period = "1d"
lock = "governance"
at_end = "delete"
"""


@pytest.mark.slow
def test_each_flag_a_command_shows_is_read_by_it(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    lock_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: dict[str, set[str]] = {}
    running = [""]
    load = shared.load_settings

    def tracking_load(*args: Any, **kwargs: Any) -> Any:
        return tracked(load(*args, **kwargs), "", reads.setdefault(running[0], set()))

    monkeypatch.setattr(shared, "load_settings", tracking_load)
    config = tmp_path / "archiver.toml"
    config.write_text(RULES)
    env = {
        **exotel_env(sim, server.base_url, f"s3://{lock_bucket}/rec", tmp_path / "state"),
        "ARCHIVER_CONFIG": str(config),
        "ARCHIVER_VOICE_LOGS": "audio",
        "ARCHIVER_LEGS": "on",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Two days back: the calls are older than listing_settle at any hour, so reconcile finds
    # the range complete (yesterday's last calls are still "recording pending" after midnight).
    yesterday = (datetime.now(IST) - timedelta(days=2)).date()
    sim.populate(4, day=yesterday)
    sids = [sim.add_call().sid, sim.add_call(state="active").sid]
    sim.faults.expired_rate = 0.3  # so that URL refreshes are asked for
    day = yesterday.isoformat()
    exits: dict[str, int] = {}

    def run(path: str, *args: str, **extra_env: str) -> None:
        running[0] = path
        result = CliRunner().invoke(main, [*path.split(), *args], env=extra_env)
        exits[path] = result.exit_code

    ended = sim.add_call(recordings=0).sid  # no recording yet: --wait reads recording_grace
    run("archive", "--wait=2s", ended)
    run("archive", *sids)
    run("backfill", "--since", day, "--until", day)
    # One recording lost, so that verify finds it and repair fetches it again from Exotel.
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=lock_bucket, Prefix="rec/")["Contents"]
    lost = next(o["Key"] for o in listed if o["Key"].endswith(".mp3"))
    for version in client.list_object_versions(Bucket=lock_bucket, Prefix=lost)["Versions"]:
        client.delete_object(
            Bucket=lock_bucket, Key=lost, VersionId=version["VersionId"],
            BypassGovernanceRetention=True,
        )  # fmt: skip
    run("verify", "--since", day, "--until", day)
    run("repair")
    run("reconcile", "--since", day, "--until", day)
    run("manifest export", "--since", day, "--out", str(tmp_path / "export"))
    run("export-bag", str(tmp_path / "bag"), "--since", day)
    run("manifest rebuild", ARCHIVER_STATE_DIR=str(tmp_path / "state2"))
    run("retention plan")
    run("retention apply")
    run("retention hold", sids[0], "--reason", "case 1")
    run("retention release", sids[0], "--reason", "case 1")
    run("retention purge")
    run("retention audit")
    if "status" in dict(commands()):
        run("status")
    identity = tmp_path / "identity.pem"  # nothing is encrypted to it: each call is refused
    identity.write_bytes(
        x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    run("decrypt", "--identity", str(identity), "--call", sids[0], "--out", str(tmp_path / "d"))
    sim.add_call(recordings=2)  # for the worker to archive
    sim.add_call(state="processing", created=sim.now() - timedelta(hours=1))  # stuck
    stop = threading.Timer(8.0, os.kill, (os.getpid(), signal.SIGTERM))
    stop.start()
    try:
        run(
            "run",
            ARCHIVER_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
            ARCHIVER_POLL_INTERVAL="1",
            ARCHIVER_SWEEP_INTERVAL="1",
            ARCHIVER_STUCK_AFTER="0.25",
            ARCHIVER_WEBHOOK_LISTEN=f"127.0.0.1:{free_port()}",
            ARCHIVER_WEBHOOK_SECRET="s3cret-for-the-test",
        )
    finally:
        stop.cancel()

    assert exits == {**{path: 0 for path in exits}, "verify": 1, "decrypt": 1}, exits
    unread = [
        f"{path} shows {option.flag} but never reads {option.name}"
        for path, command in commands()
        if path not in WITHOUT_SETTINGS
        for option in OPTIONS
        if option.flag in flags(command) and not set(read_as(option.key)) & reads.get(path, set())
    ]
    assert not unread, "\n".join(unread)
    assert set(reads) >= {p for p, _ in commands()} - WITHOUT_SETTINGS


def test_config_is_accepted_before_and_after_the_command(tmp_path: Path) -> None:
    before, after = tmp_path / "before.toml", tmp_path / "after.toml"
    before.write_text("[archiver]\nconcurrency = 3\n[exotel]\nrate_limit = 30\n")
    after.write_text("[exotel]\nrate_limit = 45\n")
    env = {"ARCHIVER_CONFIG": "", "ARCHIVER_STATE_DIR": str(tmp_path / "state")}
    seen: list[Any] = []

    def capture(ctx: click.Context, cli: dict[str, Any]) -> Any:
        seen.append(make(ctx, cli))
        raise SystemExit(0)

    make = shared.make_settings
    for args, rate in (
        (["--config", str(before), "backfill"], 30),
        (["backfill", "--config", str(after)], 45),
        (["--config", str(before), "backfill", "--config", str(after)], 45),
    ):
        seen.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("archiver.cli.archive.make_settings", capture)
            result = CliRunner().invoke(
                main, [*args, "--since", "2026-11-01", "--until", "2026-11-02"], env=env
            )
        assert result.exit_code == 0, result.output
        assert seen[0].exotel.rate_limit == rate, args
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(
        main, ["backfill", "--config", str(missing), "--range", "2026-11-01..2026-11-02"], env=env
    )
    assert result.exit_code == 2
    assert f"config file {missing} does not exist" in result.output


def test_the_top_level_help_lists_every_command_in_a_section_of_the_work() -> None:
    text = CliRunner().invoke(main, ["--help"], prog_name="exotel-archiver").output
    assert "\nCommands:\n" not in text  # each command has its place in COMMAND_SECTIONS
    for name in main.commands:
        assert f"\n  {name}  " in text, name
    assert text.index("Try it:") < text.index("Archive:") < text.index("Check:")
