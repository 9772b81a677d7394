"""The option table: every setting's TOML place, environment variable, CLI flag and help.

One table, ``OPTIONS``, names each setting once: the CLI builds its flags from it
(``archiver.cli._shared``), ``archiver.config`` reads the environment and the TOML file with it,
and docs/configuration.md lists it (tests/test_docs.py checks that the two agree).

Each option says which commands read it (``commands``): only those get its flag, so ``--help``
of a command shows what matters to it, in sections (``group``). tests/test_help.py runs every
command and checks that each flag it shows is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archiver.keys import DEFAULT_TEMPLATE

# --- who reads what: sets of command paths ("retention plan" for a subcommand) ---------------

ARCHIVING = frozenset({"archive", "backfill", "run"})
"""Commands that find calls and archive them."""
FETCHING = ARCHIVING | {"repair"}
"""Commands that download recordings from Exotel (repair fetches lost ones again)."""
CALLING = FETCHING | {"reconcile"}
"""Commands that make Exotel API requests."""
LISTING = frozenset({"backfill", "run", "reconcile"})
"""Commands that read Exotel's v1 call listing."""
RETENTION_WRITERS = frozenset(
    {"retention apply", "retention hold", "retention release", "retention purge"}
)
WRITING = FETCHING | RETENTION_WRITERS
"""Commands that write objects into the destination (recordings, manifest segments)."""
SEALING = FETCHING | {"retention apply", "retention purge"}
"""Commands that seal manifest segments once ``segment_entries`` wait."""
STATEFUL = WRITING | {
    "verify",
    "decrypt",
    "reconcile",
    "status",
    "manifest rebuild",
    "retention plan",
    "retention audit",
}
"""Commands that use the state directory (ledger, manifest.jsonl)."""
STORED = STATEFUL | {"manifest export", "export-bag"}
"""Commands that open the destination: every command but demo and simulate."""
IDENTIFIED = STORED - {"manifest export", "manifest rebuild"}
"""Commands that check the destination's identity marker (which names the Exotel account)."""
WORKER = frozenset({"run"})

EXOTEL, DESTINATION, WHAT, BEHAVIOUR, WORKER_GROUP, LOGGING = (
    "Exotel",
    "Destination",
    "What to archive",
    "Behaviour",
    "Worker",
    "Logging",
)
GROUPS = (EXOTEL, DESTINATION, WHAT, BEHAVIOUR, WORKER_GROUP, LOGGING)
"""The sections of ``--help``, in order, after the command's own options."""

REGIONS: dict[str, tuple[str, str]] = {
    # region: (v3 "ccm-api" base, v1 base)
    "singapore": ("https://ccm-api.exotel.com", "https://api.exotel.com"),
    "mumbai": ("https://ccm-api.in.exotel.com", "https://api.in.exotel.com"),
}


@dataclass(frozen=True)
class Option:
    """One setting: its TOML place, environment variable, CLI flag (None for secrets) and help."""

    section: str
    key: str
    env: str
    flag: str | None
    help: str
    default: Any = None
    kind: str = "str"  # str | int | float | path | choice
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    credential: str | None = None
    """For secrets: the file name read from ``$CREDENTIALS_DIRECTORY`` (systemd LoadCredential=)."""
    commands: frozenset[str] = frozenset()
    """The commands that read it (``"retention plan"`` for a subcommand): only they have its
    flag, and ``--help`` shows it only there (every command reads the environment and TOML)."""
    group: str = "Behaviour"
    """The section of ``--help`` it is shown in: one of ``GROUPS``."""
    empty_is_value: bool = False
    """An empty environment variable is this option's value (its help says what empty means),
    not "unset, take the default" as for every other option."""

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def dest(self) -> str:
        """The keyword a click command receives for this option."""
        return self.key


OPTIONS: tuple[Option, ...] = (
    Option(
        "exotel",
        "account_sid",
        "EXOTEL_ACCOUNT_SID",
        "--account-sid",
        "Exotel account SID (Dashboard → Settings → API Settings).",
        commands=IDENTIFIED,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "api_key",
        "EXOTEL_API_KEY",
        None,
        "Exotel API key (HTTP Basic user). Environment, credential file or config file only.",
        secret=True,
        credential="exotel-api-key",
        commands=CALLING,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "api_token",
        "EXOTEL_API_TOKEN",
        None,
        "Exotel API token (HTTP Basic password). Environment, credential file or config file only.",
        secret=True,
        credential="exotel-api-token",
        commands=CALLING,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "region",
        "EXOTEL_REGION",
        "--region",
        "Exotel data centre: singapore (ccm-api.exotel.com) or mumbai (ccm-api.in.exotel.com).",
        default="singapore",
        kind="choice",
        choices=tuple(REGIONS),
        commands=CALLING,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "api_url",
        "EXOTEL_API_URL",
        "--api-url",
        "Override the v3 API base URL, e.g. http://127.0.0.1:8080 for the simulator.",
        commands=FETCHING,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "v1_api_url",
        "EXOTEL_V1_API_URL",
        "--v1-api-url",
        "Override the v1 API base URL (bulk call listing).",
        commands=LISTING,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "timezone",
        "EXOTEL_TIMEZONE",
        "--timezone",
        "The account's time zone: v1 listings take and give times without an offset in it, and "
        "--since/--until dates are days in it.",
        default="Asia/Kolkata",
        commands=LISTING,
        group=EXOTEL,
    ),
    Option(
        "exotel",
        "rate_limit",
        "EXOTEL_RATE_LIMIT",
        "--rate-limit",
        "Exotel API requests per minute, shared by every request of this worker. Exotel allows "
        "200 per account, shared with every other system using it (click-to-call, CRM): the "
        "default leaves them 80. Raise it only if nothing else uses the account.",
        default=120,
        kind="int",
        minimum=1,
        maximum=10_000,
        commands=CALLING,
        group=EXOTEL,
    ),
    Option(
        "archiver",
        "destination",
        "ARCHIVER_DESTINATION",
        "--destination",
        "Where to archive: s3://bucket/prefix, file:///path or a directory path. S3 endpoint "
        "and credentials come from the standard AWS settings (AWS_ENDPOINT_URL, AWS_PROFILE...).",
        commands=STORED,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "state_dir",
        "ARCHIVER_STATE_DIR",
        "--state-dir",
        "Directory for the ledger and manifest. Default: $STATE_DIRECTORY (systemd), else "
        "$XDG_STATE_HOME/exotel-archiver, else ~/.local/state/exotel-archiver.",
        kind="path",
        commands=STATEFUL,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "concurrency",
        "ARCHIVER_CONCURRENCY",
        "--concurrency",
        "Calls archived at the same time (the default comes from the benchmark's sweep, "
        "docs/performance.md).",
        default=16,
        kind="int",
        minimum=1,
        maximum=256,
        commands=ARCHIVING,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "attempts",
        "ARCHIVER_ATTEMPTS",
        "--attempts",
        "Attempts per request (Exotel API, recording download, storage write) before giving up.",
        default=5,
        kind="int",
        minimum=1,
        maximum=50,
        commands=STORED,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "max_wait",
        "ARCHIVER_MAX_WAIT",
        "--max-wait",
        "Longest wait in seconds between two attempts (Retry-After included).",
        default=30.0,
        kind="float",
        minimum=0,
        maximum=3600,
        commands=STORED,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "url_refreshes",
        "ARCHIVER_URL_REFRESHES",
        "--url-refreshes",
        "Fresh recording URLs fetched per recording when one has expired.",
        default=3,
        kind="int",
        minimum=0,
        maximum=100,
        commands=FETCHING,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "url_validity",
        "ARCHIVER_URL_VALIDITY",
        "--url-validity",
        "Minutes a recording URL is assumed to live when it does not say (no X-Amz-Date/"
        "X-Amz-Expires); also the RecordingUrlValidity asked of v1 listings. Exotel allows 5-60.",
        default=5,
        kind="int",
        minimum=5,
        maximum=60,
        commands=CALLING,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "recording_auth_hosts",
        "ARCHIVER_RECORDING_AUTH_HOSTS",
        "--recording-auth-hosts",
        "Exotel's own recording hosts, comma-separated: only to these, over https, are the "
        "Exotel API key and token sent (HTTP Basic) to download a private recording URL (one "
        "without a signature). Never to a pre-signed URL, another host or a redirect off it. "
        "Empty: never.",
        default="recordings.exotel.com",
        kind="str",
        commands=FETCHING,
        group=EXOTEL,
        empty_is_value=True,
    ),
    Option(
        "archiver",
        "rescue",
        "ARCHIVER_RESCUE",
        "--rescue",
        "on (default): a call the v1 listing shows with a recording URL it can be downloaded "
        "from (PreSignedRecordingUrl, or RecordingUrl on a --recording-auth-hosts host) is "
        "rescued at once from the listing: its recording stored for about 0.01 API requests, "
        "its v3 details fetched later (--enrich). off: every call through its v3 details.",
        default="on",
        kind="choice",
        choices=("on", "off"),
        commands=frozenset({"backfill", "run"}),
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "enrich",
        "ARCHIVER_ENRICH",
        "--enrich",
        "What follows a rescue. background (default): the v3 details of rescued calls are "
        "fetched, oldest first, at --enrich-share of the budget; call.json is stored, any "
        "recording v3 lists that v1 did not is archived, and the call becomes archived. never: "
        "rescued calls stay rescued (no call.json, app/flow/digits metadata lost, and a call "
        "with several recordings keeps only the one v1 lists).",
        default="background",
        kind="choice",
        choices=("background", "never"),
        commands=frozenset({"backfill", "run"}),
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "enrich_share",
        "ARCHIVER_ENRICH_SHARE",
        "--enrich-share",
        "Percent of --rate-limit the enrichment of rescued calls may use; the listing and "
        "the worker's own requests keep the rest.",
        default=50,
        kind="int",
        minimum=1,
        maximum=100,
        commands=frozenset({"backfill", "run"}),
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "listing_settle",
        "ARCHIVER_LISTING_SETTLE",
        "--listing-settle",
        "Hours after a backfill range ends (midnight after its last day, account time zone) "
        "before a v1 listing of it counts as complete: only such a listing is saved and reused "
        "by later runs, and only a call created this long before the listing began is taken to "
        "have no recording when the listing shows none (a younger one is asked about through "
        "v3). It must cover the longest call plus Exotel's post-call processing (recordings "
        "appear up to ~15 minutes after the end).",
        default=6.0,
        kind="float",
        minimum=0.25,
        maximum=720,
        commands=frozenset({"backfill", "reconcile"}),
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "segment_entries",
        "ARCHIVER_SEGMENT_ENTRIES",
        "--segment-entries",
        "Seal a manifest segment into the destination once this many entries wait (and at the "
        "end of every run).",
        default=1000,
        kind="int",
        minimum=1,
        maximum=1_000_000,
        commands=SEALING,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "key_template",
        "ARCHIVER_KEY_TEMPLATE",
        "--key-template",
        "Folder of each call's objects inside the destination. Placeholders: {yyyy} {mm} {dd} "
        "{hh} (call creation time), {call_sid} (required), {direction}, {account_sid}.",
        default=DEFAULT_TEMPLATE,
        commands=ARCHIVING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "voice_logs",
        "ARCHIVER_VOICE_LOGS",
        "--voice-logs",
        "Also archive each call's voice log (GET .../voice-logs): off, json (its JSON) or audio "
        "(its JSON and the file it points to, in --voice-log-format/--voice-log-channel). Each "
        "costs one more API request per call.",
        default="off",
        kind="choice",
        choices=("off", "json", "audio"),
        commands=ARCHIVING | {"manifest rebuild"},
        group=WHAT,
    ),
    Option(
        "archiver",
        "voice_log_format",
        "ARCHIVER_VOICE_LOG_FORMAT",
        "--voice-log-format",
        "Format of the voice-log file to archive: mp3 or wav.",
        default="wav",
        kind="choice",
        choices=("mp3", "wav"),
        commands=ARCHIVING,
        group=WHAT,
    ),
    Option(
        "archiver",
        "voice_log_channel",
        "ARCHIVER_VOICE_LOG_CHANNEL",
        "--voice-log-channel",
        "Channels of the voice-log file: single or dual (agent and customer apart, for QA).",
        default="dual",
        kind="choice",
        choices=("single", "dual"),
        commands=ARCHIVING,
        group=WHAT,
    ),
    Option(
        "archiver",
        "legs",
        "ARCHIVER_LEGS",
        "--legs",
        "Also archive each call's legs (GET .../legs, enabled per account by Exotel): on or off. "
        "Costs one more API request per call.",
        default="off",
        kind="choice",
        choices=("on", "off"),
        commands=ARCHIVING | {"manifest rebuild"},
        group=WHAT,
    ),
    Option(
        "archiver",
        "part_size",
        "ARCHIVER_PART_SIZE",
        "--part-size",
        "Objects of this many MiB or more go to S3 in a multipart upload of parts this size, "
        "streamed as the download arrives; memory use is at most about concurrency x "
        "(part concurrency + 1) x part size.",
        default=8,
        kind="int",
        minimum=5,
        maximum=512,
        commands=FETCHING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "part_concurrency",
        "ARCHIVER_PART_CONCURRENCY",
        "--part-concurrency",
        "Parts of one multipart upload sent to S3 at the same time, while the download goes on.",
        default=2,
        kind="int",
        minimum=1,
        maximum=32,
        commands=FETCHING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "max_recording_size",
        "ARCHIVER_MAX_RECORDING_SIZE",
        "--max-recording-size",
        "Largest recording (or voice-log file) downloaded, in MiB. A bigger one - announced or "
        "streamed - fails its call for good and nothing is stored: a guard against endless or "
        "absurd bodies filling the spool disk. The default is ample: a 4-hour 8 kHz 16-bit "
        "stereo WAV is about 460 MB.",
        default=2048,
        kind="int",
        minimum=1,
        maximum=1_048_576,
        commands=FETCHING,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "allow_private_addresses",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES",
        "--allow-private-addresses",
        "on: recording and voice-log URLs from Exotel may lead to loopback, link-local or "
        "private addresses (e.g. a recording mirror on your network). off (default): refused, "
        "except on the host of the configured Exotel API URL. The cloud metadata address "
        "169.254.169.254 is refused either way.",
        default="off",
        kind="choice",
        choices=("on", "off"),
        commands=FETCHING,
        group=BEHAVIOUR,
    ),
    Option(
        "archiver",
        "s3_addressing_style",
        "ARCHIVER_S3_ADDRESSING_STYLE",
        "--s3-addressing-style",
        "S3 bucket addressing: auto, path or virtual (some S3-compatible stores need path).",
        default="auto",
        kind="choice",
        choices=("auto", "path", "virtual"),
        commands=STORED,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "s3_conditional_writes",
        "ARCHIVER_S3_CONDITIONAL_WRITES",
        "--s3-conditional-writes",
        "Use If-None-Match: * on uploads (write-once enforced by the store): on or off. Turn "
        "off only for stores that reject it; the worker then checks before writing.",
        default="on",
        kind="choice",
        choices=("on", "off"),
        commands=WRITING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "s3_checksum",
        "ARCHIVER_S3_CHECKSUM",
        "--s3-checksum",
        "How the store verifies each upload: sha256 (x-amz-checksum-sha256, AWS S3, MinIO, "
        "SeaweedFS, R2) or md5 (Content-MD5, for stores that refuse x-amz-checksum-* headers). "
        "The worker checks every body's SHA-256 itself either way.",
        default="sha256",
        kind="choice",
        choices=("sha256", "md5"),
        commands=WRITING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "sse",
        "ARCHIVER_SSE",
        "--sse",
        "Server-side encryption asked of the store for every object: none (the bucket's "
        "default applies), aes256 (SSE-S3) or aws:kms (SSE-KMS, with --sse-kms-key-id). The "
        "store's answer must confirm it, or the write fails; the manifest records what it "
        "confirmed. S3 destinations only.",
        default="none",
        kind="choice",
        choices=("none", "aes256", "aws:kms"),
        commands=WRITING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "sse_kms_key_id",
        "ARCHIVER_SSE_KMS_KEY_ID",
        "--sse-kms-key-id",
        "The KMS key for --sse aws:kms: key id, key ARN, alias/NAME or alias ARN. Empty: the "
        "store's default key (aws/s3 on AWS). The credentials need kms:GenerateDataKey and "
        "kms:Decrypt on it (docs/storage.md).",
        default="",
        kind="str",
        commands=WRITING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "sse_kms_context",
        "ARCHIVER_SSE_KMS_CONTEXT",
        "--sse-kms-context",
        "An encryption context for --sse aws:kms, a JSON object of strings such as "
        '{"app": "exotel-archiver"}; KMS binds it to each data key (and logs it in '
        "CloudTrail). Empty: none.",
        default="",
        kind="str",
        commands=WRITING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "encrypt_to",
        "ARCHIVER_ENCRYPT_TO",
        "--encrypt-to",
        "A public key file (PEM: X25519, or RSA of 3072 bits or more): every recording and "
        "voice-log file is encrypted to it before it leaves the worker (AES-256-GCM, a fresh "
        "data key each), so only the holder of the private key can play it back "
        "(exotel-archiver decrypt). Never give the private key here. Empty: off.",
        default="",
        kind="str",
        commands=FETCHING,
        group=DESTINATION,
    ),
    Option(
        "archiver",
        "log_level",
        "ARCHIVER_LOG_LEVEL",
        "--log-level",
        "Log level.",
        default="info",
        kind="choice",
        choices=("debug", "info", "warning", "error"),
        commands=STORED,
        group=LOGGING,
    ),
    Option(
        "archiver",
        "log_format",
        "ARCHIVER_LOG_FORMAT",
        "--log-format",
        "Log lines: text, json (one JSON object per line, for journald and log shippers) or auto "
        "(text on a terminal, json otherwise).",
        default="auto",
        kind="choice",
        choices=("auto", "text", "json"),
        commands=STORED,
        group=LOGGING,
    ),
    Option(
        "daemon",
        "poll_interval",
        "ARCHIVER_POLL_INTERVAL",
        "--poll-interval",
        "Seconds between two polls of Exotel's active calls (one API request each).",
        default=30.0,
        kind="float",
        minimum=1,
        maximum=3600,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "recheck_interval",
        "ARCHIVER_RECHECK_INTERVAL",
        "--recheck-interval",
        "Seconds before a call that is not ready (still active, voice log processing, no "
        "recording yet) is looked at again. A call still active or processing waits twice as "
        "long each time, up to recheck_max.",
        default=60.0,
        kind="float",
        minimum=1,
        maximum=3600,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "recheck_max",
        "ARCHIVER_RECHECK_MAX",
        "--recheck-max",
        "Minutes: the longest wait between two looks at a call still active or processing "
        "(the wait doubles from recheck_interval up to this). At least recheck_interval.",
        default=30.0,
        kind="float",
        minimum=1,
        maximum=1440,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "stuck_after",
        "ARCHIVER_STUCK_AFTER",
        "--stuck-after",
        "Hours after its creation a call still active or processing is reported stuck (one "
        "warning, stuck_calls_total and stuck_calls_now metrics) and from then on looked at "
        "every stuck_recheck minutes. "
        "It is never dropped: it stays not ready in the ledger and in the schedule.",
        default=6.0,
        kind="float",
        minimum=0.25,
        maximum=720,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "stuck_recheck",
        "ARCHIVER_STUCK_RECHECK",
        "--stuck-recheck",
        "Minutes between two looks at a stuck call.",
        default=60.0,
        kind="float",
        minimum=1,
        maximum=1440,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "recording_grace",
        "ARCHIVER_RECORDING_GRACE",
        "--recording-grace",
        "Minutes a terminal call without recordings keeps being re-checked before it is "
        "recorded as having none (Exotel adds recordings up to ~15 minutes after the end); "
        "archive --wait counts them from the call's end.",
        default=20.0,
        kind="float",
        minimum=0,
        maximum=1440,
        commands=WORKER | {"archive"},
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "sweep_interval",
        "ARCHIVER_SWEEP_INTERVAL",
        "--sweep-interval",
        "Minutes between two reconciliation sweeps over Exotel's v1 call listing, which catch "
        "calls never seen active. 0 turns the sweep off.",
        default=15.0,
        kind="float",
        minimum=0,
        maximum=1440,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "sweep_lookback",
        "ARCHIVER_SWEEP_LOOKBACK",
        "--sweep-lookback",
        "Hours of the recent past each sweep lists. After downtime, sweeps reach back to where "
        "the last one got to (at most Exotel's six months) in steps of this many hours (24 at "
        "least) plus one of overlap, one after the other, each step's progress saved.",
        default=24.0,
        kind="float",
        minimum=1,
        maximum=4320,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "shutdown_grace",
        "ARCHIVER_SHUTDOWN_GRACE",
        "--shutdown-grace",
        "Seconds in-flight calls get to finish after the first SIGTERM/SIGINT; what is not done "
        "by then is redone at the next start. Keep it below systemd's TimeoutStopSec.",
        default=60.0,
        kind="float",
        minimum=0,
        maximum=3600,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "webhook_listen",
        "ARCHIVER_WEBHOOK_LISTEN",
        "--webhook-listen",
        "HOST:PORT to receive Exotel StatusCallback hints on (POST /exotel/status-callback). "
        "Off unless set; needs webhook_secret or webhook_basic_auth.",
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "webhook_secret",
        "ARCHIVER_WEBHOOK_SECRET",
        None,
        "Shared secret a StatusCallback must carry (?secret=... in the callback URL, or an "
        "X-Archiver-Secret header).",
        secret=True,
        credential="webhook-secret",
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "webhook_basic_auth",
        "ARCHIVER_WEBHOOK_BASIC_AUTH",
        None,
        "USER:PASSWORD a StatusCallback must present as HTTP Basic auth.",
        secret=True,
        credential="webhook-basic-auth",
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "webhook_max_body",
        "ARCHIVER_WEBHOOK_MAX_BODY",
        "--webhook-max-body",
        "Largest StatusCallback body accepted, in KiB (larger: HTTP 413).",
        default=64,
        kind="int",
        minimum=1,
        maximum=10_240,
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "metrics_listen",
        "ARCHIVER_METRICS_LISTEN",
        "--metrics-listen",
        "HOST:PORT to serve Prometheus metrics on (GET /metrics). Off unless set.",
        commands=WORKER,
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "source_retention",
        "ARCHIVER_SOURCE_RETENTION",
        "--source-retention",
        "Days Exotel keeps recordings on your plan (30 to 365). The worker warns when the oldest "
        "call not yet archived gets close to it.",
        default=30,
        kind="int",
        minimum=1,
        maximum=3650,
        commands=WORKER | {"status"},
        group=WORKER_GROUP,
    ),
    Option(
        "daemon",
        "retention_warning",
        "ARCHIVER_RETENTION_WARNING",
        "--retention-warning",
        "Warn when the oldest call not yet archived is fewer than this many days from "
        "source_retention.",
        default=7,
        kind="int",
        minimum=0,
        maximum=3650,
        commands=WORKER | {"status"},
        group=WORKER_GROUP,
    ),
)

OPTIONS_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
