"""Discord decisions as plain functions over plain data: is a message for us, where to answer,
the thread's name, and the answer as Discord messages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from adapters.chunking import split_message
from adapters.links import display_url
from bot.messages import Source

MESSAGE_LIMIT = 2_000
THREAD_NAME_LIMIT = 100


class Where(Enum):
    NEW_THREAD = "new thread from the message"
    IN_PLACE = "reply in this channel"


@dataclass(frozen=True)
class Incoming:
    author_id: int
    author_is_bot: bool
    content: str
    mentioned_ids: frozenset[int]
    channel_id: int
    channel_kind: str  # "text", "thread", "forum_thread", "dm", "other"
    guild_id: int | None = None
    parent_id: int | None = None
    role_ids: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Access:
    guilds: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    def allows(self, message: Incoming) -> bool:
        if self.guilds and str(message.guild_id) not in self.guilds:
            return False
        if self.channels and not {str(message.channel_id), str(message.parent_id)} & self.channels:
            return False
        if self.roles and message.channel_kind != "dm" and not {str(r) for r in message.role_ids} & self.roles:
            return False
        return True


def where_to_answer(message: Incoming, bot_id: int, *, bot_owns_channel: bool, require_mention_in_threads: bool,
                    access: Access = Access()) -> Where | None:
    """None when the bot stays silent. `mentioned_ids` holds direct user mentions only, so
    @everyone, @here and role mentions never count as talking to the bot."""
    if message.author_is_bot or message.author_id == bot_id or not access.allows(message):
        return None
    mentioned = bot_id in message.mentioned_ids
    if message.channel_kind == "text":
        return Where.NEW_THREAD if mentioned else None
    if bot_owns_channel and (mentioned or not require_mention_in_threads):
        return Where.IN_PLACE
    if mentioned or message.channel_kind == "dm":
        return Where.IN_PLACE
    return None


def conversation_id(channel_id: int) -> str:
    return f"discord:{channel_id}"


def question_text(content: str, bot_id: int) -> str:
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()


def thread_name(question: str) -> str:
    """A thread title from the question: one line, no URL noise, at most 100 characters."""
    text = re.sub(r"https?://(?:www\.)?", "", question)
    text = " ".join(text.split()) or "zennbot"
    return text if len(text) <= THREAD_NAME_LIMIT else text[: THREAD_NAME_LIMIT - 1] + "…"


_PING = re.compile(r"@(everyone|here)\b|<@([!&]?)(?=\d)", re.IGNORECASE)


def neutralize(text: str) -> str:
    """Nothing in `text` reads as a mention, whatever `allowed_mentions` says: a zero-width space
    after the "@" of @everyone, @here, <@user>, <@!user> and <@&role>. The last step before
    text (answers, sources, titles, status, notices) is posted."""
    return _PING.sub(lambda m: f"@\u200b{m.group(1)}" if m.group(1) and not m.group(0).startswith("<")
                     else f"<@\u200b{m.group(2) or ''}", text)


def answer_messages(text: str, sources: list[Source], ok: bool, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The answer as messages within `limit`, with the pages it rests on listed at the end
    (links in <> so Discord shows no preview, encoded so they cannot end the <>; the cards are
    embeds), neutralised last."""
    if not ok:
        return [neutralize(f"⚠️ {text}")[:limit]]
    if sources:
        text += "\n\n**Sources**\n" + "\n".join(
            f"- {' '.join(s.title.split()) or display_url(s.url)} <{display_url(s.url)}>" for s in sources)
    return split_message(neutralize(text), limit)


@dataclass(frozen=True)
class Card:
    title: str
    url: str
    description: str


def page_cards(sources: list[Source], most: int = 3) -> list[Card]:
    """Cards (embeds) for the pages with something to show beyond their title."""
    return [Card(neutralize(s.title)[:256] or display_url(s.url), display_url(s.url), neutralize(s.summary))
            for s in sources if s.summary][:most]


# --- The answer while it is written, and its buttons ---------------------------------------------

STOP_TEMPLATE = r"zennbot:stop:(?P<run_id>[0-9a-f]{1,64})"
FEEDBACK_TEMPLATE = r"zennbot:fb:(?P<value>good|bad):(?P<channel_id>[0-9]{1,20})"


def stop_custom_id(run_id: str) -> str:
    return f"zennbot:stop:{run_id}"


def feedback_custom_id(value: str, channel_id: int) -> str:
    """The 👍/👎 button of an answer in channel (thread) `channel_id`; `value` is "good" or "bad"."""
    return f"zennbot:fb:{value}:{channel_id}"


def may_stop(presser: str, asker: str | None, manages_messages: bool) -> bool:
    """Only the person who asked, or someone allowed to manage messages there, stops a run."""
    return asker is not None and (presser == asker or manages_messages)


class Buttons(Enum):
    NONE = "none"
    STOP = "stop"  # while the run works
    FEEDBACK = "feedback"  # 👍 / 👎 on a finished answer


@dataclass(frozen=True)
class Part:
    """One Discord message as it should look: text, buttons, page cards."""

    content: str
    buttons: Buttons = Buttons.NONE
    cards: tuple[Card, ...] = ()


def live_parts(progress: str, answer_so_far: str, limit: int = MESSAGE_LIMIT) -> list[Part]:
    """The messages of a run still working: its progress line until the answer starts, then the
    answer so far split like the final one (fences closed and reopened); Stop on the last."""
    texts = (split_message(neutralize(answer_so_far), limit) if answer_so_far.strip()
             else [neutralize(f"⏳ {progress} …")[:limit]])
    return [Part(t) for t in texts[:-1]] + [Part(texts[-1], Buttons.STOP)]


def final_parts(text: str, sources: list[Source], ok: bool, stopped: bool = False,
                limit: int = MESSAGE_LIMIT) -> list[Part]:
    """The messages a finished run leaves: exactly `answer_messages`, with the page cards and
    👍/👎 on the last of a good answer; a stopped or failed run leaves its one sentence."""
    if stopped:
        return [Part(neutralize(f"⏹️ {text}")[:limit])]
    texts = answer_messages(text, sources, ok, limit)
    if not ok:
        return [Part(t) for t in texts]
    return [Part(t) for t in texts[:-1]] + [Part(texts[-1], Buttons.FEEDBACK, tuple(page_cards(sources)))]
