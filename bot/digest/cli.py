"""`zennbot follows` and `zennbot digest`: follows and digests from the command line."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from bot.digest.runner import DigestPoster, next_run
from bot.digest.targets import Target
from bot.settings import Settings
from bot.store import open_store

MakePoster = Callable[[Settings, str], Awaitable[tuple[DigestPoster, Callable[[], Awaitable[None]]]]]


async def print_follows(settings: Settings) -> int:
    """Every follow, by channel, with the channel's schedule and its next digest."""
    store = await open_store(settings)
    try:
        channels = {(c.platform, c.channel_id): c for c in await store.digest_channels()}
        follows = await store.list_follows()
    finally:
        await store.close()
    if not follows:
        print("No channel follows anything yet (/zenn follow in Discord or Slack).")
        return 0
    now = time.time()
    for (platform, channel_id), channel in channels.items():
        local = next_run(channel, now).astimezone(ZoneInfo(channel.tz)).strftime("%Y-%m-%d %H:%M")
        print(f"{platform} {channel_id} ({channel.workspace}): {channel.every} at {channel.at} {channel.tz}; "
              f"next digest {local}")
        for follow in follows:
            if (follow.platform, follow.channel_id) == (platform, channel_id):
                print(f"  {Target.from_key(follow.target).label(follow.display)}  [{follow.target}]")
    return 0


async def digest_command(settings: Settings, channel_id: str, platform: str | None, *, now: bool,
                         dry_run: bool, make_poster: MakePoster) -> int:
    """Post the channel's due digest if it is not done (as the running bot would), or with
    `now` one on demand covering everything since the last; `dry_run` prints it instead.
    `make_poster(settings, platform)` gives the platform's poster and how to close it."""
    from bot.digest.setup import open_digests
    from bot.runtime import open_runtime

    async with await open_runtime(settings) as runtime:
        channels = [c for c in await runtime.store.digest_channels()
                    if c.channel_id == channel_id and platform in (None, c.platform)]
        if len(channels) != 1:
            print(f"No channel {channel_id} follows anything." if not channels else
                  f"Channel {channel_id} is on several platforms; say which with --platform.")
            return 2
        channel = channels[0]
        digests = open_digests(settings, runtime)
        follows = await runtime.store.list_follows(channel.platform, channel.channel_id)
        feeds = [Target.from_key(f.target).feed_path for f in follows]
        await digests.runner.poller.poll(feeds)
        if dry_run:
            last = await runtime.store.last_digest(channel.platform, channel.channel_id)
            until = time.time()
            since = last.until if last else until - (7 if channel.every == "weekly" else 1) * 86400
            digest = await digests.runner.builder.build(channel, follows, "dry-run", since, until)
            print(digest.as_text() if digest.items else
                  f"Nothing new since {dt.datetime.fromtimestamp(since, dt.UTC):%Y-%m-%d %H:%M} UTC.")
            return 0
        poster, close = await make_poster(settings, channel.platform)
        try:
            digests.runner.posters[channel.platform] = poster
            outcome = await (digests.runner.run_now(channel, follows) if now else
                             digests.runner.run_due(channel, follows))
        finally:
            await close()
        print({"posted": "Posted.", "empty": "Nothing new: nothing posted.", "done": "Already posted.",
               "held": "Another process is posting it.", "not due": "Not due yet (the first digest comes at "
               "the first scheduled time after the first follow).",
               "failed": "Could not post it; the log says why."}.get(outcome, outcome))
        return 0 if outcome != "failed" else 1

