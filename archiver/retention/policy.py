"""Retention classes and the rules that give each call one, from the config file's
``[retention]`` table (docs/compliance.md)::

    [retention]
    default = "general"                 # required: the class of calls no rule matches

    [retention.classes.general]
    period = "5y"                       # 5y, 18mo, 90d, 12h, 30min, 45s; a bare number is days
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
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver.errors import ConfigError
from archiver.exotel.models import CallDetails

LOCK_MODES = ("compliance", "governance", "none")
AT_END = ("delete", "keep")
_MATCH_FIELDS = ("virtual_number", "app_id", "app_name", "direction", "status", "custom_field")
_PERIOD = re.compile(r"(\d+)\s*(y|years?|mo|months?|w|weeks?|d|days?|h|hours?|min|s|sec)", re.I)


@dataclass(frozen=True)
class Period:
    """A retention period: calendar months (years are 12) plus an exact duration."""

    months: int = 0
    exact: timedelta = timedelta(0)

    def after(self, start: datetime) -> datetime:
        """``start`` plus this period, in UTC (the 31st plus a month is the month's last day)."""
        start = start.astimezone(UTC)
        year, month = divmod(start.month - 1 + self.months, 12)
        day = start.day
        while True:
            try:
                shifted = start.replace(year=start.year + year, month=month + 1, day=day)
                break
            except ValueError:
                day -= 1
        return shifted + self.exact


def parse_period(value: object, where: str) -> Period:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Period(exact=timedelta(days=value))
    text = str(value).strip().replace(" ", "") if isinstance(value, str) else ""
    parts = list(_PERIOD.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        raise ConfigError(
            f"{where}: period {value!r} is not understood: use e.g. 5y, 18mo, 90d, 12h, 30min "
            "or 45s (or a number of days)"
        )
    months, exact = 0, timedelta(0)
    for part in parts:
        n, unit = int(part.group(1)), part.group(2).lower()
        if unit.startswith("y"):
            months += 12 * n
        elif unit.startswith("mo"):
            months += n
        elif unit.startswith("w"):
            exact += timedelta(weeks=n)
        elif unit.startswith("d"):
            exact += timedelta(days=n)
        elif unit.startswith("h"):
            exact += timedelta(hours=n)
        elif unit == "min":
            exact += timedelta(minutes=n)
        else:
            exact += timedelta(seconds=n)
    return Period(months, exact)


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
