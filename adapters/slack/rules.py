"""Slack decisions as plain functions over plain data: is an event for us, which thread, what
text, and how an answer is made safe and sized for Slack."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from adapters.chunking import split_message
from adapters.links import display_url
from bot.messages import Source

MARKDOWN_LIMIT = 11_000  # markdown_text allows 12,000; keep a margin for the source list
FALLBACK_LIMIT = 3_000  # after msg_too_long
STREAM_INTERVAL = 1.0  # s between the stream calls of one answer
FIRST_TEXT_HOLD = 0.3  # s an answer's first text waits (a preamble before a tool call is withdrawn by then)
WORKSPACE_STREAM_BURST = 30  # stream calls a workspace may make at once (Tier 4: generous bursts)
# then one call per this many s, so no minute holds more than 100 (appendStream is Tier 4: 100+/min)
WORKSPACE_STREAM_GAP = 60 / (100 - WORKSPACE_STREAM_BURST)
STREAM_CAP = MARKDOWN_LIMIT // 2  # stream at most this much; the rest (rare) comes when the answer is done
STATUS_REFRESH = 60.0  # s: Slack drops a loading status after two minutes without a message
STATUS_CHARS = 150
FEEDBACK_ACTION = "feedback"
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
    team: str = ""  # the asker's workspace: a stream into a channel names its recipient


@dataclass(frozen=True)
class Feedback:
    """A click on the 👍/👎 buttons under an answer."""

    thread_id: str
    channel: str
    thread_ts: str
    message_ts: str
    user: str
    value: str  # "good" or "bad"


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
                     plain_text(text, bot_user_id), team)


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
        return [neutralize(f":warning: {text}")]
    body = text
    if sources:
        body += "\n\n**Sources**\n" + "\n".join(_source_line(s) for s in sources)
    return split_message(neutralize(body), limit)  # last: the sources' titles and URLs are the pages' words


def _source_line(source: Source) -> str:
    url = display_url(source.url)
    title = " ".join(re.sub(r"[\[\]]", " ", source.title).split()) or url
    summary = " ".join(source.summary.split())
    return f"- [{title}]({url})" + (f" · {summary}" if summary else "")


def streamable(raw: str) -> str:
    """The part of an answer being written that can be shown now, made safe like the whole:
    text that may still become a mention or a link (`<…` not closed yet, a trailing `@here`
    being written) waits for the next piece, and at most `STREAM_CAP` characters are streamed.

    Showing `neutralize(streamable(raw))` as `raw` grows only ever appends: a cut never falls
    inside something `neutralize` replaces.
    """
    cut = len(raw)
    if opening := re.search(r"<(?:[@!][^>]*)?$", raw):
        cut = opening.start()
    if word := re.search(r"@\w{0,8}$", raw[:cut]):
        cut = word.start()
    return neutralize(raw[:cut])[:STREAM_CAP]


def continuation(streamed: str, message: str) -> str | None:
    """What completes a streamed message into `message` by appending; None when `message` does
    not start with what was streamed (the streamed message must then be replaced)."""
    return message[len(streamed):] if message.startswith(streamed) else None


def status_args(line: str | None) -> tuple[str, list[str] | None]:
    """`assistant.threads.setStatus` arguments for the newest progress line ("reading https://…"):
    "<app> is reading https://…", or "is thinking…" before any."""
    if not line:
        return "is thinking…", None
    line = neutralize(" ".join(line.split()))[:STATUS_CHARS]
    return f"is {line}…", [line[:1].upper() + line[1:] + "…"]


def feedback_blocks() -> list[dict]:
    """The 👍/👎 buttons under an answer (a `context_actions` block with `feedback_buttons`)."""
    return [{"type": "context_actions", "elements": [{
        "type": "feedback_buttons", "action_id": FEEDBACK_ACTION,
        "positive_button": {"text": {"type": "plain_text", "text": "Good answer"}, "value": "good",
                            "accessibility_label": "This answer helped"},
        "negative_button": {"text": {"type": "plain_text", "text": "Bad answer"}, "value": "bad",
                            "accessibility_label": "This answer did not help"}}]}]


def feedback_from_action(body: dict, team: str) -> Feedback | None:
    """The feedback a `block_actions` click carries, or None when it is not a usable click on an
    answer of the bot (no message, no thread, an unknown value)."""
    action = (body.get("actions") or [{}])[0]
    message = body.get("message") or {}
    container = body.get("container") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
    user = (body.get("user") or {}).get("id")
    message_ts = message.get("ts") or container.get("message_ts")
    thread_ts = message.get("thread_ts") or container.get("thread_ts") or message_ts
    value = action.get("value")
    if not channel or not user or not message_ts or value not in ("good", "bad"):
        return None
    team = (body.get("team") or {}).get("id") or team
    return Feedback(thread_id(team, channel, thread_ts), channel, thread_ts, message_ts, user, value)
