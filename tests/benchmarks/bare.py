"""The bare script of issue 17: what a user writes by hand instead of running the archiver.

    python -m tests.benchmarks.bare --calls calls.txt --bucket NAME [--concurrency 8]

For every call SID in ``--calls`` (one a line): aiohttp fetches the v3 call details and
downloads each recording into memory; a thread pool (one thread per task) hands the bytes to
boto3 ``put_object``. ``--concurrency`` tasks at once, and nothing else: no spool, no checksum
sent, no ledger, no manifest, no ``call.json``, no retry beyond boto3's own. It is its own
process so that the benchmark reads its CPU from the kernel's accounting (``wait4``) exactly as
it reads the archiver's.

It reads the same environment as the archiver: ``EXOTEL_ACCOUNT_SID``, ``EXOTEL_API_KEY``,
``EXOTEL_API_TOKEN``, ``EXOTEL_API_URL`` and the ``AWS_*`` variables (endpoint, keys, region)
that boto3 reads itself. It prints one JSON line: ``{"archived": N, "bytes": B, "seconds": S}``
and exits 1 if any recording was not stored. On purpose it imports nothing of the project.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from botocore.config import Config


async def archive(sids: list[str], bucket: str, prefix: str, concurrency: int) -> tuple[int, int]:
    base = os.environ["EXOTEL_API_URL"].rstrip("/")
    account = os.environ["EXOTEL_ACCOUNT_SID"]
    auth = aiohttp.BasicAuth(os.environ["EXOTEL_API_KEY"], os.environ["EXOTEL_API_TOKEN"])
    s3: Any = boto3.client("s3", config=Config(max_pool_connections=max(10, concurrency)))
    loop = asyncio.get_running_loop()
    pending = list(reversed(sids))
    stored = [0, 0]

    async def worker(session: aiohttp.ClientSession, pool: concurrent.futures.Executor) -> None:
        while pending:
            sid = pending.pop()
            url = f"{base}/v3/accounts/{account}/calls/{sid}"
            async with session.get(url, auth=auth) as answer:
                answer.raise_for_status()
                details = (await answer.json())["response"]["call_details"]
            for n, recording in enumerate(details.get("recordings") or [], 1):
                async with session.get(recording["url"]) as answer:
                    answer.raise_for_status()
                    body = await answer.read()
                key = f"{prefix}/{sid}/{n}.mp3"
                put = functools.partial(s3.put_object, Bucket=bucket, Key=key, Body=body)
                await loop.run_in_executor(pool, put)
                stored[0] += 1
                stored[1] += len(body)

    connector = aiohttp.TCPConnector(limit=concurrency)
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(worker(session, pool) for _ in range(concurrency)))
    return stored[0], stored[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=Path, required=True, help="call SIDs, one a line")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="bare")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--expect", type=int, default=None, help="recordings that must be stored")
    args = parser.parse_args()
    sids = [line.strip() for line in args.calls.read_text().splitlines() if line.strip()]
    started = time.perf_counter()
    count, size = asyncio.run(archive(sids, args.bucket, args.prefix, args.concurrency))
    seconds = time.perf_counter() - started
    print(json.dumps({"archived": count, "bytes": size, "seconds": round(seconds, 3)}))
    sys.exit(0 if args.expect is None or count == args.expect else 1)


if __name__ == "__main__":
    main()
