"""The coverage page: ``reconcile --html FILE`` as one self-contained HTML file.

What a compliance officer reads at a glance, from a ``ReconcileReport``:

* the verdict: complete or not, and whether the manifest chain is intact;
* a calendar of the range's days (the account's time zone), each coloured by its calls — all
  archived (or erased under the retention rules), some missing, still active, recording
  pending or rescued (audio safe, v3 details to come), no recording, no calls — with a
  legend, and each day's counts written in it, so the colour is never the only signal;
* the totals per state;
* every call missing, still active or with its recording pending, with its reason (rescued
  calls are counted, in the verdict and the totals, not listed: a large backfill rescues many);
* the manifest chain: segments, entries, the head (SHA-256 of the last segment), the check's
  result and its problems.

The file loads nothing (no script, font, image or style sheet from anywhere: inline CSS only),
so it opens offline and can be mailed or archived as it is. Every value that comes from Exotel,
the ledger or the manifest goes through ``html.escape``: a hostile call SID, status or reason is
shown as text, never run as markup. ``write_page`` writes it atomically (``files.write_atomic``).
"""

from __future__ import annotations

import calendar
from collections import Counter
from datetime import date, datetime, timedelta
from html import escape
from pathlib import Path

from archiver.files import write_atomic
from archiver.reconcile import RECONCILED, ReconcileReport

COLOURS = {
    "archived": "#8fd19e",
    "missing": "#f28b82",
    "active": "#fdd663",
    "recordless": "#c9cbd6",
    "empty": "#ffffff",
}
"""The background of a day of each kind (tests find these pixels in a screenshot)."""
DAY_LABELS = {
    "archived": "all archived",
    "missing": "some missing",
    "active": "still active / pending / rescued",
    "recordless": "no recording",
    "empty": "no calls",
}
LEGEND = {
    "archived": "every call archived (or erased under the retention rules)",
    "missing": "at least one call with a recording is not archived",
    "active": "calls still active, recordings still in processing, or calls rescued (recording "
    "stored from the v1 listing) whose v3 details are still to come: not final yet",
    "recordless": "calls, none of them with a recording at Exotel",
    "empty": "no calls that day",
}
STATE_LABELS = {
    "archived": "archived",
    "rescued": "rescued",
    "erased": "erased",
    "missing": "missing",
    "no_recording_at_source": "no recording",
    "still_active": "still active",
    "recording_pending": "recording pending",
}
ATTENTION = ("missing", "still_active", "recording_pending")
_STATE_CLASS = {
    "missing": "missing",
    "still_active": "active",
    "recording_pending": "active",
    "rescued": "active",
    "archived": "archived",
    "erased": "archived",
    "no_recording_at_source": "recordless",
}

_CSS = """
body { font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
  margin: 24px; max-width: 1150px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 24px 0 8px; }
.meta { color: #555; margin: 0 0 12px; }
.verdict { font-size: 18px; font-weight: 600; padding: 10px 14px; border-radius: 6px;
  border: 2px solid #333; }
.verdict.ok { background: #8fd19e; } .verdict.bad { background: #f28b82; }
table { border-collapse: collapse; }
.totals td, .totals th, .calls td, .calls th { border: 1px solid #bbb; padding: 4px 8px;
  text-align: left; vertical-align: top; }
.totals td.n { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
.months { display: flex; flex-wrap: wrap; gap: 16px; }
.month caption { font-weight: 600; text-align: left; padding: 4px 0; }
.month th { font-weight: normal; color: #555; font-size: 12px; }
.month td { width: 150px; height: 84px; border: 1px solid #999; vertical-align: top;
  padding: 3px 5px; font-size: 12px; }
.month td.out { border-color: #eee; color: #bbb; background: #fafafa; }
.month td.blank { border: none; }
.num { font-weight: 700; font-size: 14px; } .label { font-weight: 600; }
.c { display: block; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 8px 0; padding: 0; }
.legend li { list-style: none; }
.swatch { display: inline-block; width: 28px; height: 16px; border: 1px solid #666;
  vertical-align: middle; margin-right: 6px; }
.archived { background: #8fd19e; } .missing { background: #f28b82; }
.active { background: #fdd663; } .recordless { background: #c9cbd6; }
.empty { background: #ffffff; }
code, .sid, .hash { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px;
  overflow-wrap: anywhere; }
dl.chain { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
dl.chain dt { font-weight: 600; } dl.chain dd { margin: 0; }
.problem { color: #8b0000; }
"""


def day_kind(counts: Counter[str]) -> str:
    """Which colour a day with these per-state counts gets (see ``LEGEND``)."""
    if counts["missing"]:
        return "missing"
    if counts["still_active"] or counts["recording_pending"] or counts["rescued"]:
        return "active"
    if counts["archived"] or counts["erased"]:
        return "archived"
    if counts["no_recording_at_source"]:
        return "recordless"
    return "empty"


def render(report: ReconcileReport, *, generated: datetime, destination: str | None = None) -> str:
    """The page, as one string of HTML."""
    by_day: dict[date, Counter[str]] = {}
    for call in report.calls:
        day = _day(call.get("created", ""), report)
        if day is not None:
            by_day.setdefault(day, Counter())[call["state"]] += 1
    counts = report.counts()
    title = f"Recording coverage {report.since.isoformat()} to {report.until.isoformat()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1 id="title">{escape(title)}</h1>',
        '<p class="meta">',
        f"Days in time zone {escape(str(report.tz))}. ",
        f"Destination {escape(destination)}. " if destination else "",
        f"Made {escape(generated.isoformat(timespec='seconds'))} by "
        "<code>exotel-archiver reconcile</code> from Exotel's own list of calls and the "
        "archive's ledger and manifest.</p>",
        _verdict(report, counts),
        "<h2>Calendar</h2>",
        _legend(),
        '<div class="months">',
        *_months(report, by_day),
        "</div>",
        "<h2>Totals</h2>",
        _totals(counts, len(report.calls)),
        "<h2>Calls not archived yet</h2>",
        _attention(report),
        "<h2>Manifest chain</h2>",
        _chain(report),
        "</body></html>",
        "",
    ]
    return "\n".join(parts)


def write_page(
    path: Path, report: ReconcileReport, *, generated: datetime, destination: str | None = None
) -> None:
    """Write the page to ``path`` atomically (mode 0600, as every file the archiver writes)."""
    write_atomic(path, render(report, generated=generated, destination=destination))


def _day(created: str, report: ReconcileReport) -> date | None:
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return None
    return (when.astimezone(report.tz) if when.tzinfo is not None else when).date()


def _verdict(report: ReconcileReport, counts: dict[str, int]) -> str:
    chain = report.chain
    broken = chain is not None and not chain.intact
    if report.complete:
        text = (
            f"COMPLETE: all {len(report.calls)} calls of the range are archived, erased under "
            "the retention rules, or have no recording at Exotel"
        )
    else:
        open_ = ", ".join(
            f"{counts[s]} {STATE_LABELS[s]}" for s in (*ATTENTION, "rescued") if counts[s]
        )
        text = f"NOT COMPLETE: {open_}"
    if broken:
        text += "; the manifest chain is BROKEN (see below)"
    elif chain is not None:
        text += "; the manifest chain is intact"
    good = report.complete and not broken
    return f'<p id="verdict" class="verdict {"ok" if good else "bad"}">{escape(text)}</p>'


def _legend() -> str:
    items = "".join(
        f'<li><span class="swatch {kind}"></span><b>{escape(DAY_LABELS[kind])}</b>: '
        f"{escape(LEGEND[kind])}</li>"
        for kind in DAY_LABELS
    )
    return f'<ul class="legend">{items}</ul>'


def _months(report: ReconcileReport, by_day: dict[date, Counter[str]]) -> list[str]:
    out: list[str] = []
    month = report.since.replace(day=1)
    while month <= report.until:
        weeks = calendar.Calendar(firstweekday=0).monthdatescalendar(month.year, month.month)
        rows = []
        for week in weeks:
            cells = []
            for day in week:
                if day.month != month.month:
                    cells.append('<td class="blank"></td>')
                elif not report.since <= day <= report.until:
                    cells.append(f'<td class="out"><span class="num">{day.day}</span></td>')
                else:
                    cells.append(_day_cell(day, by_day.get(day, Counter())))
            rows.append("<tr>" + "".join(cells) + "</tr>")
        head = "".join(f"<th>{name}</th>" for name in calendar.day_abbr)
        out.append(
            f'<table class="month"><caption>{calendar.month_name[month.month]} {month.year}'
            f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
        month = (month + timedelta(days=32)).replace(day=1)
    return out


def _day_cell(day: date, counts: Counter[str]) -> str:
    kind = day_kind(counts)
    lines = "".join(
        f'<span class="c">{STATE_LABELS[s]} {counts[s]}</span>' for s in RECONCILED if counts[s]
    )
    return (
        f'<td id="day-{day.isoformat()}" class="day {kind}">'
        f'<span class="num">{day.day}</span> <span class="label">{DAY_LABELS[kind]}</span>'
        f"{lines}</td>"
    )


def _totals(counts: dict[str, int], total: int) -> str:
    rows = "".join(
        f'<tr><th><span class="swatch {_STATE_CLASS[s]}"></span>{STATE_LABELS[s]}</th>'
        f'<td class="n" id="count-{s}">{counts[s]}</td></tr>'
        for s in RECONCILED
    )
    return (
        f'<table class="totals"><tbody>{rows}'
        f'<tr><th>calls in the range</th><td class="n" id="count-total">{total}</td></tr>'
        "</tbody></table>"
    )


def _attention(report: ReconcileReport) -> str:
    calls = [c for c in report.calls if c["state"] in ATTENTION]
    if not calls:
        return '<p id="attention">None: every call of the range is settled.</p>'
    calls.sort(key=lambda c: (ATTENTION.index(c["state"]), c.get("created", "")))
    rows = "".join(
        f'<tr data-sid="{escape(c["call_sid"])}">'
        f'<td class="sid">{escape(c["call_sid"])}</td>'
        f"<td>{escape(c.get('created', ''))}</td>"
        f'<td class="{_STATE_CLASS[c["state"]]}">{escape(STATE_LABELS[c["state"]])}</td>'
        f"<td>{escape(c.get('exotel_status', ''))}</td>"
        f"<td>{escape(c.get('reason', ''))}</td></tr>"
        for c in calls
    )
    return (
        '<table class="calls" id="attention"><thead><tr><th>Call SID</th><th>Created</th>'
        "<th>State</th><th>Exotel status</th><th>Reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _chain(report: ReconcileReport) -> str:
    chain = report.chain
    if chain is None:
        return '<p id="chain-result">not checked</p>'
    against = "checked against the ledger" if chain.ledger_used else "checked without a ledger"
    result = (
        f"intact ({against})"
        if chain.intact
        else f"BROKEN: {len(chain.problems)} problem(s) ({against})"
    )
    head = chain.head_sha256 or "none: no segment sealed yet"
    problems = "".join(f'<li class="problem">{escape(p)}</li>' for p in chain.problems)
    notes = "".join(f"<li>{escape(n)}</li>" for n in chain.notes)
    return (
        '<dl class="chain">'
        f'<dt>Result</dt><dd id="chain-result">{escape(result)}</dd>'
        f'<dt>Head (SHA-256 of the last segment)</dt><dd class="hash" id="chain-head">'
        f"{escape(head)}</dd>"
        f'<dt>Segments</dt><dd id="chain-segments">{chain.segments}</dd>'
        f'<dt>Entries</dt><dd id="chain-entries">{chain.entries}</dd>'
        f'<dt>Pending seal</dt><dd id="chain-pending">{chain.pending_seal}</dd>'
        "</dl>"
        + (f"<ul>{problems}</ul>" if problems else "")
        + (f"<ul>{notes}</ul>" if notes else "")
        + "<p>The chain is checked as <code>exotel-archiver verify</code> checks it; the "
        "objects are not re-read here: <code>exotel-archiver verify</code> does that.</p>"
    )
