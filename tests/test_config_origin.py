"""Configuration errors name what the operator typed: the flag when the bad value came from a
flag, the variable when from the environment, the key and file when from TOML, the file when
from $CREDENTIALS_DIRECTORY; never a secret's value; every unknown config key at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.config import load_settings
from archiver.errors import ConfigError
from archiver.simulator import Simulator
from archiver.simulator.server import SimulatorServer
from tests.support import exotel_env, invoke

ENV = {
    "EXOTEL_ACCOUNT_SID": "acct",
    "EXOTEL_API_KEY": "key-123456",
    "EXOTEL_API_TOKEN": "tok-abcdef",
    "ARCHIVER_CONFIG": "",
}
LISTEN = "must be HOST:PORT such as 127.0.0.1:9100; got '9101'"


def _error(
    tmp_path: Path,
    *,
    cli: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
    toml: str | None = None,
) -> tuple[str, Path]:
    """The message of the ConfigError these settings raise, and the config file's path."""
    cfg = tmp_path / "f.toml"
    if toml is not None:
        cfg.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(cli, env={**ENV, **(env or {})}, config_file=cfg if toml else None)
    return str(caught.value), cfg


def test_a_listen_address_names_the_flag_the_variable_or_the_key_and_file(
    tmp_path: Path,
) -> None:
    message, _ = _error(tmp_path, cli={"metrics_listen": "9101"})
    assert message == f"--metrics-listen {LISTEN}"
    message, _ = _error(tmp_path, env={"ARCHIVER_METRICS_LISTEN": "9101"})
    assert message == f"ARCHIVER_METRICS_LISTEN {LISTEN}"
    message, cfg = _error(tmp_path, toml="[daemon]\nmetrics_listen = '9101'\n")
    assert message == f"daemon.metrics_listen in config file {cfg} {LISTEN}"
    message, cfg = _error(tmp_path, toml="[daemon]\nwebhook_listen = 'x'\n")
    assert message.startswith(f"daemon.webhook_listen in config file {cfg} must be HOST:PORT")


@pytest.mark.parametrize(
    "cli, env, toml, named, problem",
    [
        ({"api_url": "ftp://x"}, {}, None, "--api-url", "must be an http"),
        ({}, {"EXOTEL_V1_API_URL": "ftp://x"}, None, "EXOTEL_V1_API_URL", "must be an http"),
        ({}, {}, "[exotel]\nv1_api_url = 'ftp://x'\n", "exotel.v1_api_url in config", "http"),
        ({}, {}, "[exotel]\napi_url = 'http://exotel.com'\n", "exotel.api_url in", "unencrypted"),
        ({"account_sid": "a/b"}, {}, None, "--account-sid", "not a valid account SID"),
        (
            {},
            {"EXOTEL_ACCOUNT_SID": ""},
            "[exotel]\naccount_sid = 'a b'\n",
            "exotel.account_sid in config",
            "not a valid",
        ),
        ({"timezone": "Mars/Base"}, {}, None, "--timezone", "is not known"),
        ({}, {}, "[exotel]\ntimezone = 'Mars/Base'\n", "exotel.timezone in config", "not known"),
        ({"key_template": "{yyyy}"}, {}, None, "--key-template", "must contain {call_sid}"),
        ({"concurrency": 0}, {}, None, "--concurrency", "must be between"),
        ({}, {}, "[archiver]\nconcurrency = 'x'\n", "archiver.concurrency in config", "number"),
        ({}, {"ARCHIVER_WEBHOOK_BASIC_AUTH": "x"}, None, "ARCHIVER_WEBHOOK_BASIC_AUTH", "USER:"),
        ({}, {}, "[daemon]\nwebhook_basic_auth = 'x'\n", "daemon.webhook_basic_auth in", "USER"),
    ],
)
def test_every_check_names_where_the_value_came_from(
    tmp_path: Path,
    cli: dict[str, object],
    env: dict[str, str],
    toml: str | None,
    named: str,
    problem: str,
) -> None:
    message, cfg = _error(tmp_path, cli=cli, env=env, toml=toml)
    assert message.startswith(named), message
    assert problem in message
    if toml is not None:
        assert str(cfg) in message
    # Only the origin it came from: a flag's error does not send the operator to a variable.
    if cli:
        assert "ARCHIVER_" not in message and "EXOTEL_" not in message, message


def test_the_recheck_limits_name_both_origins(tmp_path: Path) -> None:
    message, cfg = _error(
        tmp_path, cli={"recheck_max": 1}, toml="[daemon]\nrecheck_interval = 120\n"
    )
    assert message.startswith("--recheck-max (1 minutes) is shorter than ")
    assert f"daemon.recheck_interval in config file {cfg} (120 seconds)" in message
    assert "ARCHIVER_RECHECK" not in message
    message, _ = _error(tmp_path, env={"ARCHIVER_RECHECK_INTERVAL": "3600"})
    assert "ARCHIVER_RECHECK_INTERVAL (3600 seconds)" in message
    assert "daemon.recheck_max" in message  # the default's name: where to change it


def test_credential_files_are_an_origin(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "webhook-basic-auth").write_text("no-colon-in-this-one\n")
    message, _ = _error(tmp_path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert message.startswith(f"credential file {creds / 'webhook-basic-auth'} must be USER:")
    assert "no-colon-in-this-one" not in message
    (creds / "webhook-basic-auth").unlink()
    (creds / "exotel-api-key").mkdir()  # unreadable as a file
    env = {"CREDENTIALS_DIRECTORY": str(creds), "EXOTEL_API_KEY": ""}
    message, _ = _error(tmp_path, env=env)
    assert message.startswith(f"credential file {creds / 'exotel-api-key'}"), message


SECRET = "Sup3r-s3cret-Valu3"


@pytest.mark.parametrize(
    "env, toml",
    [
        ({"ARCHIVER_WEBHOOK_BASIC_AUTH": SECRET}, None),
        ({}, f"[daemon]\nwebhook_basic_auth = '{SECRET}'\n"),
        ({"EXOTEL_API_TOKEN": ""}, "[exotel]\napi_token = 98765432101234\n"),
        ({}, "[daemon]\nwebhook_secret = 98765432101234\n"),
        ({"EXOTEL_API_KEY": ""}, "[exotel]\napi_key = ['98765432101234']\n"),
        ({"EXOTEL_API_URL": f"ftp://user:{SECRET}@example.com"}, None),
        ({"EXOTEL_V1_API_URL": f"http://user:{SECRET}@example.com"}, None),
        ({}, f"[exotel]\napi_tokn = '{SECRET}'\n"),  # a misspelt secret's key: named, not shown
    ],
)
def test_a_secret_is_never_echoed(tmp_path: Path, env: dict[str, str], toml: str | None) -> None:
    message, _ = _error(tmp_path, env=env, toml=toml)
    assert SECRET not in message and "98765432101234" not in message, message
    assert "Sup3r" not in message and "9876" not in message


def test_every_unknown_key_is_reported_with_a_suggestion(tmp_path: Path) -> None:
    toml = (
        "[exotel]\nregoin = 'mumbai'\naccount_sid = 'acct'\n"
        "[archiver]\nregion = 'mumbai'\nconcurency = 3\nzzzzqqqq = 1\n"
        "[exotle]\nx = 1\n"
        "[daemon]\npoll_intervall = 5\n"
    )
    message, cfg = _error(tmp_path, toml=toml)
    lines = message.splitlines()
    assert str(cfg) in lines[0]
    problems = lines[1:]
    assert len(problems) == 6, message
    expected = [
        "exotel.regoin: did you mean exotel.region?",
        "archiver.region: did you mean exotel.region?",
        "archiver.concurency: did you mean archiver.concurrency?",
        "daemon.poll_intervall: did you mean daemon.poll_interval?",
        "[exotle]: did you mean [exotel]?",
    ]
    for text in expected:
        assert any(text in line for line in problems), (text, message)
    assert any("archiver.zzzzqqqq" in line and "did you mean" not in line for line in problems)


def test_a_key_outside_any_section_is_placed(tmp_path: Path) -> None:
    message, _ = _error(tmp_path, toml="region = 'mumbai'\n")
    assert "did you mean exotel.region?" in message


def _cli_error(result_output: str, exit_code: int) -> str:
    assert exit_code == 2, result_output
    assert "Traceback" not in result_output
    lines = result_output.strip().splitlines()
    assert len(lines) == 1, result_output
    return lines[0]


@pytest.mark.parametrize("form", ["flag", "env", "toml"])
def test_run_refuses_a_bad_metrics_address_naming_what_was_typed(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, form: str
) -> None:
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state")
    args = ["run"]
    cfg = tmp_path / "f.toml"
    if form == "flag":
        args += ["--metrics-listen", "9101"]
        named = "--metrics-listen"
    elif form == "env":
        env["ARCHIVER_METRICS_LISTEN"] = "9101"
        named = "ARCHIVER_METRICS_LISTEN"
    else:
        cfg.write_text("[daemon]\nmetrics_listen = '9101'\n")
        env["ARCHIVER_CONFIG"] = str(cfg)
        named = f"daemon.metrics_listen in config file {cfg}"
    result = invoke(args, env)
    line = _cli_error(result.output, result.exit_code)
    assert f"{named} {LISTEN}" in line, line
    assert sim.counters.get("api_requests", 0) == 0  # refused before any Exotel request
