"""Changing an object version's Object Lock retention, through our sinks, against SeaweedFS.

What AWS S3 allows for PutObjectRetention (docs/storage.md, "Object Lock: what can change"):

- extending the date in the same mode: any principal with ``s3:PutObjectRetention``;
- GOVERNANCE shortened, removed, or turned into COMPLIANCE: only with
  ``x-amz-bypass-governance-retention: true`` and ``s3:BypassGovernanceRetention``;
- COMPLIANCE shortened or turned into GOVERNANCE: nobody.

The sink sends the bypass header only when its caller asks (``bypass_governance=True``), and
then only for GOVERNANCE → COMPLIANCE with a date not earlier than the stored one. The tests'
main SeaweedFS identity is an administrator, for whom SeaweedFS honours the header: had the sink
sent it where it must not, the store would have shortened or weakened the lock, and these tests
would see it. ``limited_env`` credentials lack ``BypassGovernanceRetention``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from archiver.errors import StorageLocked, StoragePermanent
from archiver.retry import RetryPolicy
from archiver.sinks import Lock, Sink, open_sink
from archiver.sinks.local import LocalSink
from tests.seaweed import SeaweedFS

PREFIX = "lm"
FAST = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05)
NOW = datetime.now(UTC).replace(microsecond=0)
EARLIER, STORED, LATER = (NOW + timedelta(days=d) for d in (5, 10, 20))
_keys = iter(range(1, 10_000))


@pytest.fixture
async def sink(s3_env: None, lock_bucket: str) -> AsyncIterator[Sink]:
    """The S3 sink as the archiver opens it: ``S3Sink`` inside ``RetryingSink``."""
    opened = open_sink(f"s3://{lock_bucket}/{PREFIX}", retry=FAST)
    yield opened
    await opened.close()


async def put(sink: Sink, key: str, lock: Lock | None) -> str | None:
    data = b"ID3" + key.encode()
    result = await sink.put(
        key,
        io.BytesIO(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="audio/mpeg",
        lock=lock,
    )
    return result.version_id


async def locked(sink: Sink, mode: str | None, until: datetime = STORED) -> tuple[str, str]:
    """A new object (locked with ``mode`` until ``until``): its key and version id."""
    key = f"2024/01/02/CA{next(_keys)}/recording-1.mp3"
    version = await put(sink, key, None if mode is None else Lock(mode, until))
    assert version
    return key, version


def stored(seaweed: SeaweedFS, bucket: str, key: str, version: str) -> tuple[str, datetime]:
    """The version's retention as the store reports it, read outside the sink."""
    head = seaweed.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{key}", VersionId=version)
    return head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]


def deletable(seaweed: SeaweedFS, bucket: str, key: str, version: str) -> bool:
    """Whether an administrator with the bypass header can delete the version (then it is)."""
    try:
        seaweed.client().delete_object(
            Bucket=bucket, Key=f"{PREFIX}/{key}", VersionId=version, BypassGovernanceRetention=True
        )
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied"
        return False
    return True


@pytest.mark.parametrize("until", [STORED, LATER], ids=["same-date", "later-date"])
async def test_governance_to_compliance_without_the_opt_in_is_refused_and_stays_governance(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str, until: datetime
) -> None:
    key, version = await locked(sink, "GOVERNANCE")
    with pytest.raises(StorageLocked) as refused:
        await sink.set_retention(key, Lock("COMPLIANCE", until), version_id=version)
    message = str(refused.value)
    assert "s3:BypassGovernanceRetention" in message
    assert "retention apply --strengthen-governance" in message
    assert stored(seaweed, lock_bucket, key, version) == ("GOVERNANCE", STORED)


@pytest.mark.parametrize("until", [STORED, LATER], ids=["same-date", "later-date"])
async def test_governance_to_compliance_with_the_opt_in_becomes_compliance_with_the_date_asked(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str, until: datetime
) -> None:
    key, version = await locked(sink, "GOVERNANCE")
    await sink.set_retention(
        key, Lock("COMPLIANCE", until), version_id=version, bypass_governance=True
    )
    assert stored(seaweed, lock_bucket, key, version) == ("COMPLIANCE", until)
    # It is COMPLIANCE indeed: not even an administrator with the bypass header deletes it now.
    assert not deletable(seaweed, lock_bucket, key, version)


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
async def test_extending_the_date_in_the_same_mode_needs_no_bypass(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str, mode: str
) -> None:
    key, version = await locked(sink, mode)
    await sink.set_retention(key, Lock(mode, LATER), version_id=version)
    assert stored(seaweed, lock_bucket, key, version) == (mode, LATER)


@pytest.mark.parametrize("bypass", [False, True], ids=["plain", "with-opt-in"])
async def test_shortening_a_compliance_date_is_refused_even_with_the_opt_in(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str, bypass: bool
) -> None:
    key, version = await locked(sink, "COMPLIANCE")
    with pytest.raises(StorageLocked):
        await sink.set_retention(
            key, Lock("COMPLIANCE", EARLIER), version_id=version, bypass_governance=bypass
        )
    assert stored(seaweed, lock_bucket, key, version) == ("COMPLIANCE", STORED)


@pytest.mark.parametrize("bypass", [False, True], ids=["plain", "with-opt-in"])
async def test_compliance_never_becomes_governance(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str, bypass: bool
) -> None:
    key, version = await locked(sink, "COMPLIANCE")
    with pytest.raises(StorageLocked):
        await sink.set_retention(
            key, Lock("GOVERNANCE", LATER), version_id=version, bypass_governance=bypass
        )
    assert stored(seaweed, lock_bucket, key, version) == ("COMPLIANCE", STORED)


async def test_shortening_a_governance_date_without_bypass_is_refused(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str
) -> None:
    """As on AWS: shortening GOVERNANCE needs the bypass header (SeaweedFS agrees). So the
    header was not sent: this identity is allowed to bypass, and the store would have obeyed."""
    key, version = await locked(sink, "GOVERNANCE")
    with pytest.raises(StorageLocked):
        await sink.set_retention(key, Lock("GOVERNANCE", EARLIER), version_id=version)
    assert stored(seaweed, lock_bucket, key, version) == ("GOVERNANCE", STORED)


@pytest.mark.parametrize(
    ("mode", "until"),
    [("GOVERNANCE", EARLIER), ("COMPLIANCE", EARLIER)],
    ids=["governance-shortened", "compliance-but-earlier"],
)
async def test_the_opt_in_never_sends_the_bypass_header_for_a_shorter_date(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str, mode: str, until: datetime
) -> None:
    """With the header, SeaweedFS (like AWS for a principal with the permission) would take
    both: the first shortens GOVERNANCE, the second turns it into a COMPLIANCE lock that ends
    sooner than the GOVERNANCE one did. The sink withholds the header, so the store refuses."""
    key, version = await locked(sink, "GOVERNANCE")
    with pytest.raises(StorageLocked) as refused:
        await sink.set_retention(key, Lock(mode, until), version_id=version, bypass_governance=True)
    assert "not sent" in str(refused.value)
    assert stored(seaweed, lock_bucket, key, version) == ("GOVERNANCE", STORED)
    assert deletable(seaweed, lock_bucket, key, version)  # still GOVERNANCE, still bypassable


async def test_the_opt_in_on_an_unlocked_object_locks_it_without_bypass(
    sink: Sink, seaweed: SeaweedFS, lock_bucket: str
) -> None:
    key, version = await locked(sink, None)
    await sink.set_retention(
        key, Lock("COMPLIANCE", LATER), version_id=version, bypass_governance=True
    )
    assert stored(seaweed, lock_bucket, key, version) == ("COMPLIANCE", LATER)


async def test_credentials_without_the_permission_are_told_which_one_they_lack(
    sink: Sink,
    seaweed: SeaweedFS,
    lock_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, version = await locked(sink, "GOVERNANCE")
    for name, value in seaweed.limited_env().items():
        monkeypatch.setenv(name, value)
    limited = open_sink(f"s3://{lock_bucket}/{PREFIX}", retry=FAST)
    try:
        await limited.set_retention(key, Lock("GOVERNANCE", LATER), version_id=version)  # extends
        with pytest.raises(StorageLocked, match="s3:BypassGovernanceRetention"):
            await limited.set_retention(
                key, Lock("COMPLIANCE", LATER), version_id=version, bypass_governance=True
            )
    finally:
        await limited.close()
    assert stored(seaweed, lock_bucket, key, version) == ("GOVERNANCE", LATER)


@pytest.mark.parametrize("bypass", [False, True], ids=["plain", "with-opt-in"])
async def test_a_local_directory_refuses_every_retention_change(
    tmp_path: Path, bypass: bool
) -> None:
    local = LocalSink(tmp_path)
    await put(local, "a/recording-1.mp3", None)
    for mode in ("GOVERNANCE", "COMPLIANCE"):
        with pytest.raises(StoragePermanent, match="no Object Lock"):
            await local.set_retention(
                "a/recording-1.mp3", Lock(mode, LATER), bypass_governance=bypass
            )
    assert (tmp_path / "a/recording-1.mp3").read_bytes() == b"ID3a/recording-1.mp3"
    await local.close()
