"""Settings: every option is a CLI flag, an environment variable and a TOML key.

The table of options is ``archiver.options.OPTIONS``; this module reads the environment, the
TOML file and the flags with it into one frozen ``Settings``. Precedence, highest
first: command-line flag, environment variable, config file (``--config`` / ``ARCHIVER_CONFIG``),
built-in default.

Secrets (the Exotel API key and token) have no CLI flag — a flag would show in ``ps`` and shell
history — and are held in ``Secret`` objects whose repr is masked, so a settings object can be
printed or logged without leaking them.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from archiver.errors import ConfigError
from archiver.keys import KeyLayout
from archiver.options import OPTIONS, OPTIONS_BY_KEY, REGIONS, Option
from archiver.retry import RetryPolicy

__all__ = [
    "OPTIONS",
    "OPTIONS_BY_KEY",
    "REGIONS",
    "DaemonSettings",
    "ExotelSettings",
    "Option",
    "Secret",
    "Settings",
    "load_settings",
    "read_config_file",
]

if TYPE_CHECKING:
    from archiver.envelope import Recipient
    from archiver.retention.policy import RetentionPolicy
    from archiver.sinks.base import ServerSideEncryption

_ACCOUNT_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Secret:
    """A string that does not show itself. ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


RETENTION = "[retention]"
"""Where ``read_config_file`` puts the parsed ``[retention]`` table (not an option)."""


@dataclass(frozen=True)
class ExotelSettings:
    account_sid: str
    api_key: Secret
    api_token: Secret
    region: str
    api_url: str
    v1_api_url: str
    rate_limit: int
    timezone: tzinfo


@dataclass(frozen=True)
class DaemonSettings:
    """What only ``exotel-archiver run`` uses. Durations in seconds."""

    poll_interval: float = 30.0
    recheck_interval: float = 60.0
    recheck_max: float = 1800.0
    stuck_after: float = 6 * 3600.0
    stuck_recheck: float = 3600.0
    recording_grace: float = 1200.0
    sweep_interval: float = 900.0
    sweep_lookback: float = 86400.0
    shutdown_grace: float = 60.0
    webhook_listen: tuple[str, int] | None = None
    webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    webhook_basic_auth: Secret = field(default_factory=lambda: Secret(""))
    webhook_max_body: int = 64 * 1024
    """Bytes."""
    metrics_listen: tuple[str, int] | None = None
    source_retention: float = 30 * 86400.0
    retention_warning: float = 7 * 86400.0


@dataclass(frozen=True)
class Settings:
    """Everything a command needs, validated. Safe to print: secrets are masked."""

    exotel: ExotelSettings
    destination: str | None
    state_dir: Path
    concurrency: int
    retry: RetryPolicy
    url_refreshes: int
    url_validity: float
    """Seconds."""
    segment_entries: int
    key_layout: KeyLayout
    voice_logs: str
    voice_log_format: str
    voice_log_channel: str
    legs: bool
    part_size: int
    """Bytes."""
    part_concurrency: int
    s3_addressing_style: str | None
    s3_conditional_writes: bool
    s3_checksum: str
    log_level: str
    log_format: str = "auto"
    max_recording_size: int = 2048 * 1024 * 1024
    """Bytes."""
    allow_private_addresses: bool = False
    listing_settle: float = 6 * 3600.0
    """Seconds: how long after a range's end its listing counts as complete (backfill)."""
    recording_auth_hosts: tuple[str, ...] = ("recordings.exotel.com",)
    """Hosts a private (unsigned) recording URL may be sent the Exotel credentials to (https
    only): ``archiver.recording_auth``."""
    rescue: bool = True
    """Rescue recordings straight from the v1 listing (``archiver.rescue``)."""
    enrich: str = "background"
    """``background`` (fetch the v3 details of rescued calls later) or ``never``."""
    enrich_share: int = 50
    """Percent of the rate limit the enrichment of rescued calls may use."""
    sse: ServerSideEncryption | None = None
    """The server-side encryption every write asks of the store (None: none asked)."""
    encrypt_to: Recipient | None = None
    """The public key recordings are encrypted to before they are stored (None: they are
    stored as they came). Loaded and checked when the settings are read."""
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    retention: RetentionPolicy | None = None
    """Compliance retention classes and rules (config file only), or None."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """The secret values themselves, for the log redactor. Not shown in repr."""

    def require_destination(self) -> str:
        if not self.destination:
            raise ConfigError(
                "no destination set: pass --destination s3://bucket/prefix (or a directory), "
                "or set ARCHIVER_DESTINATION"
            )
        return self.destination

    def require_exotel_credentials(self) -> None:
        missing = [
            f"{opt.env} (or {opt.key} under [exotel] in the config file)"
            for opt, value in (
                (OPTIONS_BY_KEY["account_sid"], self.exotel.account_sid),
                (OPTIONS_BY_KEY["api_key"], self.exotel.api_key),
                (OPTIONS_BY_KEY["api_token"], self.exotel.api_token),
            )
            if not value
        ]
        if missing:
            raise ConfigError("Exotel credentials missing: set " + "; ".join(missing))


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "exotel-archiver"
    return Path.home() / ".local" / "state" / "exotel-archiver"


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file as {key: value}, refusing unknown sections and keys (typos are errors):
    every one at once, each with the valid name it is closest to."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist: fix --config / ARCHIVER_CONFIG"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {exc.start}): save it as UTF-8, as TOML "
            "requires"
        ) from None
    tables = {section: table for section, table in data.items() if section != "retention"}
    problems = [line for section, table in tables.items() for line in _unknown(section, table)]
    if problems:
        raise ConfigError(
            f"config file {path}: {len(problems)} problem(s) (an unknown name is refused, so "
            "that a typo is not ignored):\n  " + "\n  ".join(problems)
        )
    values: dict[str, Any] = {k: v for table in tables.values() for k, v in table.items()}
    if "retention" in data:  # compliance retention classes: archiver.retention.policy
        from archiver.retention.policy import parse_policy

        values[RETENTION] = parse_policy(data["retention"], str(path))
    return values


def _unknown(section: str, table: Any) -> list[str]:
    """What is wrong with one top-level item of the config file, one line per problem."""
    sections = sorted({o.section for o in OPTIONS} | {"retention"})
    if not isinstance(table, dict):
        if section in sections:
            return [f"{section}: must be the table [{section}], not a value"]
        if section in OPTIONS_BY_KEY:  # a key written above every section
            return [f"{section}: did you mean {OPTIONS_BY_KEY[section].name}?"]
        return [f"{section}: not a section such as [exotel] or [archiver]"]
    if section not in sections:
        close = difflib.get_close_matches(section, sections, n=1)
        return [f"[{section}]: " + (f"did you mean [{close[0]}]?" if close else "unknown section")]
    problems = []
    for key in table:
        if key in OPTIONS_BY_KEY and OPTIONS_BY_KEY[key].section == section:
            continue
        close = difflib.get_close_matches(key, list(OPTIONS_BY_KEY), n=1)
        valid = ", ".join(o.key for o in OPTIONS if o.section == section)
        hint = f"did you mean {OPTIONS_BY_KEY[close[0]].name}?" if close else f"not one of {valid}"
        problems.append(f"{section}.{key}: {hint}")
    return problems


def _convert(opt: Option, raw: Any, origin: str) -> Any:
    """Turn a raw value from ``origin`` (what the operator typed it as: a flag, a variable, a
    key in a file) into the option's type, or explain what is wrong. A secret is not shown."""
    got = "" if opt.secret else f", got {raw!r}"
    if opt.kind in ("int", "float"):
        whole = "whole " if opt.kind == "int" else ""
        if opt.kind == "int" and isinstance(raw, float) and not raw.is_integer():
            # int() would cut 12.9 to 12 (and 100.5 to 100, inside the range): never guessed
            raise ConfigError(f"{origin} must be a whole number{got}")
        try:
            number: float = int(raw) if opt.kind == "int" else float(raw)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{origin} must be a {whole}number{got}") from None
        if isinstance(raw, bool) or not math.isfinite(number):  # nan passes any range check
            raise ConfigError(f"{origin} must be a {whole}number{got}")
        if (opt.minimum is not None and number < opt.minimum) or (
            opt.maximum is not None and number > opt.maximum
        ):
            raise ConfigError(f"{origin} must be between {opt.minimum:g} and {opt.maximum:g}{got}")
        return number
    if not isinstance(raw, str):
        raise ConfigError(f"{origin} must be a string{got}")
    if opt.kind == "choice":
        value = raw.strip().lower()
        if value not in opt.choices:
            raise ConfigError(f"{origin} must be one of {', '.join(opt.choices)}{got}")
        return value
    if opt.kind == "path":
        return Path(raw).expanduser()
    return raw.strip()


def _check_base_url(origin: str, url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 address; not shown: it may hold credentials
        raise ConfigError(f"{origin} is not a URL such as https://ccm-api.exotel.com") from None
    if parts.username or parts.password or "@" in url:  # before anything that shows the URL
        # "@" too: KEY:TOKEN@host without "//" (Exotel's docs write https://KEY:TOKEN@host/...)
        # parses with no user or password, and would be shown whole below.
        raise ConfigError(
            f"{origin} must not contain credentials: set EXOTEL_API_KEY/EXOTEL_API_TOKEN instead"
        )
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{origin} must be an http(s) URL such as https://ccm-api.exotel.com; got {url!r}"
        )
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"{origin} uses plain http to {host}: the API credentials would travel "
            "unencrypted. Use https (plain http is accepted only for loopback simulators)."
        )
    return url.rstrip("/")


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def _auth_hosts(origin: str, value: str) -> tuple[str, ...]:
    """The comma-separated host names of ``recording_auth_hosts``, lower-cased: each a bare
    ASCII host name or IPv4 address (no scheme, user, port, path, wildcard, trailing dot or
    whitespace inside), as ``archiver.recording_auth`` compares them."""
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    for host in hosts:
        if not _HOST_NAME.match(host):
            raise ConfigError(
                f"{origin} must be comma-separated host names such as recordings.exotel.com "
                "(no scheme, user, port, path, wildcard or trailing dot; credentials go to "
                f"https on port 443 only); got {host[:80]!r}"
            )
    return hosts


_KMS_KEY = re.compile(r"^[A-Za-z0-9:/_.+=,@-]{1,2048}$")
_MAX_CONTEXT_VALUE = 256
_MAX_CONTEXT = 2048


def _sse(origins: Mapping[str, str], values: Mapping[str, Any]) -> ServerSideEncryption | None:
    """``sse``, ``sse_kms_key_id`` and ``sse_kms_context`` as one ``ServerSideEncryption``."""
    from archiver.sinks.base import ServerSideEncryption

    mode = str(values["sse"])
    key = str(values["sse_kms_key_id"] or "").strip()
    context_text = str(values["sse_kms_context"] or "").strip()
    if mode != "aws:kms" and (key or context_text):
        which = origins["sse_kms_key_id"] if key else origins["sse_kms_context"]
        raise ConfigError(
            f"{which} is set but {origins['sse']} is {mode!r}: a KMS key and context apply only "
            "with --sse aws:kms (set it, or unset the KMS setting)"
        )
    if mode == "none":
        return None
    if mode == "aes256":
        return ServerSideEncryption("AES256")
    if key and not _KMS_KEY.match(key):
        raise ConfigError(
            f"{origins['sse_kms_key_id']} must be a KMS key id, key ARN, alias/NAME or alias "
            f"ARN; got {key[:80]!r}"
        )
    context = None
    if context_text:
        try:
            parsed = json.loads(context_text)
        except ValueError:
            parsed = None
        if (
            not isinstance(parsed, dict)
            or not parsed
            or not all(isinstance(k, str) and isinstance(v, str) and k for k, v in parsed.items())
        ):
            raise ConfigError(
                f"{origins['sse_kms_context']} must be a JSON object of strings, such as "
                '{"app": "exotel-archiver"}'
            )
        context = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
        texts = [*parsed, *parsed.values()]
        if len(context) > _MAX_CONTEXT or any(
            len(t) > _MAX_CONTEXT_VALUE or not t.isprintable() for t in texts
        ):
            raise ConfigError(
                f"{origins['sse_kms_context']}: each key and value must be printable text of at "
                f"most {_MAX_CONTEXT_VALUE} characters (no control characters), the whole "
                f"context at most {_MAX_CONTEXT} characters; stores refuse more (some with a "
                "500 that would be retried forever)"
            )
    return ServerSideEncryption("aws:kms", kms_key_id=key or None, context=context)


def _recipient(origin: str, value: str) -> Recipient | None:
    """The public key file of ``encrypt_to``, loaded and checked (``archiver.envelope``)."""
    if not value.strip():
        return None
    from archiver.envelope import Recipient

    return Recipient.from_file(Path(value.strip()).expanduser(), origin=origin)


def _listen(origin: str, value: str | None) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) as (host, port); None when unset."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{origin} must be HOST:PORT such as 127.0.0.1:9100; got {value!r}")
    return host, int(port)


def _credential(opt: Option, env: Mapping[str, str]) -> tuple[str, str] | None:
    """A secret from systemd's credentials directory (LoadCredential=), if it is there: (its
    origin, its value)."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory or opt.credential is None:
        return None
    path = Path(directory) / opt.credential
    try:
        return f"credential file {path}", path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"credential file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:  # e.g. saved as UTF-16; its content is never shown
        raise ConfigError(
            f"credential file {path} is not UTF-8 text: write it again as plain UTF-8 "
            "(e.g. systemd-creds or printf %s TOKEN > FILE)"
        ) from None


def _zone(origin: str, name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{origin}: time zone {name!r} is not known: use an IANA name such as Asia/Kolkata "
            "or Asia/Singapore (install the tzdata package if none is known)"
        ) from None


def _key_layout(origin: str, template: str) -> KeyLayout:
    try:
        return KeyLayout(template)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge flags, environment, config file and defaults into validated ``Settings``.

    ``cli`` maps option keys (``OPTIONS[i].key``) to values given on the command line; None
    values count as not given. A ``config_file`` of None falls back to ``$ARCHIVER_CONFIG``.
    """
    cli = cli or {}
    env = os.environ if env is None else env
    if config_file is None and env.get("ARCHIVER_CONFIG"):
        config_file = Path(env["ARCHIVER_CONFIG"]).expanduser()
    from_file = read_config_file(config_file) if config_file else {}

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # key -> where its value came from, as the operator typed it
    for opt in OPTIONS:
        if opt.flag and cli.get(opt.key) is not None:
            origin, raw = opt.flag, cli[opt.key]
        elif env.get(opt.env, "") != "" or (opt.empty_is_value and opt.env in env):
            origin, raw = opt.env, env[opt.env]
        elif (credential := _credential(opt, env)) is not None:
            origin, raw = credential
        elif opt.key in from_file:
            origin, raw = f"{opt.name} in config file {config_file}", from_file[opt.key]
        else:
            origins[opt.key], values[opt.key] = f"the default {opt.name}", opt.default
            continue
        origins[opt.key], values[opt.key] = origin, _convert(opt, raw, origin)

    account_sid = values["account_sid"] or ""
    if account_sid and not _ACCOUNT_SID.match(account_sid):
        raise ConfigError(
            f"{origins['account_sid']} is not a valid account SID ({account_sid!r}): letters, "
            "digits, '-' and '_' only, as shown in Exotel's Dashboard → Settings → API Settings"
        )
    v3_default, v1_default = REGIONS[values["region"]]

    def url_origin(key: str) -> str:  # an unset URL is the region's
        return origins[key] if values[key] else origins["region"]

    api_key = values["api_key"] or ""
    api_token = values["api_token"] or ""
    exotel = ExotelSettings(
        account_sid=account_sid,
        api_key=Secret(api_key),
        api_token=Secret(api_token),
        region=values["region"],
        api_url=_check_base_url(url_origin("api_url"), values["api_url"] or v3_default),
        v1_api_url=_check_base_url(url_origin("v1_api_url"), values["v1_api_url"] or v1_default),
        rate_limit=values["rate_limit"],
        timezone=_zone(origins["timezone"], values["timezone"]),
    )
    style = values["s3_addressing_style"]
    webhook_secret = values["webhook_secret"] or ""
    webhook_basic_auth = values["webhook_basic_auth"] or ""
    if webhook_basic_auth and ":" not in webhook_basic_auth:
        raise ConfigError(  # the value is a secret: not shown
            f"{origins['webhook_basic_auth']} must be USER:PASSWORD; it has no ':'"
        )
    if values["recheck_max"] * 60.0 < values["recheck_interval"]:
        raise ConfigError(
            f"{origins['recheck_max']} ({values['recheck_max']:g} minutes) is shorter than "
            f"{origins['recheck_interval']} ({values['recheck_interval']:g} seconds): raise the "
            "first (minutes) or lower the second (seconds)"
        )
    daemon = DaemonSettings(
        poll_interval=values["poll_interval"],
        recheck_interval=values["recheck_interval"],
        recheck_max=values["recheck_max"] * 60.0,
        stuck_after=values["stuck_after"] * 3600.0,
        stuck_recheck=values["stuck_recheck"] * 60.0,
        recording_grace=values["recording_grace"] * 60.0,
        sweep_interval=values["sweep_interval"] * 60.0,
        sweep_lookback=values["sweep_lookback"] * 3600.0,
        shutdown_grace=values["shutdown_grace"],
        webhook_listen=_listen(origins["webhook_listen"], values["webhook_listen"]),
        webhook_secret=Secret(webhook_secret),
        webhook_basic_auth=Secret(webhook_basic_auth),
        webhook_max_body=values["webhook_max_body"] * 1024,
        metrics_listen=_listen(origins["metrics_listen"], values["metrics_listen"]),
        source_retention=values["source_retention"] * 86400.0,
        retention_warning=values["retention_warning"] * 86400.0,
    )
    basic = base64.b64encode(f"{api_key}:{api_token}".encode()).decode() if api_key else ""
    secrets = (
        api_key,
        api_token,
        basic,  # the Authorization value sent to the API and to private recording URLs
        webhook_secret,
        webhook_basic_auth,
        webhook_basic_auth.partition(":")[2],
    )
    return Settings(
        exotel=exotel,
        destination=values["destination"] or None,
        state_dir=values["state_dir"] or default_state_dir(env),
        concurrency=values["concurrency"],
        retry=RetryPolicy(attempts=values["attempts"], max_wait=values["max_wait"]),
        url_refreshes=values["url_refreshes"],
        url_validity=values["url_validity"] * 60.0,
        segment_entries=values["segment_entries"],
        key_layout=_key_layout(origins["key_template"], values["key_template"]),
        voice_logs=values["voice_logs"],
        voice_log_format=values["voice_log_format"],
        voice_log_channel=values["voice_log_channel"],
        legs=values["legs"] == "on",
        part_size=values["part_size"] * 1024 * 1024,
        part_concurrency=values["part_concurrency"],
        s3_addressing_style=None if style == "auto" else style,
        s3_conditional_writes=values["s3_conditional_writes"] == "on",
        s3_checksum=values["s3_checksum"],
        log_level=values["log_level"],
        log_format=values["log_format"],
        max_recording_size=values["max_recording_size"] * 1024 * 1024,
        allow_private_addresses=values["allow_private_addresses"] == "on",
        listing_settle=values["listing_settle"] * 3600.0,
        recording_auth_hosts=_auth_hosts(
            origins["recording_auth_hosts"], str(values["recording_auth_hosts"])
        ),
        rescue=values["rescue"] == "on",
        enrich=values["enrich"],
        enrich_share=values["enrich_share"],
        sse=_sse(origins, values),
        encrypt_to=_recipient(origins["encrypt_to"], str(values["encrypt_to"])),
        daemon=daemon,
        retention=from_file.get(RETENTION),
        secrets=tuple(s for s in secrets if s),
    )
