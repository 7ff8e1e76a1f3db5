"""follow / unfollow / following, platform-neutral: each returns the one reply for the chat.
Who may use them is the adapter's decision (Manage Channels on Discord, an admin list on Slack)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from agent.zenn_client import ZennRefused, ZennUnavailable
from bot.digest.feeds import ZennFeeds
from bot.digest.runner import next_run
from bot.digest.schedule import BadSchedule, Schedule
from bot.digest.targets import Target, parse_target, topic_slug
from bot.store.base import (CHANNEL_FULL, FOLLOW_EXISTS, WORKSPACE_FULL, DigestStore, Follow, StoreUnavailable)

log = logging.getLogger(__name__)
EXAMPLES = "a Zenn URL such as https://zenn.dev/catnose99, https://zenn.dev/topics/nextjs or https://zenn.dev/p/NAME"


@dataclass(frozen=True)
class FollowLimits:
    per_channel: int = 10
    per_workspace: int = 50
    default_tz: str = "Asia/Tokyo"


class FollowCommands:
    def __init__(self, store: DigestStore, zenn: ZennFeeds, clock: Callable[[], float],
                 limits: FollowLimits = FollowLimits()) -> None:
        self.store = store
        self.zenn = zenn
        self.clock = clock
        self.limits = limits

    async def follow(self, platform: str, workspace: str, channel_id: str, user: str, text: str,
                     every: str | None = None, at: str | None = None, tz: str | None = None) -> str:
        try:
            schedule = None
            if every or at or tz:
                schedule = Schedule(every or "daily", at or "09:00", tz or self.limits.default_tz)
            target, display = await self.resolve(text)
            if target is None:
                return display  # the reason, one sentence
            follow = Follow(platform, workspace, channel_id, target.key, display, user, self.clock())
            outcome = await self.store.add_follow(
                follow, (schedule.every, schedule.at, schedule.tz) if schedule else None,
                self.limits.per_channel, self.limits.per_workspace, ("daily", "09:00", self.limits.default_tz))
            if outcome == CHANNEL_FULL:
                return (f"This channel already follows {self.limits.per_channel} things, the most it may; "
                        "unfollow one first (`following` lists them).")
            if outcome == WORKSPACE_FULL:
                return (f"This workspace already has {self.limits.per_workspace} follows, the most it may; "
                        "unfollow something first.")
            channel = next(c for c in await self.store.digest_channels()
                           if (c.platform, c.channel_id) == (platform, channel_id))
            when = Schedule(channel.every, channel.at, channel.tz)
            local = next_run(channel, self.clock()).astimezone(ZoneInfo(channel.tz)).strftime("%Y-%m-%d %H:%M")
            already = "This channel already follows" if outcome == FOLLOW_EXISTS else "Following"
            return (f"{already} {target.label(display)}. The digest comes {when.describe()}; next on {local}.")
        except BadSchedule as exc:
            return str(exc)
        except ZennRefused as exc:
            return exc.reason
        except ZennUnavailable:
            return "I couldn't check that on Zenn right now; please try again in a minute."
        except StoreUnavailable as exc:
            return f"The bot's database is unavailable ({exc.reason}), so nothing was saved. Please try again later."

    async def unfollow(self, platform: str, channel_id: str, text: str) -> str:
        try:
            follows = await self.store.list_follows(platform, channel_id)
            follow = self._match(follows, text)
            if follow is None:
                return f"This channel doesn't follow “{text.strip()[:80]}”; `following` lists what it does."
            await self.store.remove_follow(platform, channel_id, follow.target)
            return f"Unfollowed {Target.from_key(follow.target).label(follow.display)}."
        except StoreUnavailable as exc:
            return f"The bot's database is unavailable ({exc.reason}), so nothing was changed. Please try again later."

    async def following(self, platform: str, channel_id: str) -> str:
        try:
            follows = await self.store.list_follows(platform, channel_id)
            channel = next((c for c in await self.store.digest_channels()
                            if (c.platform, c.channel_id) == (platform, channel_id)), None)
        except StoreUnavailable as exc:
            return f"The bot's database is unavailable ({exc.reason}). Please try again later."
        if not follows or channel is None:
            return f"This channel follows nothing yet. Try `follow` with {EXAMPLES}."
        when = Schedule(channel.every, channel.at, channel.tz)
        local = next_run(channel, self.clock()).astimezone(ZoneInfo(channel.tz)).strftime("%Y-%m-%d %H:%M")
        lines = [f"This channel follows ({when.describe()}; next digest {local}):"]
        lines += [f"• {Target.from_key(f.target).label(f.display)}" for f in follows]
        return "\n".join(lines)

    async def resolve(self, text: str) -> tuple[Target | None, str]:
        """The target and its display name, or (None, one helpful sentence). Raises `ZennRefused`
        and `ZennUnavailable` when Zenn cannot be asked."""
        parsed = parse_target(text, self.zenn.base_url)
        if parsed is None:
            return None, f"I can follow a Zenn author, topic or publication, or `trending`: give {EXAMPLES}."
        if isinstance(parsed, Target):
            if parsed.kind == "trending":
                return parsed, ""
            display = await self.zenn.target_exists(parsed.kind, parsed.name)
            if display is None:
                return None, f"Zenn has no {parsed.label()}; check the spelling, or give {EXAMPLES}."
            return parsed, display
        for kind, name in (("topic", topic_slug(parsed)), ("user", parsed), ("publication", parsed)):
            if not name or not all(c.isalnum() or c in "_-" for c in name):
                continue
            display = await self.zenn.target_exists(kind, name)
            if display is not None:
                return Target(kind, name), display
        return None, f"I found no Zenn topic, author or publication called “{parsed[:60]}”; give {EXAMPLES}."

    @staticmethod
    def _match(follows: list[Follow], text: str) -> Follow | None:
        parsed = parse_target(text)
        for follow in follows:
            target = Target.from_key(follow.target)
            if isinstance(parsed, Target) and parsed == target:
                return follow
            if isinstance(parsed, str) and parsed.lower() in {target.name.lower(), follow.display.lower()} - {""}:
                return follow
            if isinstance(parsed, str) and topic_slug(parsed) == target.name and target.kind == "topic":
                return follow
        return None

