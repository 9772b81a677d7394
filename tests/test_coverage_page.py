"""The coverage page (`reconcile --html FILE`): what a compliance officer reads, in a real browser.

The page is rendered by Debian's Chromium (tests/browser.py installs it when missing): its DOM
must show the numbers of the JSON report of the same run, and its screenshot the calendar's
colours. Every value from Exotel or the manifest is shown as text, never run as markup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import struct
import zlib
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

from archiver import coverage_page
from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import load_settings
from archiver.exotel.models import IST
from archiver.reconcile import ChainSummary, ReconcileReport
from archiver.simulator import Simulator, SimulatorServer
from tests.browser import Chromium
from tests.seaweed import SeaweedFS
from tests.support import exotel_env

HOSTILE = '"><script>document.title="owned"</script><img src=x onerror=alert(1)>'


# --- reading what the browser rendered -----------------------------------------------------------


class _Page(HTMLParser):
    """The tags of a page, and the text of every element with an ``id`` or ``data-sid``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, str] = {}
        self._open: list[tuple[str, str | None, str | None]] = []
        self._text: dict[int, list[str]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("meta", "br", "img", "link", "input", "hr"):
            return
        a = dict(attrs)
        self._open.append((tag, a.get("id"), a.get("data-sid")))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            return
        depth = len(self._open)
        _, ident, sid = self._open.pop()
        text = " ".join("".join(self._text.pop(depth)).split())
        if self._open:
            self._text[depth - 1].append(" " + text + " ")
        if ident:
            self.by_id[ident] = text
        if sid:
            self.rows[sid] = text

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open:
            self._text[len(self._open)].append(data)


def yesterday_noon() -> datetime:
    """Noon yesterday in the account's zone: older than listing_settle at any hour, and never in
    the last second of a day (now minus a day was, a moment before midnight)."""
    return datetime.combine(datetime.now(IST).date() - timedelta(days=1), time(12), IST)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes): width, height and each row as RGB."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, header = 8, bytearray(), b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        crc = struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        else:
            assert kind == 0, f"unknown PNG filter {kind}"
        prev = line
        rgb = line if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3)
        rows.append(bytes(rgb))
    return width, height, rows


def colour_count(rows: list[bytes], hex_colour: str) -> int:
    want = bytes.fromhex(hex_colour.removeprefix("#"))
    return sum(row.count(want) for row in rows)  # a solid fill: exact bytes, 3-aligned or not


# --- a real reconcile ---------------------------------------------------------------------------


async def test_the_page_shows_what_the_json_report_says_in_a_real_browser(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    chromium: Chromium,
    tmp_path: Path,
) -> None:
    day = (datetime.now(IST) - timedelta(days=2)).date()
    calls = sim.populate(12, day=day)
    with_audio = [c for c in calls if c.recordings]
    assert len(with_audio) >= 3
    missing = with_audio[0]
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/calls", tmp_path / "state")
    settings = load_settings(env=env)
    await archive_calls(settings, [c.sid for c in with_audio[1:]])
    sim.add_call(created=datetime.combine(day + timedelta(days=1), datetime.min.time(), IST))
    page, report = tmp_path / "out" / "coverage.html", tmp_path / "r.json"

    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        [
            "reconcile",
            *("--since", str(day), "--until", str(day + timedelta(days=1))),
            *("--report", str(report), "--html", str(page)),
        ],
        env=env,
    )
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert data["counts"]["missing"] == 2  # one left out on the day, one never archived after
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert [p.name for p in page.parent.iterdir()] == ["coverage.html"]  # no temp file left
    html = page.read_text()
    assert not re.search(r"(?i)<(link|script|img|iframe)\b|@import|url\(|https?://", html), (
        "the page must not load anything"
    )

    rendered = parse(await asyncio.to_thread(chromium.dump_dom, page))
    for state, n in data["counts"].items():
        assert rendered.by_id[f"count-{state}"] == str(n), state
    assert rendered.by_id["count-total"] == str(len(data["calls"]))
    shown = {c["call_sid"]: c for c in data["calls"] if c["state"] in coverage_page.ATTENTION}
    assert missing.sid in shown and set(rendered.rows) == set(shown)
    for sid, call in shown.items():
        assert call["state"].replace("_", " ") in rendered.rows[sid]
        assert " ".join(call["reason"].split()) in rendered.rows[sid]
    head = data["chain"]["head_sha256"]
    segment = f"calls/_manifest/segments/{data['chain']['segments']:08d}.jsonl"
    body = seaweed.client().get_object(Bucket=bucket, Key=segment)["Body"].read()
    assert head == hashlib.sha256(body).hexdigest()  # the head is the last segment's digest
    assert rendered.by_id["chain-head"] == head
    assert rendered.by_id["chain-result"].startswith("intact")
    cell = rendered.by_id[f"day-{day.isoformat()}"]
    assert "some missing" in cell and f"missing {1}" in cell
    assert f"archived {len(with_audio) - 1}" in cell

    png = await asyncio.to_thread(chromium.screenshot, page, tmp_path / "shot.png")
    width, height, rows = png_pixels(png)
    assert (width, height) == (1200, 1600)
    assert colour_count(rows, coverage_page.COLOURS["missing"]) > 1000
    assert colour_count(rows, coverage_page.COLOURS["archived"]) > 100  # the legend's swatch


async def test_a_hostile_field_from_exotel_is_shown_as_text_not_run(
    sim: Simulator, server: SimulatorServer, chromium: Chromium, tmp_path: Path
) -> None:
    call = sim.add_call(created=yesterday_noon())
    sim.faults.bulk_item_patches[call.sid] = {"Status": HOSTILE}
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    page, day = tmp_path / "page.html", call.created.astimezone(IST).date()
    args = ["reconcile", "--since", str(day), "--until", str(day), "--html", str(page)]
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert result.exit_code == 1, result.output
    rendered = parse(await asyncio.to_thread(chromium.dump_dom, page))
    assert "script" not in rendered.tags and "img" not in rendered.tags
    assert HOSTILE in rendered.rows[call.sid]  # shown, as the officer should see it
    assert rendered.by_id["title"].startswith("Recording coverage")


# --- the page itself -----------------------------------------------------------------------------


def _call(
    sid: str, day: date, state: str, reason: str = "r", status: str = "completed"
) -> dict[str, str]:
    created = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=10)
    return {
        "call_sid": sid,
        "created": created.isoformat(),
        "state": state,
        "exotel_status": status,
        "reason": reason,
    }


def _report(calls: list[dict[str, str]], since: date, until: date) -> ReconcileReport:
    chain = ChainSummary(
        segments=3, entries=40, head_sha256="ab" * 32, pending_seal=2, problems=[], notes=[]
    )
    return ReconcileReport(since, until, calls, tz=IST, chain=chain)


def test_each_day_is_coloured_by_its_calls_and_says_its_counts() -> None:
    d = date(2026, 11, 2)
    calls = [
        _call("a1", d, "archived"),
        _call("a2", d, "no_recording_at_source"),
        _call("m1", d + timedelta(1), "archived"),
        _call("m2", d + timedelta(1), "missing", "failed: the store refused it"),
        _call("n1", d + timedelta(2), "no_recording_at_source"),
        _call("s1", d + timedelta(3), "still_active"),
        _call("s2", d + timedelta(3), "recording_pending"),
        _call("e1", d + timedelta(5), "erased"),
    ]
    html = coverage_page.render(_report(calls, d, d + timedelta(6)), generated=datetime.now(UTC))
    page = parse(html)
    cells = {k.removeprefix("day-"): v for k, v in page.by_id.items() if k.startswith("day-")}
    assert len(cells) == 7
    expect = {
        0: ("all archived", "archived 1", "no recording 1"),
        1: ("some missing", "missing 1", "archived 1"),
        2: ("no recording", "no recording 1"),
        3: ("still active", "still active 1", "recording pending 1"),
        4: ("no calls",),
        5: ("all archived", "erased 1"),
        6: ("no calls",),
    }
    for offset, words in expect.items():
        cell = cells[(d + timedelta(offset)).isoformat()]
        for word in words:
            assert word in cell, (offset, word, cell)
    classes = dict(re.findall(r'id="day-([\d-]+)" class="day (\w+)"', html))
    assert classes[d.isoformat()] == "archived"
    assert classes[(d + timedelta(1)).isoformat()] == "missing"
    assert classes[(d + timedelta(2)).isoformat()] == "recordless"
    assert classes[(d + timedelta(3)).isoformat()] == "active"
    assert classes[(d + timedelta(4)).isoformat()] == "empty"
    for name in ("archived", "missing", "recordless", "active"):  # the legend says which is which
        assert f'class="swatch {name}"' in html
    assert page.by_id["verdict"].startswith("NOT COMPLETE")
    assert page.by_id["chain-head"] == "ab" * 32
    assert set(page.rows) == {"m2", "s1", "s2"}


def test_hostile_values_anywhere_become_text() -> None:
    """Escaped whatever the source: a SID, a status, a reason, a chain problem."""
    d = date(2026, 11, 2)
    calls = [_call(HOSTILE, d, "missing", reason=HOSTILE, status=HOSTILE)]
    report = _report(calls, d, d)
    assert report.chain is not None
    report.chain.problems.append(HOSTILE)
    report.chain.head_sha256 = HOSTILE
    page = parse(coverage_page.render(report, generated=datetime.now(UTC), destination=HOSTILE))
    assert "script" not in page.tags and "img" not in page.tags
    assert sum(t.count(HOSTILE) for t in page.text) >= 5


def test_the_page_is_written_atomically(tmp_path: Path) -> None:
    d = date(2026, 11, 2)
    path = tmp_path / "reports" / "page.html"
    path.parent.mkdir()
    path.write_text("old")
    os.chmod(path, 0o644)
    coverage_page.write_page(path, _report([], d, d), generated=datetime.now(UTC))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "Recording coverage" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.html"]


async def test_a_broken_chain_is_said_on_the_page_and_fails_the_run(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Every call archived, but a segment altered in the destination: not a record to trust."""
    call = sim.add_call(created=yesterday_noon())
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    await archive_calls(load_settings(env=env), [call.sid])
    segment = tmp_path / "out" / "_manifest" / "segments" / "00000001.jsonl"
    segment.write_bytes(segment.read_bytes().replace(b'"size":', b'"size": ', 1))
    page, day = tmp_path / "page.html", call.created.astimezone(IST).date()
    args = ["reconcile", "--since", str(day), "--until", str(day), "--html", str(page)]
    args += ["--report", str(tmp_path / "r.json")]
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["complete"] and not data["chain"]["intact"] and data["chain"]["problems"]
    assert "CHAIN" in result.output
    shown = parse(page.read_text())
    assert "BROKEN" in shown.by_id["verdict"] and shown.by_id["chain-result"].startswith("BROKEN")
    assert data["chain"]["problems"][0] in " ".join(shown.text)


async def test_a_page_that_cannot_be_written_is_a_clear_exit_2(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_text("a file where the page's folder should be")
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    day = str((datetime.now(IST) - timedelta(days=1)).date())
    args = ["reconcile", "--since", day, "--until", day, "--html", str(tmp_path / "taken" / "p")]
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert result.exit_code == 2, result.output
    assert "cannot write the coverage page to" in result.output
    assert "Traceback" not in result.output
