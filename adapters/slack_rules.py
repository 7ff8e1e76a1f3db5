"""Slack decisions as plain functions over plain data: is an event for us, which thread, what
text, and how an answer is made safe and sized for Slack."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from adapters.chunking import split_message
from agent.pages import Source

MARKDOWN_LIMIT = 11_000  # markdown_text allows 12,000; keep a margin for the source list
FALLBACK_LIMIT = 3_000  # after msg_too_long
IGNORED_SUBTYPES = {"message_changed", "message_deleted", "bot_message", "channel_join", "channel_leave",
                    "message_replied", "thread_broadcast", "channel_topic", "channel_purpose", "pinned_item"}
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|[^>]*)?>")
_USER_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_SPECIAL = re.compile(r"<!(channel|here|everyone|subteam\^[A-Z0-9]+)(?:\|[^>]*)?>", re.IGNORECASE)


@dataclass(frozen=True)
class SlackTurn:
    """A message the bot should answer."""

    thread_id: str
    channel: str
    thread_ts: str
    message_ts: str
    user: str
    text: str


def thread_id(team: str, channel: str, thread_ts: str) -> str:
    return f"slack:{team}:{channel}:{thread_ts}"


def plain_text(text: str, bot_user_id: str) -> str:
    """The user's words: the bot's mention removed, `<url|label>` → url, entities decoded."""
    text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _USER_MENTION.sub(lambda m: "@" + m.group(1), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1).split("^")[0], text)
    return html.unescape(text).strip()


def mentions(text: str, user_id: str) -> bool:
    return re.search(rf"<@{re.escape(user_id)}(?:\|[^>]*)?>", text) is not None


def turn_from_event(event: dict, team: str, bot_user_id: str, *, is_mention: bool,
                    bot_owns_thread: bool) -> SlackTurn | None:
    """The turn to answer, or None when the event is not for the bot.

    A mention is answered where it is; a plain message in a direct message to the bot, or
    inside a thread the bot is in and without a mention (a mention arrives as `app_mention` too,
    and is answered from there).
    """
    if event.get("subtype") in IGNORED_SUBTYPES or event.get("bot_id") or event.get("bot_profile"):
        return None
    user = event.get("user")
    channel = event.get("channel")
    ts = event.get("ts")
    if not user or user == bot_user_id or not channel or not ts:
        return None
    text = str(event.get("text") or "")
    thread_ts = event.get("thread_ts") or ts
    if not is_mention and event.get("channel_type") != "im":
        if not event.get("thread_ts") or not bot_owns_thread or mentions(text, bot_user_id):
            return None
    return SlackTurn(thread_id(team, channel, thread_ts), channel, thread_ts, ts, user,
                     plain_text(text, bot_user_id))


def allowed(turn_channel: str, user: str, channels: list[str], users: list[str]) -> bool:
    return (not channels or turn_channel in channels) and (not users or user in users)


def parse_command(text: str) -> str | None:
    """`/zenn <URL> <question>` → the question text for the bot, None when empty (usage)."""
    text = plain_text(text or "", "")
    return text or None


def neutralize(text: str) -> str:
    """Model output can never ping a channel, a group or a user."""
    text = _SPECIAL.sub(lambda m: "＠" + m.group(1).split("^")[0].lower(), text)
    text = _USER_MENTION.sub(lambda m: "＠" + m.group(1), text)
    return re.sub(r"(?<!\w)@(channel|here|everyone)\b", r"＠\1", text, flags=re.IGNORECASE)


def answer_messages(text: str, sources: list[Source], ok: bool, limit: int = MARKDOWN_LIMIT) -> list[str]:
    """The answer as Markdown messages for `markdown_text`, each within `limit`, with the pages
    it rests on listed at the end."""
    if not ok:
        return [f":warning: {neutralize(text)}"]
    body = neutralize(text)
    if sources:
        body += "\n\n**Sources**\n" + "\n".join(_source_line(s) for s in sources)
    return split_message(body, limit)


def _source_line(source: Source) -> str:
    title = neutralize(re.sub(r"[\[\]\n]", " ", source.title)).strip() or source.url
    return f"- [{title}]({source.url})" + (f" · {source.summary}" if source.summary else "")
