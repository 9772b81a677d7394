"""Exports of an archive whose recordings are encrypted client-side say which hash they carry
(issue 19): checked with tools this project did not write, GNU sha256sum and bagit-python.

SHA256SUMS must check a downloaded mirror of the bucket (ciphertext), SHA256SUMS.plaintext the
same mirror once its recordings are decrypted; a bag validates as stored and carries the
plaintext hashes as a tag file. One recording is repaired first, so its stored bytes are the
ciphertext its `repaired` event names, not its entry's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bagit
import pytest

from archiver.envelope import Recipient
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import decrypt, exotel_env, invoke, write_keys

PREFIX = "ex"


@pytest.fixture
def archived(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> dict[str, Any]:
    public, private = write_keys(tmp_path)
    day = (datetime.now(IST) - timedelta(days=3)).date()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=IST)
    sim.add_call(recordings=[30_000, 50_000], created=start)
    sim.add_call(recordings=1, size=10_000, created=start + timedelta(minutes=5))
    env = {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "ARCHIVER_ENCRYPT_TO": str(public),
    }
    done = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert done.exit_code == 0, done.output
    entries = read_manifest(tmp_path / "state" / "manifest.jsonl")
    [first, *_] = [e for e in entries if e["kind"] == "recording"]
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{first['key']}")
    repaired = invoke(["repair"], env)  # now stored as another ciphertext than its entry's
    assert repaired.exit_code == 0, repaired.output
    return {
        "env": env,
        "private": private,
        "fingerprint": Recipient.from_file(public).fingerprint,
        "repaired": first["key"],
    }


def mirror(seaweed: SeaweedFS, bucket: str, into: Path) -> dict[str, bytes]:
    """Download the destination, as an auditor would; its objects by key."""
    client, out = seaweed.client(), {}
    for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")["Contents"]:
        key = item["Key"].removeprefix(f"{PREFIX}/")
        data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        target = into / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        out[key] = data
    return out


def sha256sum(listing: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sha256sum", "-c", "--strict", str(listing)], cwd=cwd, capture_output=True, text=True
    )


def test_sha256sums_checks_the_bucket_and_the_plaintext_listing_the_decrypted_mirror(
    archived: dict[str, Any], seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    env, out = archived["env"], tmp_path / "export"
    result = invoke(["manifest", "export", "--out", str(out)], env)
    assert result.exit_code == 0, result.output
    assert "SHA256SUMS.plaintext" in result.output and archived["fingerprint"] in result.output
    assert "3 of them are encrypted" in result.output
    objects = mirror(seaweed, bucket, tmp_path / "mirror")
    # Before the fix: the repaired recording's line named its entry's ciphertext, gone.
    stored = sha256sum(out / "SHA256SUMS", tmp_path / "mirror")
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert stored.stdout.count(": OK") == 5  # 3 recordings + 2 call.json
    assert (out / "SHA256SUMS.plaintext").exists()
    # The mirror with its recordings decrypted (as `exotel-archiver decrypt` leaves them).
    plain = tmp_path / "plain"
    for key, data in objects.items():
        if key.startswith("_manifest/"):
            continue
        target = plain / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(decrypt(archived["private"], data) if key.endswith(".mp3") else data)
    checked = sha256sum(out / "SHA256SUMS.plaintext", plain)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 5
    wrong = sha256sum(out / "SHA256SUMS.plaintext", tmp_path / "mirror")  # not interchangeable
    assert wrong.returncode != 0 and wrong.stdout.count("FAILED") == 3
    # The exported lines agree with SHA256SUMS: the repair that put another ciphertext back is
    # among them, and its stored_sha256 is the line SHA256SUMS has for that key.
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    repairs = [e for e in lines if e.get("kind") == "repaired"]
    assert len(repairs) == 1, repairs
    sums = dict(
        reversed(line.split("  ", 1))
        for line in (out / "SHA256SUMS").read_text().split("\n")
        if line
    )
    assert sums[repairs[0]["key"]] == repairs[0]["stored_sha256"]


def test_a_bag_of_ciphertext_validates_and_carries_the_plaintext_hashes(
    archived: dict[str, Any], tmp_path: Path
) -> None:
    env, out = archived["env"], tmp_path / "bag"
    result = invoke(["export-bag", str(out)], env)
    assert result.exit_code == 0, result.output
    assert "plaintext-sha256.txt" in result.output
    bag = bagit.Bag(str(out))
    bag.validate()  # the payload as stored, the tag files listed in the tag manifest
    assert bag.info["Encrypted-Payload-Files"] == "3"
    assert bag.info["Encrypted-To"] == archived["fingerprint"]
    assert "ciphertext" in bag.info["Payload-Manifest-Hashes"]
    tags = (out / "tagmanifest-sha256.txt").read_text()
    assert "  plaintext-sha256.txt\n" in tags
    plain: dict[str, str] = {}
    for line in (out / "plaintext-sha256.txt").read_text().splitlines():
        sha, name = line.split("  ", 1)
        plain[name] = sha
    assert len(plain) == 5
    for name, sha in plain.items():
        data = (out / name).read_bytes()
        own = decrypt(archived["private"], data) if name.endswith(".mp3") else data
        assert hashlib.sha256(own).hexdigest() == sha, name
    assert f"data/{archived['repaired']}" in plain
