"""Assembles follows and digests from the settings and a running runtime."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel

from agent.zenn_client import ZennHttp
from agent.zenn_feeds import ZennFollowing
from bot.digest.builder import DigestBuilder
from bot.digest.commands import FollowCommands, FollowLimits
from bot.digest.feeds import FeedPoller
from bot.digest.runner import DigestPoster, DigestRunner
from bot.runtime import Runtime
from bot.settings import Settings


@dataclass
class Digests:
    zenn: ZennFollowing
    commands: FollowCommands
    runner: DigestRunner


def open_digests(settings: Settings, runtime: Runtime, *, model: BaseChatModel | None = None,
                 clock: Callable[[], float] = time.time, posters: dict[str, DigestPoster] | None = None,
                 zenn: ZennHttp | None = None) -> Digests:
    """Follows and digests over the runtime's store, service and HTTP client (through the guard
    proxy). `model` writes the summaries (default: the agent's); `clock` is for tests.
    Posters are added per platform as adapters start (`runner.posters[platform] = poster`)."""
    following = ZennFollowing(zenn or _zenn_http(runtime))
    store = runtime.store
    builder = DigestBuilder(store, following, model or runtime.model, clock,
                            token_budget=settings.zennbot_daily_token_budget,
                            max_items=settings.zennbot_digest_max_items)
    runner = DigestRunner(store, builder, FeedPoller(store, following, clock), dict(posters or {}), runtime.service,
                          clock, weekly_empty_note=settings.zennbot_digest_weekly_empty_note)
    commands = FollowCommands(store, following, clock, FollowLimits(settings.zennbot_follows_per_channel,
                                                               settings.zennbot_follows_per_workspace,
                                                               settings.zennbot_digest_tz))
    return Digests(following, commands, runner)


def _zenn_http(runtime: Runtime) -> ZennHttp:
    """The process's one shared Zenn client (the page reader's): one pace for everything."""
    return runtime.browsing.reader.zenn.http
