"""Follows and digests on Discord: `/zenn follow|unfollow|following` and the digest poster.

A digest is one message: a heading and one embed per item (title linking to the article,
author and counts, the two-line summary), the note in the last embed's footer; a public thread
opened under it holds the conversation about it (its history begins with the digest). Only
members with Manage Channels, or one of `DISCORD_FOLLOW_ROLES`, may change a channel's follows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from adapters.discord import rules
from bot.digest.builder import Digest, counts
from bot.digest.runner import PostedDigest

if TYPE_CHECKING:
    from adapters.discord.bot import DiscordAdapter

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()
NOT_ALLOWED = ("Only members who can manage this channel (or have a role the bot's admin chose) can change "
               "what it follows.")
THREAD_EXISTS = 160004  # Discord: a thread was already started from this message
EMBED_DESCRIPTION = 400  # characters of an item's embed: author, counts, two short lines


def digest_embeds(digest: Digest) -> list[dict]:
    """The digest's items as embeds (at most 10, well within 6,000 characters in all)."""
    embeds = []
    for number, item in enumerate(digest.items[:10], 1):
        lines = [f"{item.author} · {counts(item)}", *item.summary.splitlines()]
        embeds.append({"title": f"{number}. {item.title}"[:256], "url": item.url,
                       "description": "\n".join(lines)[:EMBED_DESCRIPTION]})
    if embeds:
        embeds[-1]["footer"] = {"text": digest.note[:500]}
    return embeds


def digest_content(digest: Digest) -> str:
    return f"**{digest.heading}**\n{', '.join(digest.follows)}"[:1900]


class DiscordDigestPoster:
    platform = "discord"

    def __init__(self, client: discord.Client, *, wait_until_ready: bool = True) -> None:
        """`wait_until_ready` False: the client is logged in for REST only (`zennbot digest`)."""
        self.client = client
        self.wait = wait_until_ready

    async def post(self, digest: Digest, nonce: str, again: bool = False) -> PostedDigest:
        """`again` changes nothing here: Discord returns the message already posted with the same
        `nonce` (discord.py sends it with `enforce_nonce`)."""
        if self.wait:
            async with asyncio.timeout(60):
                await self.client.wait_until_ready()
        channel = self.client.get_partial_messageable(int(digest.channel_id))
        message = await channel.send(digest_content(digest),
                                     embeds=[discord.Embed.from_dict(e) for e in digest_embeds(digest)],
                                     nonce=nonce, allowed_mentions=NO_PINGS)
        try:
            # through REST: the message may come from a channel not in the cache (no guild attached)
            thread = await self.client.http.start_thread_with_message(
                message.channel.id, message.id, name=rules.thread_name(digest.heading), auto_archive_duration=1440)
            thread_id = int(thread["id"])
        except discord.HTTPException as exc:
            if exc.code != THREAD_EXISTS:  # no permission: the digest stands without its thread
                log.info("Discord: no thread under the digest: %s", exc)
                return PostedDigest(json.dumps({"channel_id": digest.channel_id, "message_id": message.id}), "")
            thread_id = message.id  # a message's thread has the message's id
        return PostedDigest(json.dumps({"channel_id": digest.channel_id, "message_id": message.id,
                                        "thread_id": thread_id}), rules.conversation_id(thread_id))

    async def post_line(self, digest: Digest, text: str) -> None:
        await self.client.get_partial_messageable(int(digest.channel_id)).send(text, allowed_mentions=NO_PINGS)


def may_change_follows(permissions: discord.Permissions, role_ids: set[int], follow_roles: list[str]) -> bool:
    return permissions.manage_channels or bool({str(r) for r in role_ids} & set(follow_roles))


def add_follow_commands(group: app_commands.Group, adapter: DiscordAdapter) -> None:
    """`/zenn follow`, `/zenn unfollow`, `/zenn following` in the `/zenn` group."""

    @group.command(name="follow", description="Post a digest of a Zenn author, topic or publication here")
    @app_commands.describe(target="A Zenn URL (zenn.dev/USER, /topics/NAME, /p/NAME), a name, or trending",
                           every="daily or weekly (Mondays)", at="Local time, HH:MM (default 09:00)",
                           tz="Time zone, e.g. Asia/Tokyo")
    @app_commands.choices(every=[app_commands.Choice(name="daily", value="daily"),
                                 app_commands.Choice(name="weekly", value="weekly")])
    async def follow(interaction: discord.Interaction, target: str, every: str | None = None, at: str | None = None,
                     tz: str | None = None) -> None:
        await adapter_follows(adapter, interaction, "follow", target, every, at, tz)

    @group.command(name="unfollow", description="Stop following a Zenn author, topic or publication here")
    @app_commands.describe(target="What this channel follows (as /zenn following lists it)")
    async def unfollow(interaction: discord.Interaction, target: str) -> None:
        await adapter_follows(adapter, interaction, "unfollow", target)

    @group.command(name="following", description="What this channel follows, and when its digest comes")
    async def following(interaction: discord.Interaction) -> None:
        await adapter_follows(adapter, interaction, "following")


async def adapter_follows(adapter: DiscordAdapter, interaction: discord.Interaction, action: str, target: str = "",
                          every: str | None = None, at: str | None = None, tz: str | None = None) -> None:
    """One follow command: checked, then answered in the channel (a change everyone should see)."""
    from adapters.discord.bot import interaction_incoming

    commands = adapter.follows
    if commands is None:
        await interaction.response.send_message("Follows are not enabled on this bot.", ephemeral=True)
        return
    if not adapter.access.allows(interaction_incoming(interaction)) or interaction.guild_id is None:
        await interaction.response.send_message("This bot is not enabled here.", ephemeral=True)
        return
    roles = {r.id for r in getattr(interaction.user, "roles", [])}
    if action != "following" and not may_change_follows(interaction.permissions, roles,
                                                        adapter.settings.discord_follow_roles):
        await interaction.response.send_message(NOT_ALLOWED, ephemeral=True)
        return
    private = action == "following"  # a change is for everyone to see; a listing only for who asked
    await interaction.response.defer(thinking=True, ephemeral=private)
    channel, server = str(interaction.channel_id), str(interaction.guild_id)
    try:
        if action == "follow":
            text = await commands.follow("discord", server, channel, f"discord:{interaction.user.id}", target,
                                         every, at, tz)
        elif action == "unfollow":
            text = await commands.unfollow("discord", channel, target)
        else:
            text = await commands.following("discord", channel)
    except Exception:  # the deferred "thinking…" must not hang
        log.exception("Discord: /zenn %s failed", action)
        text = "Something went wrong on my side; the details are in the bot's log."
    await interaction.followup.send(text, allowed_mentions=NO_PINGS, ephemeral=private)
