"""A five-field cron matcher (`minute hour day-of-month month day-of-week`), enough for retraining schedules.

Fields take `*`, numbers, ranges `a-b`, steps `*/n` or `a-b/n`, and lists `a,b`; weekday 0 and 7 are
Sunday. When both day fields are restricted, either may match (as in Vixie cron).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

from llmops.errors import ConfigError

__all__ = ["parse_cron", "last_fire_time"]

_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def _field(text: str, low: int, high: int, name: str) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, stop = low, high
            elif "-" in body:
                start, stop = (int(x) for x in body.split("-", 1))
            else:
                start = stop = int(body)
        except ValueError:
            raise ConfigError(f"cron {name}: {part!r} is not a number, range or step") from None
        if step < 1 or start < low or stop > high or start > stop:
            raise ConfigError(f"cron {name}: {part!r} is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    return values


def parse_cron(expression: str) -> tuple[set[int], ...]:
    """Parse an expression into the sets of allowed values per field (ConfigError when invalid)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(f"cron {expression!r}: expected 5 fields (minute hour day month weekday)")
    parsed = [_field(text, low, high, name) for text, (low, high), name in zip(fields, _BOUNDS, _NAMES)]
    if 7 in parsed[4]:
        parsed[4].add(0)
    return tuple(parsed)


def _matches(fields: tuple[set[int], ...], moment: datetime, restricted_days: tuple[bool, bool]) -> bool:
    minute, hour, day, month, weekday = fields
    if moment.minute not in minute or moment.hour not in hour or moment.month not in month:
        return False
    day_ok, weekday_ok = moment.day in day, (moment.isoweekday() % 7) in weekday
    if all(restricted_days):
        return day_ok or weekday_ok
    return day_ok and weekday_ok


def last_fire_time(expression: str, now: datetime, horizon: timedelta = timedelta(days=32)) -> Optional[datetime]:
    """The latest minute at or before `now` that the expression matches (None within `horizon`)."""
    fields = parse_cron(expression)
    texts = expression.split()
    restricted = (texts[2] != "*", texts[4] != "*")
    moment = now.replace(second=0, microsecond=0)
    for _ in range(int(horizon.total_seconds() // 60)):
        if _matches(fields, moment, restricted):
            return moment
        moment -= timedelta(minutes=1)
    return None
