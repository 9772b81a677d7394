"""The systemd units in systemd/: systemd loads them without a single warning, their sandbox
scores 2.0 or better in ``systemd-analyze security``, and the command each one runs is one the
CLI accepts.

The units run /opt/exotel-archiver/venv/bin/exotel-archiver, which ``systemd-analyze verify``
insists exists, so the tests check copies pointing at this venv's exotel-archiver. Templates are
checked through an instance (``exotel-archiver@acme.service``), as systemd would load them.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from archiver.cli import main

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
UNITS = sorted(p for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [p for p in UNITS if p.suffix == ".service"]

INSTALLED = "/opt/exotel-archiver/venv/bin/exotel-archiver"
"""Where the units expect the program (docs/installation.md puts it there)."""

INSTANCES = {"exotel-archiver-backfill@.service": "2026-05-01..2026-05-31"}
"""The instance name each template is checked with; "acme" (an account) for the others."""

MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)",
)


def instance_name(unit: Path) -> str:
    """The name systemd loads ``unit`` under: an instance of it if it is a template."""
    if not unit.name.endswith("@" + unit.suffix):
        return unit.name
    return unit.name.replace("@.", f"@{INSTANCES.get(unit.name, 'acme')}.")


def program() -> str:
    """An exotel-archiver that exists on this machine (verify checks ExecStart's binary)."""
    beside_python = Path(sys.executable).parent / "exotel-archiver"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("exotel-archiver") or "/bin/true"


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    """Every unit copied into one directory (a timer needs its service beside it), pointing at
    an existing exotel-archiver, each template also present as an instance."""
    for unit in UNITS:
        text = unit.read_text()
        (tmp_path / unit.name).write_text(text.replace(INSTALLED, program()))
        if instance_name(unit) != unit.name:
            (tmp_path / instance_name(unit)).symlink_to(unit.name)
    return tmp_path


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--no-pager", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_loads_without_warnings(unit: Path, unit_copies: Path) -> None:
    # Exit code 0 is not enough: systemd-analyze verify reports unknown directives, bad
    # specifiers, invalid user names and the like as warnings and still exits 0. So any output
    # at all fails the test; nothing is filtered.
    result = analyze("verify", unit_copies / instance_name(unit))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, (
        f"systemd-analyze verify {instance_name(unit)} (exit code {result.returncode}):\n{output}"
    )


@needs_systemd_analyze
@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_service_sandbox_exposure(unit: Path, unit_copies: Path) -> None:
    result = analyze("security", "--offline=yes", unit_copies / instance_name(unit))
    found = re.search(
        r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)", result.stdout + result.stderr
    )
    assert result.returncode == 0 and found, (
        f"systemd-analyze security --offline=yes gave no exposure level "
        f"(exit code {result.returncode}):\n{result.stdout}{result.stderr}"
    )
    assert found.group(1) == instance_name(unit)
    exposure = float(found.group(2))
    assert exposure <= MAX_EXPOSURE, (
        f"{unit.name}: exposure level {exposure} > {MAX_EXPOSURE}; what scores:\n"
        + "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
    )


# --- What the units run, without systemd --------------------------------------------------------


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order; keys may repeat."""
    found: list[tuple[str, str, str]] = []
    section = ""
    text = re.sub(r"\\\n", " ", unit.read_text())
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{unit.name}: not an assignment: {line!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def values(unit: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(unit) if (s, k) == (section, key)]


def environment(unit: Path) -> dict[str, str]:
    """The unit's Environment= assignments (the simple NAME=value form these units use)."""
    found = {}
    for value in values(unit, "Service", "Environment"):
        name, _, val = value.partition("=")
        found[name] = val
    return found


def exec_start_args(unit: Path) -> list[list[str]]:
    """Each ExecStart's arguments after the program, with the specifiers and $VARIABLES
    systemd would fill in (an unquoted $VAR becomes its words; empty, none)."""
    instance = instance_name(unit).partition("@")[2].rpartition(".")[0]
    specifiers = {"%i": instance, "%S": "/var/lib", "%d": "/run/credentials/x", "%%": "%"}
    env = environment(unit)
    commands = []
    for command in values(unit, "Service", "ExecStart"):
        argv = shlex.split(command)
        assert argv[0] == INSTALLED, f"{unit.name} runs {argv[0]}, not {INSTALLED}"
        args: list[str] = []
        for arg in argv[1:]:
            if arg.startswith("$") and not arg.startswith("${"):
                assert arg[1:] in env, f"{unit.name}: {arg} is not set by an Environment= line"
                args += env[arg[1:]].split()
                continue
            arg = re.sub(r"%.", lambda m: specifiers.get(m.group(0), m.group(0)), arg)
            assert "%" not in arg, f"{unit.name}: a specifier this test does not know in {arg!r}"
            args.append(arg)
        commands.append(args)
    assert commands, f"{unit.name} has no ExecStart="
    return commands


def test_the_units_commands_exist() -> None:
    assert isinstance(main, click.Group)
    assert {"run", "backfill", "verify", "retention"} <= set(main.commands)


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_service_command_is_accepted_by_the_cli(unit: Path) -> None:
    for args in exec_start_args(unit):
        command: click.Command = main
        ctx = click.Context(main, info_name="exotel-archiver", obj={})
        rest = list(args)
        while isinstance(command, click.Group):  # e.g. `retention purge ...`
            name = rest.pop(0)
            assert name in command.commands, (
                f"{unit.name} runs `exotel-archiver {shlex.join(args)}`: no command {name!r}"
            )
            command = command.commands[name]
            result = CliRunner().invoke(main, [*args[: len(args) - len(rest)], "--help"])
            assert result.exit_code == 0, result.output
            if isinstance(command, click.Group):
                ctx = click.Context(command, info_name=name, parent=ctx, obj={})
        # Parse (and convert) the unit's own arguments as the command would, without running
        # it: an unknown flag or a value its type refuses raises a click.UsageError here.
        try:
            command.make_context(command.name, rest, parent=ctx)
        except click.UsageError as exc:
            pytest.fail(
                f"{unit.name}: `exotel-archiver {shlex.join(args)}`: {exc.format_message()}"
            )


def test_the_retention_timer_purges_only_in_dry_run_until_told_otherwise() -> None:
    unit = UNIT_DIR / "exotel-archiver-retention.service"
    purges = [a for a in exec_start_args(unit) if a[:2] == ["retention", "purge"]]
    assert purges and all("--dry-run" in a for a in purges)


def test_units_sharing_a_state_directory_run_as_one_user() -> None:
    # With DynamicUser=yes, units that name the same User= share one UID while they run; units
    # that do not would each chown the shared state directory away from the other.
    users: dict[str, set[str]] = {}
    for unit in SERVICES:
        for state in values(unit, "Service", "StateDirectory"):
            users.setdefault(state, set()).update(values(unit, "Service", "User") or ["(none)"])
    assert users, "no unit has a StateDirectory="
    for state, names in users.items():
        assert len(names) == 1, f"StateDirectory={state} is used by units running as {names}"


# --- What systemd restarts ------------------------------------------------------------------------

EXIT_USAGE = 2
"""The CLI's exit code for a usage or configuration error (archiver.cli._shared.EXIT_USAGE)."""


def restart_policy(unit: Path) -> str:
    """The unit's Restart= (the last assignment wins; systemd's default is "no")."""
    return (values(unit, "Service", "Restart") or ["no"])[-1]


def prevented_exit_statuses(unit: Path) -> set[str]:
    """Every exit status (or signal) RestartPreventExitStatus= lists; an empty assignment resets
    the list, as in systemd."""
    found: set[str] = set()
    for value in values(unit, "Service", "RestartPreventExitStatus"):
        found = found | set(value.split()) if value else set()
    return found


def test_the_exit_code_for_a_configuration_error_is_the_one_the_units_know() -> None:
    from archiver.cli._shared import EXIT_USAGE as cli_exit_usage

    assert cli_exit_usage == EXIT_USAGE


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_a_configuration_error_is_not_restarted(unit: Path) -> None:
    # Exit code 2 is a configuration error (bad setting, credentials refused, bucket missing, a
    # local destination it may not write): starting again changes nothing. Restarted every
    # RestartSec=10 it never reaches the start limit, so without RestartPreventExitStatus=2 the
    # unit would loop forever instead of staying failed with its message in the journal.
    if restart_policy(unit) == "no":
        # Nothing restarts it (the oneshot jobs: their timer starts them again at the next
        # elapse, a day or a week later, which is what should happen to a failed job).
        assert values(unit, "Service", "Type") == ["oneshot"], (
            f"{unit.name}: a long-running service that systemd never restarts"
        )
        return
    assert str(EXIT_USAGE) in prevented_exit_statuses(unit), (
        f"{unit.name}: Restart={restart_policy(unit)} without RestartPreventExitStatus="
        f"{EXIT_USAGE}: a configuration error would be restarted every "
        f"RestartSec={(values(unit, 'Service', 'RestartSec') or ['100ms'])[-1]}, forever"
    )


def test_the_long_running_workers_restart_after_a_crash() -> None:
    # What can recover (a crash, the watchdog, a forced stop: exit 1, a signal) is restarted.
    workers = [u for u in SERVICES if values(u, "Service", "Type") == ["notify"]]
    assert {u.name for u in workers} == {"exotel-archiver.service", "exotel-archiver@.service"}
    for unit in workers:
        assert restart_policy(unit) == "on-failure", unit.name
        assert "1" not in prevented_exit_statuses(unit), unit.name
