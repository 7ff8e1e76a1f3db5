"""When a channel's digest is due: every day or every week (Mondays) at a local time in a time
zone. A digest belongs to one slot (a period); the slot, not the clock, names it, so every
replica that looks at the same moment agrees on which digest is due."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EVERY = ("daily", "weekly")
WEEKLY_DAY = 0  # Monday
_AT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class BadSchedule(ValueError):
    """A schedule the user wrote that cannot be used; the message is one sentence for the chat."""


@dataclass(frozen=True)
class Schedule:
    every: str = "daily"
    at: str = "09:00"
    tz: str = "Asia/Tokyo"

    def __post_init__(self) -> None:
        if self.every not in EVERY:
            raise BadSchedule(f"“{self.every}” is not a schedule; use daily or weekly.")
        if not _AT.match(self.at):
            raise BadSchedule(f"“{self.at}” is not a time; use HH:MM, e.g. 09:00.")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise BadSchedule(f"“{self.tz}” is not a time zone; use a name like Asia/Tokyo or UTC.") from None

    @property
    def length(self) -> dt.timedelta:
        return dt.timedelta(days=1 if self.every == "daily" else 7)

    def due_slot(self, now: dt.datetime) -> dt.datetime:
        """The latest slot at or before `now` (aware), in UTC."""
        zone = ZoneInfo(self.tz)
        local = now.astimezone(zone)
        hour, minute = (int(x) for x in self.at.split(":"))
        day = local.date()
        if self.every == "weekly":
            day -= dt.timedelta(days=(day.weekday() - WEEKLY_DAY) % 7)
        slot = dt.datetime.combine(day, dt.time(hour, minute), zone)
        if slot > local:
            slot = dt.datetime.combine(day - self.length, dt.time(hour, minute), zone)
        return slot.astimezone(dt.UTC)

    def next_slot(self, now: dt.datetime) -> dt.datetime:
        """The first slot after `now`, in UTC."""
        zone = ZoneInfo(self.tz)
        due = self.due_slot(now).astimezone(zone)
        nxt = dt.datetime.combine(due.date() + self.length, due.time().replace(tzinfo=None), zone)
        return nxt.astimezone(dt.UTC)

    def period(self, slot: dt.datetime) -> str:
        """The name of the digest of `slot`: one row per channel and period in the store."""
        return f"{self.every}@{slot.astimezone(dt.UTC).strftime('%Y-%m-%dT%H:%MZ')}"

    def describe(self) -> str:
        when = "every day" if self.every == "daily" else "every Monday"
        return f"{when} at {self.at} ({self.tz})"
