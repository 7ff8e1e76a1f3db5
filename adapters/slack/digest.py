"""Follows and digests on Slack: `/zenn follow|unfollow|following …` and the digest poster.

A digest is one message of blocks (a header, what the channel follows, one section per item:
the title linking to the article, author and counts, the two-line summary; the note last). Its
thread is the conversation about it: replies there are answered with the digest in view.
Anyone may change follows unless `SLACK_FOLLOW_ADMINS` lists who may.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.slack import rules
from bot.digest.builder import Digest, counts
from bot.digest.runner import PostedDigest

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

    from adapters.slack.app import SlackAdapter

log = logging.getLogger(__name__)
USAGE = ("Usage: `/zenn follow <Zenn URL, name or trending> [daily|weekly] [HH:MM] [Area/City]`, "
         "`/zenn unfollow <target>`, `/zenn following`.")
NOT_ALLOWED = "Only the people the bot's admin listed (SLACK_FOLLOW_ADMINS) can change what this channel follows."
DIGEST_EVENT = "zennbot_digest"  # the metadata event type of a digest message
HISTORY_LOOKBACK = 100  # recent channel messages searched for a digest an earlier attempt posted
_AT = re.compile(r"^(?:at:)?(\d{1,2}:\d{2})$")
_TZ = re.compile(r"^(?:tz:)?((?:[A-Za-z_]+/)+[A-Za-z_+-]+|UTC)$")


@dataclass(frozen=True)
class FollowCommand:
    action: str  # follow, unfollow, following
    target: str = ""
    every: str | None = None
    at: str | None = None
    tz: str | None = None


def parse_follow_command(text: str) -> FollowCommand | None:
    """`follow …`, `unfollow …` or `following` (the words after `/zenn`); None for a question."""
    words = rules.plain_text(text or "", "").split()
    if not words or words[0].lower() not in ("follow", "unfollow", "following"):
        return None
    action, rest = words[0].lower(), words[1:]
    if action != "follow":
        return FollowCommand(action, " ".join(rest))
    every = at = tz = None
    target: list[str] = []
    for word in rest:
        lowered = word.lower().removeprefix("every:")
        if lowered in ("daily", "weekly"):
            every = lowered
        elif match := _AT.match(word):
            at = match[1].zfill(5)
        elif match := _TZ.match(word):
            tz = match[1]
        else:
            target.append(word)
    return FollowCommand(action, " ".join(target), every, at, tz)


def digest_blocks(digest: Digest) -> list[dict]:
    """The digest as Block Kit blocks (well under Slack's 50 blocks and 3,000 characters a section)."""
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": digest.heading[:150]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(", ".join(digest.follows))[:2000]}]}]
    for number, item in enumerate(digest.items, 1):
        title = _escape(rules.neutralize(item.title)).replace("|", "｜")
        lines = [f"*<{item.url}|{number}. {title}>*", _escape(f"{item.author} · {counts(item)}")]
        lines += [_escape(rules.neutralize(line)) for line in item.summary.splitlines()]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(digest.note)[:2000]}]})
    return blocks


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackDigestPoster:
    platform = "slack"

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def post(self, digest: Digest, nonce: str, again: bool = False) -> PostedDigest:
        ts = await self._posted_before(digest.channel_id, nonce) if again else None
        if ts is None:
            response = await self.client.chat_postMessage(
                channel=digest.channel_id, text=digest.heading, blocks=digest_blocks(digest), unfurl_links=False,
                unfurl_media=False, metadata={"event_type": DIGEST_EVENT, "event_payload": {"nonce": nonce}})
            ts = response["ts"]
        return PostedDigest(json.dumps({"channel": digest.channel_id, "ts": ts}),
                            rules.thread_id(digest.workspace, digest.channel_id, ts))

    async def _posted_before(self, channel: str, nonce: str) -> str | None:
        """The ts of the channel's recent message carrying this digest's `nonce` (posted by an
        attempt that died before it could record it), if any. Slack has no idempotent post, so
        the message's metadata is the record."""
        response = await self.client.conversations_history(channel=channel, limit=HISTORY_LOOKBACK,
                                                           include_all_metadata=True)
        for message in response.get("messages", []):
            metadata = message.get("metadata") or {}
            if (metadata.get("event_type") == DIGEST_EVENT
                    and (metadata.get("event_payload") or {}).get("nonce") == nonce):
                log.info("Slack: digest %s was already posted (%s); not posting it again", nonce, message["ts"])
                return message["ts"]
        return None

    async def post_line(self, digest: Digest, text: str) -> None:
        await self.client.chat_postMessage(channel=digest.channel_id, text=rules.neutralize(text))


async def on_follow_command(adapter: SlackAdapter, command: FollowCommand, payload: dict, respond) -> None:
    """Answer one follow command in the channel (a change everyone there should see)."""
    user, channel = payload.get("user_id", ""), payload.get("channel_id", "")
    team = payload.get("team_id") or adapter.team_id
    settings = adapter.settings
    if adapter.follows is None:
        await respond(text="Follows are not enabled on this bot.", response_type="ephemeral")
        return
    if not rules.allowed(channel, user, settings.slack_allowed_channels, settings.slack_allowed_users):
        await respond(text="This bot is not enabled here.", response_type="ephemeral")
        return
    if command.action != "following" and settings.slack_follow_admins and user not in settings.slack_follow_admins:
        await respond(text=NOT_ALLOWED, response_type="ephemeral")
        return
    if command.action != "following" and not command.target:
        await respond(text=USAGE, response_type="ephemeral")
        return
    try:
        if command.action == "follow":
            text = await adapter.follows.follow("slack", team, channel, f"slack:{user}", command.target,
                                                command.every, command.at, command.tz)
        elif command.action == "unfollow":
            text = await adapter.follows.unfollow("slack", channel, command.target)
        else:
            text = await adapter.follows.following("slack", channel)
    except Exception:
        log.exception("Slack: /zenn %s failed", command.action)
        text = "Something went wrong on my side; the details are in the bot's log."
    visible = "ephemeral" if command.action == "following" else "in_channel"
    await respond(text=rules.neutralize(text), response_type=visible)
