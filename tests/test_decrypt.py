"""``exotel-archiver decrypt`` (archiver.restore, archiver.cli.decrypt) against SeaweedFS.

Until the worker encrypts (the lead's part of issue 19), the archive is made by hand as the
worker makes it: each recording encrypted (archiver.envelope), stored with ``S3Sink.put``, its
entry (``encrypted_to``, ``plaintext_*``, the ciphertext's ``size``/``sha256``) recorded in the
ledger, then sealed into the destination's chain, the identity marker claimed."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import itertools
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x25519

import archiver
from archiver import identity as marker
from archiver.archive import sink_for
from archiver.config import Settings, load_settings
from archiver.envelope import Recipient, encrypt_file
from archiver.exotel.models import IST
from archiver.ledger import Ledger, ObjectRecord
from archiver.manifest import ManifestWriter
from archiver.segments import seal
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, invoke, write_keys

SID = "c0ffee0000000000000000000000019a"
OTHER_SID = "c0ffee0000000000000000000000019b"
PART = 5 * 1024 * 1024
_idx = itertools.count(1)


def write_key(
    path: Path, key: x25519.X25519PrivateKey | rsa.RSAPrivateKey, passphrase: bytes = b""
) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption(),
        )
    )
    return path


def write_public(path: Path, key: x25519.X25519PrivateKey | rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@dataclass
class Made:
    """An archive made by hand: its environment, keys and the recordings by key."""

    env: dict[str, str]
    settings: Settings
    private: Path
    public: Path
    bucket: str
    prefix: str
    recordings: dict[str, bytes] = field(default_factory=dict)
    seaweed: SeaweedFS | None = None

    def put_raw(self, key: str, data: bytes) -> None:
        """Replace the stored object's bytes behind the archiver's back."""
        assert self.seaweed is not None
        self.seaweed.client().put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def stored(self, key: str) -> bytes:
        assert self.seaweed is not None
        got = self.seaweed.client().get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        return bytes(got["Body"].read())


async def store(
    settings: Settings,
    recipient: Recipient | None,
    objects: list[tuple[str, str, bytes]],
    *,
    sealed: bool = True,
    lie: dict[str, str] | None = None,
) -> None:
    """Store each (call_sid, key, plaintext) encrypted to ``recipient`` (None: as it is) and
    record it as the worker does; ``lie`` gives a false plaintext_sha256 for some keys."""
    sink = sink_for(settings)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        await marker.bind(settings, sink, ledger, claim=True)
        for sid, key, plain in objects:
            with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
                src.write(plain)
                src.seek(0)
                if recipient is not None:
                    enc = encrypt_file(src, dst, recipient)
                    size, sha = enc.size, enc.sha256
                    dst.seek(0)
                    body = dst
                else:
                    size, sha, body = len(plain), hashlib.sha256(plain).hexdigest(), src
                result = await sink.put(
                    key, body, size=size, sha256=sha, content_type="application/octet-stream"
                )
            ledger.add_object(
                ObjectRecord(
                    call_sid=sid, kind="recording", idx=next(_idx), key=key,
                    location=result.location, size=size, sha256=sha,
                    content_type="audio/mpeg", format="mp3",
                    source=f"https://recordings.example/{sid}-{key[-5]}.mp3",
                    call_created="2026-09-01T10:00:00+05:30",
                    archived_at="2026-09-01T05:00:00.000Z", worker="test",
                    plaintext_sha256=(lie or {}).get(key, hashlib.sha256(plain).hexdigest())
                    if recipient is not None else None,
                    plaintext_size=len(plain) if recipient is not None else None,
                    encrypted_to=recipient.fingerprint if recipient is not None else None,
                )
            )  # fmt: skip
        ManifestWriter(settings.state_dir / "manifest.jsonl").sync(ledger)
        if sealed:
            await seal(ledger, sink)
    finally:
        ledger.close()
        await sink.close()


@pytest.fixture
def made(seaweed: SeaweedFS, s3_env: None, bucket: str, tmp_path: Path) -> Made:
    key = x25519.X25519PrivateKey.generate()
    private = write_key(tmp_path / "private.pem", key)
    public = write_public(tmp_path / "public.pem", key)
    env = {
        "EXOTEL_ACCOUNT_SID": "acme",
        "ARCHIVER_DESTINATION": f"s3://{bucket}/rec",
        "ARCHIVER_STATE_DIR": str(tmp_path / "state"),
        "ARCHIVER_CONFIG": "",
        "ARCHIVER_PART_SIZE": "5",
    }
    settings = load_settings(env=env)
    recordings = {
        f"2026/09/01/{SID}/recording-1.mp3": os.urandom(3000),
        f"2026/09/01/{SID}/recording-2.mp3": os.urandom(2 * PART + 12345),  # multipart
        f"2026/09/01/{SID}/recording-3.mp3": b"",
        f"2026/09/01/{OTHER_SID}/recording-1.mp3": os.urandom(70_000),
    }
    objects = [(k.split("/")[3], k, v) for k, v in recordings.items()]
    asyncio.run(store(settings, Recipient.from_file(public), objects))
    return Made(env, settings, private, public, bucket, "rec", recordings, seaweed)


def decrypt(made: Made, *args: str, **env: str) -> Result:
    return invoke(["decrypt", "--identity", str(made.private), *args], {**made.env, **env})


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".decrypting")]


# --- restored, byte-exact and checked ----------------------------------------------------------


def test_objects_are_restored_byte_exact_small_and_multipart(made: Made, tmp_path: Path) -> None:
    out = tmp_path / "out"
    keys = list(made.recordings)
    assert made.stored(keys[1])[:8] == b"EXARENC1"  # stored encrypted, in parts
    result = decrypt(made, *keys, "--out", str(out))
    assert result.exit_code == 0, result.output
    for key, plain in made.recordings.items():
        path = out / key
        assert path.read_bytes() == plain
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"restored {key} -> {path}" in result.output
    assert "4 restored and checked, 0 refused" in result.output
    assert not leftovers(out)


def test_a_call_restores_its_encrypted_objects(made: Made, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = decrypt(made, "--call", SID, "--out", str(out))
    assert result.exit_code == 0, result.output
    restored = sorted(str(p.relative_to(out)) for p in out.rglob("*.mp3"))
    assert restored == sorted(k for k in made.recordings if SID in k)


def test_entries_not_sealed_yet_are_read_from_the_ledger(made: Made, tmp_path: Path) -> None:
    key = f"2026/09/02/{SID}/recording-9.mp3"
    plain = os.urandom(1000)
    asyncio.run(
        store(made.settings, Recipient.from_file(made.public), [(SID, key, plain)], sealed=False)
    )
    result = decrypt(made, key, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / key).read_bytes() == plain


def test_an_rsa_key_works_end_to_end(
    seaweed: SeaweedFS, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(65537, 3072)
    private = write_key(tmp_path / "rsa.pem", key, b"open sesame 19")
    public = write_public(tmp_path / "rsa.pub.pem", key)
    (tmp_path / "pass").write_bytes(b"open sesame 19\n")
    env = {
        "ARCHIVER_DESTINATION": f"s3://{bucket}/r",
        "ARCHIVER_STATE_DIR": str(tmp_path / "state"),
        "ARCHIVER_CONFIG": "",
    }
    plain = os.urandom(100_000)
    k = f"2026/09/01/{SID}/recording-1.mp3"
    asyncio.run(store(load_settings(env=env), Recipient.from_file(public), [(SID, k, plain)]))
    args = ["decrypt", "--identity", str(private), k, "--out", str(tmp_path / "o")]
    result = invoke([*args, "--passphrase-file", str(tmp_path / "pass")], env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / k).read_bytes() == plain
    assert "sesame" not in result.output
    (tmp_path / "wrong").write_bytes(b"open sesame 20\n")
    result = invoke([*args, "--passphrase-file", str(tmp_path / "wrong")], env)
    assert result.exit_code == 2 and "passphrase is wrong" in result.output, result.output
    assert "sesame" not in result.output
    result = invoke(args, env)
    assert result.exit_code == 2 and "--passphrase-file" in result.output, result.output


# --- refused: nothing written for it, the reason named -----------------------------------------


def test_a_flipped_byte_anywhere_in_the_stored_ciphertext_is_refused(
    made: Made, tmp_path: Path
) -> None:
    keys = list(made.recordings)
    small, big = keys[0], keys[1]
    stored = made.stored(big)
    for n, at in enumerate((0, 20, 200, len(stored) // 2, len(stored) - 1)):
        bad = bytearray(stored)
        bad[at] ^= 0x04
        made.put_raw(big, bytes(bad))
        out = tmp_path / f"out{n}"
        result = decrypt(made, small, big, "--out", str(out))
        assert result.exit_code == 1, result.output
        assert f"REFUSED    {big}: " in result.output
        assert not (out / big).exists() and not leftovers(out)
        assert (out / small).read_bytes() == made.recordings[small]  # the others go on


def test_a_cut_or_extended_object_is_refused(made: Made, tmp_path: Path) -> None:
    key = list(made.recordings)[3]
    stored = made.stored(key)
    for n, bad in enumerate((stored[:-1], stored[: len(stored) - 17], stored + b"\x00")):
        made.put_raw(key, bad)
        result = decrypt(made, key, "--out", str(tmp_path / f"o{n}"))
        assert result.exit_code == 1, result.output
        assert not (tmp_path / f"o{n}" / key).exists()


def test_an_object_replaced_by_another_valid_envelope_is_refused(
    made: Made, tmp_path: Path
) -> None:
    """Anyone with the public key can encrypt: the manifest's ciphertext SHA-256 decides."""
    key = next(iter(made.recordings))
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
        src.write(b"forged recording")
        src.seek(0)
        encrypt_file(src, dst, Recipient.from_file(made.public))
        dst.seek(0)
        made.put_raw(key, dst.read())
    out = tmp_path / "out"
    (out / key).parent.mkdir(parents=True)
    (out / key).write_bytes(b"what was there")
    result = decrypt(made, key, "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "is not what the manifest recorded" in result.output and "replaced" in result.output
    assert (out / key).read_bytes() == b"what was there"  # left as it was
    assert not leftovers(out)


def test_a_plaintext_not_the_recorded_one_is_refused(made: Made, tmp_path: Path) -> None:
    key = f"2026/09/03/{SID}/recording-1.mp3"
    asyncio.run(
        store(
            made.settings, Recipient.from_file(made.public), [(SID, key, b"abc")],
            lie={key: hashlib.sha256(b"abd").hexdigest()},
        )
    )  # fmt: skip
    result = decrypt(made, key, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "decrypted recording (3 bytes" in result.output
    assert not (tmp_path / "out" / key).exists()


def test_another_identity_unknown_and_unencrypted_objects_are_refused(
    made: Made, tmp_path: Path
) -> None:
    plain_key = f"2026/09/04/{SID}/call.json"
    asyncio.run(store(made.settings, None, [(SID, plain_key, b"{}")]))
    other = write_key(tmp_path / "other.pem", x25519.X25519PrivateKey.generate())
    key = next(iter(made.recordings))
    out = tmp_path / "out"
    result = invoke(["decrypt", "--identity", str(other), key, "--out", str(out)], made.env)
    assert result.exit_code == 1, result.output
    fingerprint = Recipient.from_file(made.public).fingerprint
    assert f"it is encrypted to {fingerprint}, not to this identity (x25519:" in result.output
    result = decrypt(made, "no/such/key.mp3", plain_key, "--call", "nosuchcall", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "REFUSED    no/such/key.mp3: no manifest entry names it" in result.output
    assert f"REFUSED    {plain_key}: it is not encrypted client-side" in result.output
    assert "REFUSED    call nosuchcall: no manifest entry names it" in result.output
    assert not out.exists() or not list(out.rglob("*.*"))


# --- usage and configuration: exit 2 -----------------------------------------------------------


def test_usage_and_configuration_errors_exit_2(made: Made, tmp_path: Path) -> None:
    key = next(iter(made.recordings))
    out = ["--out", str(tmp_path / "out")]
    cases = [
        (["--identity", str(made.public), key, *out], "is a public key; decrypting needs"),
        (["--identity", str(tmp_path / "none.pem"), key, *out], "does not exist"),
        (["--identity", str(made.private), *out], "name what to decrypt"),
        (["--identity", str(made.private), key], "give --out DIR"),
        (["--identity", str(made.private), "--input", str(made.private), key], "--input"),
        (["--identity", str(made.private), "--input", str(made.private)], "needs --output"),
        (
            ["--identity", str(made.private), "--input", str(tmp_path / "x"), "--output", "y"],
            "is not a file",
        ),
    ]
    for args, expected in cases:
        result = invoke(["decrypt", *args], made.env)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert made.private.read_text().splitlines()[1][:16] not in result.output
    result = invoke(
        ["decrypt", "--identity", str(made.private), key, *out],
        {**made.env, "ARCHIVER_DESTINATION": ""},
    )
    assert result.exit_code == 2 and "no destination" in result.output, result.output


# --- an object downloaded by hand --------------------------------------------------------------


def test_a_downloaded_object_is_decrypted_checked_with_its_key(made: Made, tmp_path: Path) -> None:
    key = list(made.recordings)[3]
    downloaded = tmp_path / "downloaded.enc"
    downloaded.write_bytes(made.stored(key))
    plain = made.recordings[key]
    no_destination = {**made.env, "ARCHIVER_DESTINATION": ""}
    target = tmp_path / "restored.mp3"
    args = ["--input", str(downloaded), "--output", str(target)]
    result = decrypt(made, *args, "--key", key, **no_destination)
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == plain and "checked" in result.output
    target.unlink()
    result = decrypt(made, *args, **no_destination)
    assert result.exit_code == 1, result.output
    assert target.read_bytes() == plain
    assert hashlib.sha256(plain).hexdigest() in result.output
    assert "NOT checked against the manifest" in result.output
    target.unlink()
    bad = bytearray(downloaded.read_bytes())
    bad[-3] ^= 1
    downloaded.write_bytes(bytes(bad))
    result = decrypt(made, *args, "--key", key)
    assert result.exit_code == 1 and "REFUSED" in result.output, result.output
    assert not target.exists() and not leftovers(tmp_path)


def test_a_plaintext_left_by_a_killed_decrypt_is_removed_by_the_next(
    made: Made, tmp_path: Path
) -> None:
    """A decrypt killed (SIGKILL) mid-way leaves its temp file of unverified plaintext; the next
    decrypt of that object removes it, whatever it restores."""
    key = next(iter(made.recordings))
    out = tmp_path / "out"
    stale = out / f"{key}".rsplit("/", 1)[0] / f".{key.rsplit('/', 1)[1]}.0badc0de.decrypting"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"unverified plaintext of a killed run")
    result = decrypt(made, key, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert not leftovers(out) and (out / key).read_bytes() == made.recordings[key]


def test_an_output_that_is_the_input_is_refused_before_anything_is_written(
    made: Made, tmp_path: Path
) -> None:
    key = next(iter(made.recordings))
    downloaded = tmp_path / "downloaded.enc"
    ciphertext = made.stored(key)
    downloaded.write_bytes(ciphertext)
    result = decrypt(made, "--input", str(downloaded), "--output", str(downloaded), "--key", key)
    assert result.exit_code == 2 and "--output is the --input file" in result.output
    assert downloaded.read_bytes() == ciphertext


# --- the worker never holds the private key ----------------------------------------------------


def test_only_the_decrypt_command_reads_a_private_key() -> None:
    """No module but the envelope (which defines it), the restore logic and the decrypt
    command names ``Identity`` or a private-key loader; no setting names a private key."""
    allowed = {"envelope.py", "restore.py", "cli/decrypt.py"}
    root = Path(archiver.__file__).parent
    loaders = {"load_pem_private_key", "load_der_private_key", "load_ssh_private_key"}
    users = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        imported = {
            (n.module, a.name)
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        if names & loaders or ("archiver.envelope", "Identity") in imported:
            users.add(str(path.relative_to(root)))
    assert users == allowed
    from archiver.options import OPTIONS

    for option in OPTIONS:
        words = set(option.key.split("_"))
        assert not words & {"identity", "passphrase"}, option.key
        assert not {"private", "key"} <= words, option.key


# --- end to end: a real backfill encrypting to the key, then decrypt ---------------------------


def test_a_backfill_encrypted_to_the_key_is_restored_by_decrypt(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    public, private = write_keys(tmp_path)
    day = (datetime.now(IST) - timedelta(days=3)).date()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=IST)
    calls = [
        sim.add_call(recordings=[40_000, 70_000], created=start),
        sim.add_call(recordings=[12 * 1024 * 1024], created=start + timedelta(minutes=9)),
    ]
    env = {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/calls", tmp_path / "state"),
        "ARCHIVER_PART_SIZE": "5",
        "ARCHIVER_ENCRYPT_TO": str(public),
    }
    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert result.exit_code == 0, result.output
    out = tmp_path / "restored"
    args = ["decrypt", "--identity", str(private), "--out", str(out)]
    result = invoke([*args, *(a for c in calls for a in ("--call", c.sid))], env)
    assert result.exit_code == 0, result.output
    assert "3 restored and checked, 0 refused" in result.output
    for call in calls:
        folder = out / f"{call.created.astimezone(IST):%Y/%m/%d}" / call.sid
        assert sorted(p.name for p in folder.iterdir()) == [
            f"recording-{i}.mp3" for i in range(1, len(call.recordings) + 1)
        ]  # call.json is stored plain: not decrypted
        for i in range(1, len(call.recordings) + 1):
            assert (folder / f"recording-{i}.mp3").read_bytes() == sim.recording_bytes(call.sid, i)
