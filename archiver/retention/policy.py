"""Retention classes and the rules that give each call one, from the config file's
``[retention]`` table (docs/compliance.md)::

    [retention]
    default = "general"                 # required: the class of calls no rule matches

    [retention.classes.general]
    period = "5y"                       # 5y, 18mo, 90d, 12h, 30min, 45s; a bare number is days
                                        # (units may be combined: 1y6mo; at most 1000 years)
    lock = "governance"                 # compliance, governance or none (S3 Object Lock mode)
    at_end = "delete"                   # delete (purge may erase it) or keep

    [[retention.rules]]                 # first match wins; every given field must match
    class = "broker_orders"
    virtual_number = ["+911414941199"]  # one value or a list: exact match
    app_id = "233516"
    app_name = "Orders*"                # shell-style pattern
    direction = "inbound"
    status = "completed"
    custom_field = "^order-"            # regular expression, searched

A class binds when a call is archived: every object of the call gets the class, a
``retain_until`` of the call's creation time plus the period (calendar months and years), and —
when the class has a lock mode and that date is still ahead — S3 Object Lock with that mode and
date in the same PUT. The rules are read with the call details Exotel gave, nothing else.

A call rescued from the v1 listing (``archiver.rescue``) has no v3 details yet:
``RetentionPolicy.classify_v1`` names its class from the v1 fields when that is certain —
every rule before the deciding one certainly does not match, the deciding one certainly does —
and says None otherwise: the class is then bound at enrichment, from the v3 details
(``archiver.retention.binding``). docs/compliance.md, "Rescued calls", has the reading of
each field.
"""

from __future__ import annotations

import calendar
import enum
import fnmatch
import re
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, UTC, datetime, timedelta
from typing import Any

from archiver.errors import ConfigError
from archiver.exotel.models import CallDetails

LOCK_MODES = ("compliance", "governance", "none")
AT_END = ("delete", "keep")
MAX_PERIOD_YEARS = 1000
"""The longest period a class may have. Longer than any law asks (SEBI's longest is 5 years,
DPDP's a year), and the call's creation time plus the period must stay a date Python (and S3)
can represent (year 9999 at most): past it, retain-until dates cannot be computed at all.
Calls to keep for good say ``at_end = "keep"``, not a huge period."""
_MATCH_FIELDS = ("virtual_number", "app_id", "app_name", "direction", "status", "custom_field")
_PERIOD = re.compile(
    r"([0-9]+)\s*(years?|y|months?|mo|weeks?|w|days?|d|hours?|h|min|sec|s)", re.I | re.ASCII
)
_NEGATIVE = re.compile(r"-\s*[0-9]")
_YEAR_SECONDS = 31_556_952
"""The mean Gregorian year (365.2425 days), to weigh calendar months against exact durations."""
_MONTH_SECONDS = _YEAR_SECONDS // 12
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "min": 60, "s": 1}
_MAX_SECONDS = MAX_PERIOD_YEARS * _YEAR_SECONDS
_MAX_DIGITS = 20
"""A number with more significant digits is over the bound whatever its unit (and int() of
thousands of digits is refused, or slow)."""


@dataclass(frozen=True)
class Period:
    """A retention period: calendar months (years are 12) plus an exact duration."""

    months: int = 0
    exact: timedelta = timedelta(0)

    def after(self, start: datetime) -> datetime:
        """``start`` plus this period, in UTC (the 31st plus a month is the month's last day).

        Calendar months are counted both in UTC and in ``start``'s own offset (the account's
        time zone: a call of 1 March 03:00 IST is 28 February in UTC), and the later end wins:
        a period never ends earlier than the call's own calendar says.

        Raises ``ConfigError`` if the date is past what a ``datetime`` represents: never for a
        period ``parse_period`` accepted and a start in the 21st century.
        """
        ends = {self._after(start.astimezone(UTC))}
        if start.tzinfo is not None:
            ends.add(self._after(start).astimezone(UTC))
        return max(ends)

    def _after(self, start: datetime) -> datetime:
        try:
            year, month = divmod(start.month - 1 + self.months, 12)
            year, month = start.year + year, month + 1
            if not MINYEAR <= year <= MAXYEAR:
                raise OverflowError(f"year {year} is out of range")
            day = min(start.day, calendar.monthrange(year, month)[1])
            return start.replace(year=year, month=month, day=day) + self.exact
        except (OverflowError, ValueError):
            raise ConfigError(
                f"a retention period of {self.describe()} from {start.isoformat()} ends "
                f"outside the representable dates (years {MINYEAR} to {MAXYEAR}): retention "
                f"periods are at most {MAX_PERIOD_YEARS} years"
            ) from None

    def describe(self) -> str:
        """The period for people: ``36 months + 5 days, 0:00:00``."""
        parts = [f"{self.months} months"] if self.months else []
        if self.exact or not parts:
            parts.append(str(self.exact))
        return " + ".join(parts)


def parse_period(value: object, where: str) -> Period:
    """The period a class's ``period = ...`` gives (``where`` names the file and class), at most
    ``MAX_PERIOD_YEARS`` long: a ``ConfigError`` naming value, limit and fix otherwise."""
    shown = _shown(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{where}: period {shown} is negative: use 0 or more days")
        return _bounded(0, value * 86400, shown, where)
    text = str(value).strip().replace(" ", "") if isinstance(value, str) else ""
    if _NEGATIVE.search(text):
        raise ConfigError(
            f"{where}: period {shown} is negative: a period is 0 or more, e.g. 90d or 5y"
        )
    parts = list(_PERIOD.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        raise ConfigError(
            f"{where}: period {shown} is not understood: use e.g. 5y, 18mo, 90d, 12h, 30min "
            "or 45s (or a number of days)"
        )
    months = seconds = 0
    for part in parts:
        digits, unit = part.group(1).lstrip("0") or "0", part.group(2).lower()
        if len(digits) > _MAX_DIGITS:
            raise _too_long(shown, where)
        n = int(digits)
        if unit.startswith("y"):
            months += 12 * n
        elif unit.startswith("mo"):
            months += n
        else:
            seconds += n * _UNIT_SECONDS["min" if unit == "min" else unit[0]]
    return _bounded(months, seconds, shown, where)


def _shown(value: object) -> str:
    """``value`` for a message: as written, or its start if it is long."""
    if isinstance(value, int) and value.bit_length() > 64:  # repr() of 10**5000 raises
        return f"<a {value.bit_length()}-bit number>"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:20]}... ({len(text)} characters)"


def _bounded(months: int, seconds: int, shown: str, where: str) -> Period:
    """``Period(months, seconds)``, if no longer than ``MAX_PERIOD_YEARS`` (months weighed at
    a twelfth of the mean Gregorian year)."""
    if months * _MONTH_SECONDS + seconds > _MAX_SECONDS:
        raise _too_long(shown, where)
    return Period(months, timedelta(seconds=seconds))


def _too_long(shown: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: period {shown} is longer than {MAX_PERIOD_YEARS} years, the longest "
        f"retention period (no law asks for more, and the call's creation time plus the "
        f'period must stay a representable date): use e.g. period = "{MAX_PERIOD_YEARS}y" or '
        'less, or at_end = "keep" to keep the calls for good'
    )


@dataclass(frozen=True)
class RetentionClass:
    name: str
    period: Period
    lock: str | None
    """``COMPLIANCE``, ``GOVERNANCE`` or None."""
    at_end: str
    """``delete`` or ``keep``."""

    def retain_until(self, created: datetime) -> datetime:
        return self.period.after(created)


V1_DIRECTIONS = frozenset({"inbound", "outbound-dial", "outbound-api"})
"""The words of v1's ``Direction``, the same as v3's field table (v3's example also shows
``outbound``, a word v1 does not use)."""
V1_CERTAIN_STATUS = "completed"
"""The one v1 ``Status`` whose v3 ``status`` is certain: ``completed`` is ``completed``. v1's
``busy``, ``failed``, ``no-answer`` and ``canceled`` each stand for one or more of v3's
unanswered, cancelled and no-dial statuses, in a mapping Exotel does not document."""
_NUMBER_DIGITS = 10
"""Digits of a phone number compared across formats (``+911414941199`` and ``01414941199``
are the same number written two ways): the national number of an Indian ExoPhone."""


class V1Verdict(enum.Enum):
    """What a rule, or one field of it, says of a call known only from its v1 listing item."""

    MATCH = "match"
    """It matches the call's v3 details for certain."""
    NO = "no"
    """It does not match them, for certain."""
    UNKNOWN = "unknown"
    """Only the v3 details can tell."""


def _v1_direction(direction: str | None, allowed: frozenset[str]) -> V1Verdict:
    if direction is None or direction not in V1_DIRECTIONS:
        return V1Verdict.UNKNOWN  # not a word we know v3 says the same way
    if direction in allowed:
        return V1Verdict.MATCH
    # A rule value v1 never says (``outbound``): v3 may say it of this very call.
    return V1Verdict.NO if allowed <= V1_DIRECTIONS else V1Verdict.UNKNOWN


def _v1_status(status: str | None, allowed: frozenset[str]) -> V1Verdict:
    if status != V1_CERTAIN_STATUS:
        return V1Verdict.UNKNOWN
    return V1Verdict.MATCH if V1_CERTAIN_STATUS in allowed else V1Verdict.NO


_PHONE = re.compile(r"\+?[0-9][0-9 ()-]*", re.ASCII)


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isascii() and c.isdigit())[-_NUMBER_DIGITS:]


def _v1_number(phone_number_sid: str | None, allowed: frozenset[str]) -> V1Verdict:
    if phone_number_sid in allowed:
        return V1Verdict.MATCH
    sid = phone_number_sid or ""
    digits = _digits(sid)
    if not _PHONE.fullmatch(sid) or len(digits) < _NUMBER_DIGITS:
        return V1Verdict.UNKNOWN  # not a phone number we can compare: an id, a short code
    if any(_digits(value) == digits for value in allowed):
        return V1Verdict.UNKNOWN  # the same number in another format: v3's may be either
    return V1Verdict.NO


_V1_READERS = {"direction": _v1_direction, "status": _v1_status, "virtual_number": _v1_number}


@dataclass(frozen=True)
class Rule:
    retention_class: str
    exact: tuple[tuple[str, frozenset[str]], ...]
    app_name: str | None = None
    custom_field: re.Pattern[str] | None = None

    def matches(self, call: CallDetails) -> bool:
        for name, allowed in self.exact:
            if str(getattr(call, name) or "") not in allowed:
                return False
        if self.app_name is not None and not fnmatch.fnmatchcase(
            call.app_name or "", self.app_name
        ):
            return False
        return self.custom_field is None or bool(self.custom_field.search(call.custom_field or ""))

    def matches_v1(
        self, direction: str | None, status: str | None, phone_number_sid: str | None
    ) -> V1Verdict:
        """Whether the rule matches a call known only from its v1 fields: one field certainly
        not matching rules it out; all matching for certain is a match; otherwise unknown
        (``app_id``, ``app_name`` and ``custom_field`` are in v3 only)."""
        fields = {
            "direction": direction,
            "status": status,
            "virtual_number": phone_number_sid,
        }
        verdicts = [
            _V1_READERS[name](fields[name], allowed) if name in _V1_READERS else V1Verdict.UNKNOWN
            for name, allowed in self.exact
        ]
        if self.app_name is not None or self.custom_field is not None:
            verdicts.append(V1Verdict.UNKNOWN)
        if V1Verdict.NO in verdicts:
            return V1Verdict.NO
        return V1Verdict.UNKNOWN if V1Verdict.UNKNOWN in verdicts else V1Verdict.MATCH


@dataclass(frozen=True)
class RetentionPolicy:
    classes: dict[str, RetentionClass]
    rules: tuple[Rule, ...]
    default: str

    def classify(self, call: CallDetails) -> RetentionClass:
        for rule in self.rules:
            if rule.matches(call):
                return self.classes[rule.retention_class]
        return self.classes[self.default]

    def classify_v1(
        self, direction: str | None, status: str | None, phone_number_sid: str | None
    ) -> RetentionClass | None:
        """The class of a call from its v1 listing fields (``Direction``, ``Status``,
        ``PhoneNumberSid``), or None when only its v3 details can decide (bind at enrichment).

        The rules in order: the first that certainly matches decides; one that certainly does
        not is passed over; one that may match, before any certain match, leaves the call
        undecided. None matching, for certain: the default class. A class named here is the
        class ``classify`` gives the call's v3 details (docs/compliance.md, "Rescued calls")."""
        for rule in self.rules:
            verdict = rule.matches_v1(direction, status, phone_number_sid)
            if verdict is V1Verdict.MATCH:
                return self.classes[rule.retention_class]
            if verdict is V1Verdict.UNKNOWN:
                return None
        return self.classes[self.default]

    @property
    def needs_object_lock(self) -> bool:
        return any(c.lock is not None for c in self.classes.values())


def parse_policy(table: Any, where: str) -> RetentionPolicy:
    """The ``[retention]`` table of the config file at ``where``, validated."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [retention] must be a table")
    unknown = set(table) - {"default", "classes", "rules"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) in [retention]: {', '.join(sorted(unknown))}; valid: "
            "default, classes, rules"
        )
    raw_classes = table.get("classes")
    if not isinstance(raw_classes, dict) or not raw_classes:
        raise ConfigError(f"{where}: [retention] needs at least one [retention.classes.NAME]")
    classes = {name: _parse_class(name, spec, where) for name, spec in raw_classes.items()}
    default = table.get("default")
    if not isinstance(default, str) or default not in classes:
        raise ConfigError(
            f"{where}: [retention] default = ... is required and must name one of the classes "
            f"({', '.join(sorted(classes))}); got {default!r}"
        )
    raw_rules = table.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{where}: retention rules are written [[retention.rules]]")
    rules = tuple(_parse_rule(n, spec, classes, where) for n, spec in enumerate(raw_rules, 1))
    return RetentionPolicy(classes, rules, default)


def _parse_class(name: str, spec: Any, where: str) -> RetentionClass:
    at = f"{where}: [retention.classes.{name}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{at} must be a table")
    unknown = set(spec) - {"period", "lock", "at_end"}
    if unknown:
        raise ConfigError(
            f"{at}: unknown key(s) {', '.join(sorted(unknown))}; valid: period, lock, at_end"
        )
    if "period" not in spec:
        raise ConfigError(f'{at}: period is required (e.g. period = "5y")')
    lock = str(spec.get("lock", "none")).lower()
    if lock not in LOCK_MODES:
        raise ConfigError(f"{at}: lock must be one of {', '.join(LOCK_MODES)}; got {lock!r}")
    at_end = str(spec.get("at_end", "keep")).lower()
    if at_end not in AT_END:
        raise ConfigError(f"{at}: at_end must be delete or keep; got {at_end!r}")
    return RetentionClass(
        name, parse_period(spec["period"], at), None if lock == "none" else lock.upper(), at_end
    )


def _parse_rule(n: int, spec: Any, classes: dict[str, RetentionClass], where: str) -> Rule:
    at = f"{where}: retention rule {n}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{at} must be a table")
    unknown = set(spec) - {"class", *_MATCH_FIELDS}
    if unknown:
        raise ConfigError(
            f"{at}: unknown key(s) {', '.join(sorted(unknown))}; valid: class, "
            + ", ".join(_MATCH_FIELDS)
        )
    name = spec.get("class")
    if name not in classes:
        raise ConfigError(f"{at}: class = {name!r} is not one of {', '.join(sorted(classes))}")
    exact = []
    for field in ("virtual_number", "app_id", "direction", "status"):
        if field in spec:
            values = spec[field] if isinstance(spec[field], list) else [spec[field]]
            exact.append((field, frozenset(str(v) for v in values)))
    pattern = None
    if "custom_field" in spec:
        try:
            pattern = re.compile(str(spec["custom_field"]))
        except re.error as exc:
            raise ConfigError(
                f"{at}: custom_field is not a valid regular expression: {exc}"
            ) from None
    if not exact and pattern is None and "app_name" not in spec:
        raise ConfigError(
            f"{at} matches every call: give at least one of "
            + ", ".join(_MATCH_FIELDS)
            + " (or change the default class)"
        )
    app_name = str(spec["app_name"]) if "app_name" in spec else None
    return Rule(str(name), tuple(exact), app_name, pattern)
