"""Settings: flags over environment over config file over defaults; secrets never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from archiver.config import OPTIONS, load_settings
from archiver.errors import ConfigError

ENV = {
    "EXOTEL_ACCOUNT_SID": "acct",
    "EXOTEL_API_KEY": "key-123456",
    "EXOTEL_API_TOKEN": "tok-abcdef",
}


def test_region_selects_the_hosts() -> None:
    s = load_settings(env={**ENV, "EXOTEL_REGION": "mumbai"})
    assert s.exotel.api_url == "https://ccm-api.in.exotel.com"
    assert s.exotel.v1_api_url == "https://api.in.exotel.com"
    assert load_settings(env=ENV).exotel.api_url == "https://ccm-api.exotel.com"


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text("[exotel]\nrate_limit = 50\n[archiver]\nconcurrency = 3\nattempts = 7\n")
    s = load_settings({"concurrency": 5}, env={**ENV, "EXOTEL_RATE_LIMIT": "120"}, config_file=cfg)
    assert s.concurrency == 5  # flag beats file
    assert s.exotel.rate_limit == 120  # env beats file
    assert s.retry.attempts == 7  # file beats default
    assert load_settings(env=ENV).exotel.rate_limit == 120  # default: a share of the 200


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text('[exotel]\napi_token = "from-file-token"\n')
    s = load_settings(env={"ARCHIVER_CONFIG": str(cfg), "EXOTEL_API_KEY": "k"})
    assert s.exotel.api_token.reveal() == "from-file-token"


def test_secrets_never_in_repr() -> None:
    s = load_settings(env=ENV)
    text = repr(s) + str(s) + repr(s.exotel)
    assert "key-123456" not in text and "tok-abcdef" not in text
    assert s.exotel.api_token.reveal() == "tok-abcdef"


def test_secrets_have_no_flags() -> None:
    secrets = {"api_key", "api_token", "webhook_secret", "webhook_basic_auth"}
    assert {o.key for o in OPTIONS if o.secret} == secrets
    assert all(o.flag is None for o in OPTIONS if o.secret)
    assert all(o.credential for o in OPTIONS if o.secret)


def test_secrets_from_the_systemd_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "exotel-api-key").write_text("cred-key\n")
    (tmp_path / "exotel-api-token").write_text("cred-token")
    (tmp_path / "webhook-secret").write_text("hook-secret")
    env = {"EXOTEL_ACCOUNT_SID": "acct", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    s = load_settings(env=env)
    assert s.exotel.api_key.reveal() == "cred-key" and s.exotel.api_token.reveal() == "cred-token"
    assert s.daemon.webhook_secret.reveal() == "hook-secret"
    assert {"cred-key", "cred-token", "hook-secret"} <= set(s.secrets)
    assert "cred-key" not in repr(s) and "hook-secret" not in repr(s)
    # The environment still wins over the credential file.
    s = load_settings(env={**env, "EXOTEL_API_KEY": "env-key"})
    assert s.exotel.api_key.reveal() == "env-key"


@pytest.mark.parametrize("value", ["9100", "host:", ":9100", "h:99999", "h:x"])
def test_listen_addresses_are_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="ARCHIVER_METRICS_LISTEN must be HOST:PORT"):
        load_settings(env={"ARCHIVER_METRICS_LISTEN": value})


def test_listen_address_forms() -> None:
    s = load_settings(
        env={"ARCHIVER_METRICS_LISTEN": "[::1]:9100", "ARCHIVER_WEBHOOK_LISTEN": "0.0.0.0:8080"}
    )
    assert s.daemon.metrics_listen == ("::1", 9100)
    assert s.daemon.webhook_listen == ("0.0.0.0", 8080)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"EXOTEL_REGION": "mars"}, "must be one of singapore, mumbai"),
        ({"EXOTEL_RATE_LIMIT": "fast"}, "EXOTEL_RATE_LIMIT.*whole number"),
        ({"EXOTEL_RATE_LIMIT": "0"}, "between 1 and"),
        ({"EXOTEL_API_URL": "ftp://x"}, "must be an http"),
        ({"EXOTEL_API_URL": "http://ccm-api.exotel.com"}, "unencrypted"),
        ({"EXOTEL_API_URL": "https://k:t@ccm-api.exotel.com"}, "must not contain credentials"),
        ({"EXOTEL_ACCOUNT_SID": "a/b"}, "account SID"),
    ],
)
def test_bad_values_name_the_problem(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={**ENV, **env})


def test_loopback_http_is_fine_for_simulators() -> None:
    s = load_settings(env={**ENV, "EXOTEL_API_URL": "http://127.0.0.1:8080/"})
    assert s.exotel.api_url == "http://127.0.0.1:8080"


def test_missing_credentials_are_named() -> None:
    s = load_settings(env={"EXOTEL_ACCOUNT_SID": "acct"})
    with pytest.raises(ConfigError, match=r"EXOTEL_API_KEY.*EXOTEL_API_TOKEN"):
        s.require_exotel_credentials()
    with pytest.raises(ConfigError, match="ARCHIVER_DESTINATION"):
        s.require_destination()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[exotel]\nregoin = 'mumbai'\n", "exotel.regoin: did you mean exotel.region"),
        ("not toml at all [", "not valid TOML"),
        ("exotel = 3\n", "must be the table \\[exotel\\]"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(env=ENV, config_file=cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env=ENV, config_file=tmp_path / "nope.toml")


def test_state_dir_defaults_follow_systemd_then_xdg(tmp_path: Path) -> None:
    assert load_settings(env={"STATE_DIRECTORY": "/var/lib/x"}).state_dir == Path("/var/lib/x")
    assert (
        load_settings(env={"XDG_STATE_HOME": str(tmp_path)}).state_dir
        == tmp_path / "exotel-archiver"
    )


@pytest.mark.parametrize(
    "template, message",
    [
        ("{yyyy}/{mm}", "must contain {call_sid}"),
        ("{yyyy}/{region}/{call_sid}", "unknown placeholder"),
        ("../{call_sid}", "does not make a valid key"),
        ("{call_sid", "does not make a valid key"),
    ],
)
def test_bad_key_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(env={**ENV, "ARCHIVER_KEY_TEMPLATE": template})


def test_the_listing_settle_margin_is_hours_from_flag_env_or_file(tmp_path: Path) -> None:
    assert load_settings(env=ENV).listing_settle == 6 * 3600.0  # the default: 6 hours
    cfg = tmp_path / "a.toml"
    cfg.write_text("[archiver]\nlisting_settle = 12\n")
    assert load_settings(env=ENV, config_file=cfg).listing_settle == 12 * 3600.0
    env = {**ENV, "ARCHIVER_LISTING_SETTLE": "2.5"}
    assert load_settings(env=env, config_file=cfg).listing_settle == 2.5 * 3600.0
    assert load_settings({"listing_settle": 1}, env=env).listing_settle == 3600.0
    with pytest.raises(ConfigError, match="ARCHIVER_LISTING_SETTLE must be between"):
        load_settings(env={**ENV, "ARCHIVER_LISTING_SETTLE": "0.1"})  # shorter than Exotel's 15 min
