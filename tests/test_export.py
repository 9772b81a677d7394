"""Exports checked by tools this project did not write: GNU sha256sum and bagit-python."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import bagit
import pytest

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.errors import ConfigError, StorageError
from archiver.export import export_bag, export_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


@pytest.fixture
async def archived(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> Settings:
    settings = load_settings(
        env=exotel_env(sim, server.base_url, f"s3://{bucket}/x", tmp_path / "state")
    )
    await archive_calls(settings, [sim.add_call(recordings=2).sid, sim.add_call().sid])
    return settings


def mirror(seaweed: Any, bucket: str, prefix: str, into: Path) -> None:
    """Download the destination, as an auditor would."""
    client = seaweed.client()
    for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]:
        target = into / item["Key"].removeprefix(f"{prefix}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())


async def test_sha256sum_checks_a_downloaded_mirror(
    archived: Settings, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    done = await export_manifest(archived, out, since=None, until=None)
    assert done.entries == 5  # 3 recordings + 2 call.json
    mirror(seaweed, bucket, "x", tmp_path / "mirror")
    ok = subprocess.run(
        ["sha256sum", "-c", str(out / "SHA256SUMS")],
        cwd=tmp_path / "mirror",
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == 5

    victim = next((tmp_path / "mirror").rglob("recording-1.mp3"))
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = subprocess.run(
        ["sha256sum", "-c", str(out / "SHA256SUMS")],
        cwd=tmp_path / "mirror",
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "FAILED" in bad.stdout


async def test_a_date_range_exports_only_its_calls(
    sim: Simulator, archived: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "none"
    done = await export_manifest(archived, out, since=None, until=None)
    assert done.entries == 5
    empty = await export_manifest(
        archived, tmp_path / "e", since=date(2020, 1, 1), until=date(2020, 1, 2)
    )
    assert empty.entries == 0 and (tmp_path / "e" / "SHA256SUMS").read_text() == ""


async def test_the_bag_validates_with_bagit_python(archived: Settings, tmp_path: Path) -> None:
    bag_dir = tmp_path / "bag"
    done = await export_bag(archived, bag_dir, since=None, until=None, sha512=True)
    assert done.entries == 5
    bag = bagit.Bag(str(bag_dir))
    bag.validate()  # raises BagValidationError if anything is off
    assert bag.info["Payload-Oxum"] == f"{done.bytes}.5"
    assert bag.info["Exotel-Account-Sid"] == archived.exotel.account_sid
    assert set(bag.algorithms) == {"sha256", "sha512"}

    victim = next((bag_dir / "data").rglob("recording-1.mp3"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(bag_dir)).validate()


async def test_no_bag_from_an_altered_object(
    archived: Settings, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    client = seaweed.client()
    key = next(
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket)["Contents"]
        if "recording-1" in o["Key"]
    )
    client.put_object(Bucket=bucket, Key=key, Body=b"ID3 not the original")
    with pytest.raises(StorageError, match="not what the manifest records"):
        await export_bag(archived, tmp_path / "bag", since=None, until=None)


async def test_no_export_from_a_broken_chain(
    archived: Settings, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    seaweed.client().delete_object(Bucket=bucket, Key="x/_manifest/segments/00000001.jsonl")
    seaweed.client().put_object(
        Bucket=bucket, Key="x/_manifest/segments/00000002.jsonl", Body=b"{}"
    )
    with pytest.raises(ConfigError, match="damaged"):
        await export_manifest(archived, tmp_path / "o", since=None, until=None)
