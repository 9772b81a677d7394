"""The soak, reduced to two minutes: the real worker (``archiver run`` as a subprocess) against the
simulator over HTTP and SeaweedFS, fed malformed recording URLs, bad v1 items, stuck calls and
5 % faults; every check of ``tests/soak.py`` must pass. The full run is ``python -m tests.soak
--minutes 30`` (docs/testing.md, "Soak")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.seaweed import SeaweedFS
from tests.soak import BAD_V1, GOOD, MALFORMED, STUCK_ACTIVE, STUCK_PROCESSING, run_soak


@pytest.mark.slow
def test_two_minutes_of_hostile_traffic_leave_every_promise_kept(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    report = run_soak(minutes=2, seaweed=seaweed, workdir=tmp_path / "soak")
    print(report.text())
    assert report.ok, "soak checks failed:\n" + report.text()
    # and the mix really was fed: each kind at least twice
    for kind in (GOOD, MALFORMED, BAD_V1, STUCK_ACTIVE, STUCK_PROCESSING):
        assert report.fed.get(kind, 0) >= 2, report.fed
