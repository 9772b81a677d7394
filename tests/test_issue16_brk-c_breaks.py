"""Issue 16, brk-c: options, messages, terminal output, closed pipes, the docs-commands test.

Each test runs the real program (``python -m archiver`` in its own process, or the real click
command) and fails on a bug found by review; none fixes anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.support import child_env, exotel_env, run_archiver
from tests.test_docs_commands import code_lines, command_part
from tests.test_help import commands

ROOT = Path(__file__).resolve().parent.parent


# --- messages: secrets in errors ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_api_url_without_its_scheme_slashes_echoes_the_exotel_token(
    tmp_path: Path, fmt: str
) -> None:
    """Exotel's own docs write API URLs as ``https://KEY:TOKEN@api.exotel.com/...``. An operator
    who pastes one without its ``https://`` (or with ``https//``) gets the token back in the
    error — although the very same token is set as EXOTEL_API_TOKEN, a known secret: the
    "must not contain credentials" check looks only at a parsed userinfo, and the next error
    shows the raw value with ``got {url!r}``, before the redactor knows any secret."""
    token = "tok3nS3cretValue9f8e7d6c"
    env = child_env(EXOTEL_ACCOUNT_SID="acme1", EXOTEL_API_KEY="apikey123", EXOTEL_API_TOKEN=token)
    for url in (f"apikey123:{token}@api.exotel.com", f"https//apikey123:{token}@api.exotel.com"):
        done = run_archiver(
            ["archive", "--destination", str(tmp_path / "d"), "--state-dir",
             str(tmp_path / "s"), "--log-format", fmt, "cabfb1dfa8c5e1c7f2c458423b7716b3"],
            {**env, "EXOTEL_API_URL": url},
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert token not in done.stderr + done.stdout, done.stderr


def test_a_text_mode_error_is_not_redacted(tmp_path: Path) -> None:
    """In JSON mode the same error line has the URL's password ``[redacted]``; with
    ``--log-format text`` (a terminal's default) ``fail()`` -> ``emit()`` prints the message
    straight to stderr, past the redactor — even a value it knows (here the password is also
    AWS_SECRET_ACCESS_KEY, which the redactor is given from the environment)."""
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYzzSecretKey"
    env = child_env(
        ARCHIVER_DESTINATION=f"https://minio:{secret}@minio.example.internal:9000/recordings",
        ARCHIVER_STATE_DIR=str(tmp_path / "state"),
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_ACCESS_KEY_ID="minio",
    )
    as_json = run_archiver(["verify", "--log-format", "json"], env)
    assert as_json.returncode == 2 and secret not in as_json.stderr  # redacted there
    as_text = run_archiver(["verify", "--log-format", "text"], env)
    assert as_text.returncode == 2, as_text.stderr
    assert secret not in as_text.stderr, as_text.stderr


def test_an_s3_destination_with_keys_in_it_echoes_the_secret_key(tmp_path: Path) -> None:
    """``s3://ACCESS:SECRET@bucket/prefix`` (the form s3a/duplicity-style tools take): the
    redactor masks the URL's userinfo, but the same error then names the "bucket"
    ``'ACCESS:SECRET@bucket'`` in full — in JSON mode too, for the journal."""
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYzzSecretKey"
    env = child_env(
        ARCHIVER_DESTINATION=f"s3://AKIAIOSFODNN7EXAMPLE:{secret}@recordings/exotel",
        ARCHIVER_STATE_DIR=str(tmp_path / "state"),
    )
    done = run_archiver(["verify", "--log-format", "json"], env)
    assert done.returncode == 2, done.stderr
    assert secret not in done.stderr, done.stderr


# --- messages: tracebacks for a bad value --------------------------------------------------------


def test_a_config_file_not_in_utf8_is_a_traceback(tmp_path: Path) -> None:
    """A config file saved in Latin-1 / Windows-1252 (an accented comment): tomllib raises
    ``UnicodeDecodeError``, which ``read_config_file`` does not catch (only OSError and
    TOMLDecodeError): a Python traceback and exit 1, instead of one line and exit 2."""
    config = tmp_path / "config.toml"
    config.write_bytes(
        b"# Configuraci\xf3n de producci\xf3n\n[archiver]\n"
        + f'destination = "{tmp_path / "d"}"\nstate_dir = "{tmp_path / "s"}"\n'.encode()
    )
    done = run_archiver(["--config", str(config), "verify", "--log-format", "text"], child_env())
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert str(config) in done.stderr


def test_a_credential_file_not_in_utf8_is_a_traceback(tmp_path: Path) -> None:
    """A LoadCredential= file written as UTF-16 (Windows' "Unicode"): ``_credential`` catches
    OSError only, so the ``UnicodeDecodeError`` is a traceback (exit 1) naming no file."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "exotel-api-token").write_bytes("t0ken".encode("utf-16"))
    env = child_env(CREDENTIALS_DIRECTORY=str(creds))
    done = run_archiver(
        ["verify", "--destination", str(tmp_path / "d"), "--state-dir", str(tmp_path / "s"),
         "--log-format", "text"],
        env,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert "exotel-api-token" in done.stderr


# --- terminal output: a closed pipe ------------------------------------------------------------


def test_a_closed_pipe_in_text_mode_leaves_the_last_runs_report(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """``exotel-archiver archive ... --report r.json 2>&1 | head -1`` with text logs
    (ARCHIVER_LOG_FORMAT=text in the operator's profile): the summary line goes to stdout (now
    dropped quietly), but the ``FAILED`` line is ``print``ed to the closed stderr, the
    BrokenPipeError escapes ``print_report`` and the command ends before ``write_report``.
    The exit code is 1, but the report file is still the previous run's: "failed: 0"."""
    ok, bad = sim.add_call().sid, sim.add_call().sid
    sim.faults.recording_url_for[bad] = "https://recordings.invalid:0/x.mp3"
    report = tmp_path / "report.json"
    env = child_env(
        **exotel_env(sim, server.base_url, str(tmp_path / "dest"), tmp_path / "state"),
        ARCHIVER_ATTEMPTS="1",
        ARCHIVER_LOG_FORMAT="text",
        PYTHONPATH=str(ROOT),
    )
    first = run_archiver(["archive", ok, "--report", str(report)], env)
    assert first.returncode == 0, first.stderr
    assert json.loads(report.read_text())["counts"]["failed"] == 0

    read, write = os.pipe()
    os.close(read)  # the reader (head -1) is gone
    try:
        second = subprocess.run(
            [sys.executable, "-m", "archiver", "archive", ok, bad, "--report", str(report)],
            env=env, stdout=write, stderr=write, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert second.returncode == 1
    assert json.loads(report.read_text())["counts"]["failed"] == 1, "the report is stale"


# --- terminal output: the demo's "check it" command ----------------------------------------------


def test_the_demos_check_it_command_fails_when_pasted_by_a_configured_operator(
    tmp_path: Path,
) -> None:
    """The demo prints ``Check it: ... verify --destination D --state-dir S``. An operator who
    has already exported EXOTEL_ACCOUNT_SID (README's set-up; or has ARCHIVER_CONFIG with an
    account_sid) pastes it and gets exit 2, "holds the archive of Exotel account simaccount,
    but EXOTEL_ACCOUNT_SID is ...": the line does not name the demo's account."""
    env = child_env()
    demo = run_archiver(["demo", "--dir", str(tmp_path / "demo"), "--calls", "2"], env)
    assert demo.returncode == 0, demo.stderr
    (line,) = [x for x in demo.stdout.splitlines() if x.startswith("Check it:")]
    pasted = subprocess.run(
        ["bash", "-c", line.removeprefix("Check it:").strip()],
        env={**env, "EXOTEL_ACCOUNT_SID": "mycompany1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pasted.returncode == 0, pasted.stderr


# --- the docs-commands test ----------------------------------------------------------------------


def test_an_example_in_a_commands_help_text_is_not_checked() -> None:
    """tests/test_docs_commands.py checks each command's ``example=`` only. ``reconcile
    --help`` also shows, from its docstring, ``Example: exotel-archiver reconcile --since
    2026-11-01 --until 2026-11-30 --html coverage.html``: fixed dates, the very mistake that
    test was written against (docs/operations.md's fixed range that went older than Exotel's
    six months). Every ``exotel-archiver ...`` line ``--help`` shows must be one it checks."""
    unchecked = []
    for path, command in commands():
        for found in re.finditer(r"Example:\s*(exotel-archiver [^\n]+)", command.help or ""):
            if found.group(1).strip() != (getattr(command, "example", "") or "").strip():
                unchecked.append(f"{path}: {found.group(1)}")
    assert not unchecked, unchecked


@pytest.mark.parametrize(
    "block",
    [
        "```sh\nif exotel-archiver verify --bogus; then echo ok; fi\n```\n",
        '```sh\nfor sid in CA1 CA2; do exotel-archiver archive --bogus "$sid"; done\n```\n',
        "```sh\nhead=$(exotel-archiver status --json --bogus)\n```\n",
        "```sh\nsudo -E exotel-archiver verify --bogus\n```\n",
        "```sh\nenv ARCHIVER_LOG_LEVEL=debug exotel-archiver verify --bogus\n```\n",
        "~~~sh\nexotel-archiver verify --bogus\n~~~\n",
    ],
    ids=["if", "for-do", "command-substitution", "sudo-E", "env", "tilde-fence"],
)
def test_the_docs_check_silently_skips_a_command_line(tmp_path: Path, block: str) -> None:
    """Common shell forms of running the program that ``code_lines``/``command_part`` never
    see: a doc showing one of them with an unknown flag passes tests/test_docs_commands.py."""
    doc = tmp_path / "doc.md"
    doc.write_text(block)
    found = [words for _, line, _ in code_lines(doc) if (words := command_part(line))]
    assert found, f"not read: {block!r}"
