"""Breaker B-DEC (issue 19): the reading side of client-side encryption — ``exotel-archiver
decrypt`` (archiver/cli/decrypt.py, archiver/restore.py) and the envelope reader — attacked.

Each test makes a real archive (a backfill with ``ARCHIVER_ENCRYPT_TO`` from the Exotel
simulator into SeaweedFS), does to it what an attacker with bucket write access and the public
key (which is public) can do, or what happens on a restore machine, runs the CLI as a user does,
and fails until the problem it names is fixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.cli import main
from archiver.envelope import MAGIC, Recipient, encrypt_file
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import can_mount_privately, exotel_env, invoke, tmpfs, write_keys

PREFIX = "calls"


@dataclass
class Archived:
    """A real encrypted backfill: the worker's env, the keys, each recording's plaintext."""

    env: dict[str, str]
    public: Path
    private: Path
    bucket: str
    seaweed: SeaweedFS
    tmp: Path
    recordings: dict[str, bytes] = field(default_factory=dict)
    sids: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return Path(self.env["ARCHIVER_STATE_DIR"])

    def playback_env(self) -> dict[str, str]:
        """decrypt where it is meant to run: on the private key's machine, not the worker's —
        the same destination, a state directory of its own (no ledger, no manifest.jsonl)."""
        return {**self.env, "ARCHIVER_STATE_DIR": str(self.tmp / "playback-state")}

    def stored(self, key: str) -> bytes:
        got = self.seaweed.client().get_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}")
        return bytes(got["Body"].read())

    def put_raw(self, key: str, data: bytes) -> None:
        """What someone with write access to the bucket does, behind the archiver's back."""
        self.seaweed.client().put_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}", Body=data)

    def forge(self, plaintext: bytes) -> bytes:
        """A valid envelope of other audio, made with the public key alone."""
        src, dst = io.BytesIO(plaintext), io.BytesIO()
        encrypt_file(src, dst, Recipient.from_file(self.public))
        return dst.getvalue()

    def decrypt(self, env: dict[str, str], *args: str) -> Any:
        return invoke(["decrypt", "--identity", str(self.private), *args], env)


def _backfill(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    **extra: str,
) -> Archived:
    public, private = write_keys(tmp_path)
    day = (datetime.now(IST) - timedelta(days=3)).date()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=IST)
    calls = [
        sim.add_call(recordings=[40_000, 70_000], created=start),
        sim.add_call(recordings=[5_000], created=start + timedelta(minutes=5)),
    ]
    env = {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "ARCHIVER_ENCRYPT_TO": str(public),
        **extra,
    }
    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert result.exit_code == 0, result.output
    made = Archived(env, public, private, bucket, seaweed, tmp_path)
    for call in calls:
        folder = f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}"
        made.sids.append(call.sid)
        for i in range(1, len(call.recordings) + 1):
            made.recordings[f"{folder}/recording-{i}.mp3"] = sim.recording_bytes(call.sid, i)
    assert invoke(["verify"], env).exit_code == 0
    return made


@pytest.fixture
def archived(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> Archived:
    return _backfill(sim, server, seaweed, bucket, tmp_path)


def _envelope_with_header(body: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(body)) + body


# --- 1. a hostile envelope header crashes decrypt with a traceback -----------------------------


def test_a_deeply_nested_envelope_header_is_refused_not_a_traceback(
    archived: Archived, tmp_path: Path
) -> None:
    """Anyone who can write the bucket replaces one recording with ``EXARENC1`` + a 60 000-byte
    header of ``[[[[...``: under MAX_HEADER, so ``Decryptor._read_header`` hands it to
    ``json.loads``, which raises ``RecursionError`` — not a ``ValueError``, so it is not turned
    into a ``DecryptionError``. ``restore_object`` re-raises it, ``run`` does not map it: decrypt
    dies with a traceback, and the call's other recording (intact) is never restored.
    (archiver/chain.py catches RecursionError for segment lines; the envelope reader does not.)
    Expected: that object REFUSED ("the envelope's header is not JSON: it was altered"), the
    other one restored, exit 1."""
    sid = archived.sids[0]
    bad, good = sorted(k for k in archived.recordings if sid in k)
    archived.put_raw(bad, _envelope_with_header(b"[" * 60_000))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["decrypt", "--identity", str(archived.private), "--call", sid, "--out", str(out)],
        env=archived.env,
    )
    assert not isinstance(result.exception, RecursionError), (
        f"decrypt crashed: {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == 1, result.output
    assert f"REFUSED    {bad}: " in result.output
    assert (out / good).read_bytes() == archived.recordings[good]


# --- 2. a chain decrypt itself calls broken is trusted anyway, exit 0 --------------------------


def _segments(archived: Archived) -> list[str]:
    client = archived.seaweed.client()
    listing = client.list_objects_v2(Bucket=archived.bucket, Prefix=f"{PREFIX}/_manifest/segments/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_entries_of_a_chain_known_to_be_broken_restore_forged_audio_with_exit_0(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """decrypt runs on the private key's machine, off the worker (docs/compliance.md): no
    ledger, so its entries are the destination's chain. An attacker with bucket write access
    and the public key edits a recording's entry in a segment that is NOT the newest (its
    ``sha256``/``size``/``plaintext_*`` to those of other audio they encrypted to the public
    key) and puts that envelope at the key. docs/manifest.md's tamper table: "a segment edited,
    other than the newest — detected (the next segment's prev_sha256)", and `verify` does exit
    1. decrypt notices too (it prints "WARNING manifest chain: ... does not follow segment"),
    yet it checks the object against the edited entry, writes the attacker's audio to OUT/KEY,
    prints "restored ... checked" and exits 0 — docs/encryption.md: exit 0 = "every object
    named was restored and checked". `--input --key` does the same without even the warning.
    Expected: an entry from a chain that fails its checks is not one to restore by (refused,
    nothing written, exit 1), or at the very least not exit 0 / "checked"."""
    archived = _backfill(sim, server, seaweed, bucket, tmp_path, ARCHIVER_SEGMENT_ENTRIES="2")
    segments = _segments(archived)
    assert len(segments) >= 2
    client = seaweed.client()
    target = None
    for seg in segments[:-1]:  # not the newest: the edit breaks the next one's prev_sha256
        lines = client.get_object(Bucket=bucket, Key=seg)["Body"].read().decode().splitlines()
        for n, line in enumerate(lines[1:], start=1):
            e = json.loads(line)
            if e.get("encrypted_to") and e["kind"] == "recording":
                target, seg_key, seg_lines, at = e, seg, lines, n
                break
        if target is not None:
            break
    assert target is not None, "no recording entry in an older segment"
    key = target["key"]
    fake_audio = b"ID3" + os.urandom(30_000)  # someone else's "recording"
    forged = archived.forge(fake_audio)
    archived.put_raw(key, forged)
    target.update(
        sha256=hashlib.sha256(forged).hexdigest(),
        size=len(forged),
        plaintext_sha256=hashlib.sha256(fake_audio).hexdigest(),
        plaintext_size=len(fake_audio),
    )
    seg_lines[at] = json.dumps(target, separators=(",", ":"), sort_keys=True)
    client.put_object(Bucket=bucket, Key=seg_key, Body=("\n".join(seg_lines) + "\n").encode())

    env = archived.playback_env()
    verified = invoke(["verify"], env)
    assert verified.exit_code == 1, verified.output  # detected, as the tamper table says
    out = tmp_path / "out"
    result = archived.decrypt(env, key, "--out", str(out))
    restored = (out / key).read_bytes() if (out / key).exists() else None
    assert restored != fake_audio, (
        "decrypt restored the attacker's audio from an entry of a chain that fails its checks, "
        f"exit {result.exit_code}:\n{result.output}"
    )
    assert result.exit_code == 1, result.output

    downloaded = tmp_path / "downloaded.enc"
    downloaded.write_bytes(forged)
    single = tmp_path / "single.mp3"
    result = archived.decrypt(
        env, "--input", str(downloaded), "--output", str(single), "--key", key
    )
    assert result.exit_code == 1 and not single.exists(), (
        f"--input --key restored forged audio, exit {result.exit_code}:\n{result.output}"
    )


# --- 3. a manifest.jsonl line outranks the ledger and the chain --------------------------------


def test_a_manifest_jsonl_line_overrides_the_ledger_entry_of_its_key(
    archived: Archived, tmp_path: Path
) -> None:
    """archiver/restore.py: an object is restored by "the chain in the destination, checked
    ... with the state directory's ledger ..., and manifest.jsonl for what neither holds";
    docs/manifest.md: manifest.jsonl is "convenient, but not evidence". But ``open_archive``
    adds every manifest.jsonl line whose *seq* the chain lacks, and ``_by_key`` lets the later
    entry of a key win: one extra line naming a key the ledger and the chain already hold (a
    seq past the end, other hashes) replaces that key's entry. With the object swapped for an
    envelope of other audio (made with the public key), `verify` — same state directory, same
    destination — says the key is ``altered`` (exit 1), while decrypt restores the other audio
    as "checked" and exits 0. Expected: a key the ledger/chain names is checked by that entry
    only (refused here, nothing written, exit 1)."""
    key = next(iter(archived.recordings))
    fake_audio = b"ID3" + os.urandom(20_000)
    forged = archived.forge(fake_audio)
    archived.put_raw(key, forged)
    manifest = archived.state / "manifest.jsonl"
    entries = read_manifest(manifest)
    original = next(e for e in entries if e["key"] == key and "encrypted_to" in e)
    line = {
        **original,
        "seq": max(e["seq"] for e in entries) + 1000,
        "sha256": hashlib.sha256(forged).hexdigest(),
        "size": len(forged),
        "plaintext_sha256": hashlib.sha256(fake_audio).hexdigest(),
        "plaintext_size": len(fake_audio),
    }
    with open(manifest, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")

    verified = invoke(["verify"], archived.env)
    assert verified.exit_code == 1 and "altered" in verified.output, verified.output
    out = tmp_path / "out"
    result = archived.decrypt(archived.env, key, "--out", str(out))
    restored = (out / key).read_bytes() if (out / key).exists() else None
    assert restored != fake_audio, (
        "decrypt checked the object against a manifest.jsonl line instead of the ledger's "
        f"entry (verify: altered), exit {result.exit_code}:\n{result.output}"
    )
    assert result.exit_code == 1, result.output


# --- 4. one object's trouble at its place ends the whole restore, blaming the state dir -------


def test_a_folder_standing_at_one_objects_place_aborts_the_others(
    archived: Archived, tmp_path: Path
) -> None:
    """``_Pending.keep`` (os.replace) and ``_Pending.__init__`` (make_dirs, os.open) are outside
    restore_object's ``except DecryptionError``: an OSError at one object's place — here a
    folder already at OUT/KEY (left by an earlier mistake) — propagates to ``run``, which takes
    it for a state-directory problem ("set --state-dir / ARCHIVER_STATE_DIR ..."), stops the
    whole run (the call's other recording is never restored) and prints no REFUSED line for the
    object nor the summary. Expected (docs/encryption.md): that object "named with the reason",
    the others restored, exit 1."""
    sid = archived.sids[0]
    first, second = sorted(k for k in archived.recordings if sid in k)
    out = tmp_path / "out"
    (out / first).mkdir(parents=True)
    result = archived.decrypt(archived.env, "--call", sid, "--out", str(out))
    assert "state-dir" not in result.output and "state directory" not in result.output, (
        result.output
    )
    assert f"REFUSED    {first}: " in result.output, result.output
    assert (out / second).read_bytes() == archived.recordings[second], result.output
    assert result.exit_code == 1


# --- 5. an object much larger than its entry is downloaded and decrypted in full ---------------


def test_an_object_far_larger_than_its_entry_is_refused_before_it_fills_the_disk(
    archived: Archived, tmp_path: Path
) -> None:
    """``restore_object`` stats the object but does not compare its size with the entry's
    ``size``: an attacker with bucket write access puts a 24 MiB valid envelope (the public key
    suffices) at a 5 kB recording's key, and decrypt downloads and decrypts all of it into OUT
    before the SHA-256 check refuses it — the same for 100 GiB. On a restore disk with 1 MiB
    free (a tmpfs here) it ends in ENOSPC, reported as "no space left ... (or give the state
    directory more room)", the run stopped, no REFUSED line. Expected: the size the store
    reports (already asked for) differs from the entry's, so it is REFUSED at once ("not what
    the manifest recorded"), nothing written, exit 1."""
    sid = archived.sids[1]
    (key,) = [k for k in archived.recordings if sid in k]
    archived.put_raw(key, archived.forge(os.urandom(24 * 1024 * 1024)))
    out = tmp_path / "out"
    out.mkdir()
    probe = lambda p: tmpfs(p, f"touch {shlex.quote(str(p / 'x'))}")  # noqa: E731
    if not can_mount_privately(tmp_path, probe):
        pytest.skip("no private mount namespace here (needs root, unshare, mount)")
    args = [
        sys.executable, "-m", "archiver", "decrypt", "--identity", str(archived.private),
        key, "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, **archived.env, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", tmpfs(out, shlex.join(args), size="1m")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert f"REFUSED    {key}: " in output and "not what the manifest recorded" in output, output
    assert done.returncode == 1, output


# --- 6. bytes of a hostile envelope reach the terminal -----------------------------------------


def test_a_hostile_header_cannot_write_control_characters_to_the_terminal(
    archived: Archived, tmp_path: Path
) -> None:
    """The envelope header's ``recipient.fingerprint`` is attacker text (up to 200 characters,
    any JSON string) and goes verbatim into the refusal "it is encrypted to {fingerprint}, not
    to this identity". A bucket writer makes it ``\\r\\x1b[2K...`` plus a fake line: on the
    operator's terminal (text logs, as on a tty: ARCHIVER_LOG_FORMAT=text here) the REFUSED
    line is erased and replaced by "restored ... checked"; a ``\n`` in it makes a line (in JSON
    mode, a log event of its own) that decrypt never wrote. Expected: text from the object
    printed escaped (repr) or not at all."""
    sid = archived.sids[1]
    (key,) = [k for k in archived.recordings if sid in k]
    fake = f"\r\x1b[2K\x1b[1Arestored {key} -> ./out/{key} (5.0 kB, sha256 0: checked)\n"
    header = {
        "alg": "AES-256-GCM",
        "chunk": 65536,
        "nonce_prefix": "AAAAAAAAAA==",
        "recipient": {"fingerprint": fake, "kind": "x25519"},
        "version": 1,
        "wrap": {},
    }
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    archived.put_raw(key, _envelope_with_header(body) + os.urandom(100))
    env = {**archived.env, "ARCHIVER_LOG_FORMAT": "text"}
    result = archived.decrypt(env, key, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.output and "\r" not in result.output, repr(result.output)
