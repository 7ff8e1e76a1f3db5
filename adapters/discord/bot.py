"""The Discord adapter: discord.py 2.x over the service.

Mentions in a text channel open a public thread from the message; every human message in a
thread the bot opened is a turn of that conversation (which threads are the bot's is stored in
SQLite). `/zenn [url] question` defers, then answers as a follow-up. Nothing the bot sends can
ping anyone: `AllowedMentions.none()` on the client. With `DISCORD_SHARD_COUNT` the client is an
`AutoShardedClient` running the shards `DISCORD_SHARD_IDS` (all when empty); replicas split them.

Answers are streamed (`adapters/discord/stream.py`): a progress line with a Stop button, then
the answer edited in as it is written, at most about once a second per channel; the final edit
leaves the whole answer with 👍/👎 (`adapters/discord/buttons.py`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import discord
import yarl
from discord import app_commands

from adapters.discord import buttons
from adapters.discord import rules
from adapters.discord.digest import DiscordDigestPoster, add_follow_commands
from adapters.discord.stream import EDIT_WINDOW_PASSED, LiveAnswer, Send, Throttles
from adapters.errors import AdapterError
from bot.recovery import short_question
from bot.digest.commands import FollowCommands
from bot.messages import Ask
from bot.service import ConversationService, friendly_error
from bot.settings import Settings
from bot.store import RunRecord, StoreUnavailable

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()


def invite_url(application_id: str) -> str:
    permissions = (discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                                       create_public_threads=True, read_message_history=True, embed_links=True,
                                       use_application_commands=True)).value
    return (f"https://discord.com/oauth2/authorize?client_id={application_id}"
            f"&permissions={permissions}&scope=bot%20applications.commands")


def use_endpoints(settings: Settings) -> None:
    """Point discord.py at the configured REST and gateway endpoints (proxies, tests)."""
    discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def incoming(message: discord.Message) -> rules.Incoming:
    channel = message.channel
    if isinstance(channel, discord.Thread):
        kind = "forum_thread" if isinstance(channel.parent, discord.ForumChannel) else "thread"
    elif isinstance(channel, discord.TextChannel):
        kind = "text"
    elif isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
        kind = "dm"
    elif isinstance(channel, discord.PartialMessageable) and channel.type in (
            None, discord.ChannelType.public_thread, discord.ChannelType.private_thread):
        kind = "thread"  # a thread not in the cache (after a restart, or archived)
    else:
        kind = "other"
    roles = frozenset(r.id for r in getattr(message.author, "roles", []))
    return rules.Incoming(
        author_id=message.author.id, author_is_bot=message.author.bot, content=message.content,
        mentioned_ids=frozenset(u.id for u in message.mentions), channel_id=channel.id, channel_kind=kind,
        guild_id=message.guild.id if message.guild else None, parent_id=getattr(channel, "parent_id", None),
        role_ids=roles)


def interaction_incoming(interaction: discord.Interaction) -> rules.Incoming:
    """A slash command as the rules see a message (for the allowlists)."""
    channel = interaction.channel
    return rules.Incoming(
        author_id=interaction.user.id, author_is_bot=interaction.user.bot, content="",
        mentioned_ids=frozenset(), channel_id=interaction.channel_id or 0,
        channel_kind="dm" if interaction.guild_id is None else "other", guild_id=interaction.guild_id,
        parent_id=getattr(channel, "parent_id", None),
        role_ids=frozenset(r.id for r in getattr(interaction.user, "roles", [])))


class ZennDiscordClient(discord.Client):
    def __init__(self, adapter: DiscordAdapter, **shards: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=NO_PINGS, **shards)
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(buttons.StopButton, buttons.FeedbackButton)  # they work after a restart
        settings = self.adapter.settings

        zenn = app_commands.Group(name="zenn", description="zennbot: ask about Zenn or a page, follow Zenn")

        @zenn.command(name="ask", description="Ask zennbot about Zenn or a page")
        @app_commands.describe(url="The page to read (optional)", question="What to find out")
        async def ask(interaction: discord.Interaction, url: str = "", question: str = "") -> None:
            await self.adapter.on_command(interaction, url, question)

        add_follow_commands(zenn, self.adapter)

        guild = discord.Object(id=settings.discord_guild_id) if settings.discord_guild_id else None
        self.tree.add_command(zenn, guild=guild)
        try:
            await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            log.warning("Discord: could not sync the /zenn command: %s", exc)

    async def on_ready(self) -> None:
        log.info("Discord: logged in as %s", self.user)

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)


class ZennShardedDiscordClient(ZennDiscordClient, discord.AutoShardedClient):
    """The same client running several shards in one process (`shard_ids` of `shard_count`)."""

    async def on_ready(self) -> None:
        log.info("Discord: logged in as %s, shards %s of %d", self.user, sorted(self.shards), self.shard_count)

    async def close(self) -> None:
        # discord.py's AutoShardedClient.close() fails before login: its queue is made there.
        if hasattr(self, "_AutoShardedClient__queue"):
            await super().close()


def make_client(adapter: DiscordAdapter) -> ZennDiscordClient:
    """A sharded client when DISCORD_SHARD_COUNT is set, else one connection for everything."""
    settings = adapter.settings
    if settings.discord_shard_count is None:
        return ZennDiscordClient(adapter)
    return ZennShardedDiscordClient(adapter, shard_count=settings.discord_shard_count,
                                    shard_ids=settings.discord_shard_ids or None)


class DiscordAdapter:
    platform = "discord"

    def __init__(self, settings: Settings, service: ConversationService, follows: FollowCommands | None = None) -> None:
        self.settings = settings
        self.service = service
        self.follows = follows  # /zenn follow|unfollow|following (None: not enabled)
        self.access = rules.Access(frozenset(settings.discord_allowed_guilds),
                                   frozenset(settings.discord_allowed_channels),
                                   frozenset(settings.discord_allowed_roles))
        use_endpoints(settings)
        self.throttles = Throttles()
        self.answering = 0  # answers being written (each with a typing indicator)
        self.client = make_client(self)

    async def start(self) -> None:
        """Connect and serve until `close()`. Raises `AdapterError` with what to fix when
        Discord refuses the bot."""
        try:
            await self.client.start(self.settings.discord_token.get_secret_value())
        except discord.LoginFailure:
            raise AdapterError("Discord rejected DISCORD_TOKEN: copy the bot's token again "
                               "(Developer Portal → Bot → Reset Token).") from None
        except discord.PrivilegedIntentsRequired:
            raise AdapterError("Discord refused the Message Content intent: enable it in the Developer "
                               "Portal (Bot → Privileged Gateway Intents → Message Content Intent).") from None

    async def close(self) -> None:
        await self.client.close()

    def digest_poster(self) -> DiscordDigestPoster:
        return DiscordDigestPoster(self.client)

    async def on_message(self, message: discord.Message) -> None:
        try:
            bot = self.client.user
            if bot is None:
                return
            data = incoming(message)
            owns = data.channel_kind in ("thread", "forum_thread") and await self.service.owns_thread(
                rules.conversation_id(data.channel_id))
            where = rules.where_to_answer(data, bot.id, bot_owns_channel=owns, access=self.access,
                                          require_mention_in_threads=self.settings.discord_thread_require_mention)
            if where is None:
                return
            question = rules.question_text(message.content, bot.id)
            if where is rules.Where.NEW_THREAD:
                channel = await message.create_thread(name=rules.thread_name(question),
                                                      auto_archive_duration=1440)
            else:
                channel = message.channel
            conversation = rules.conversation_id(channel.id)
            try:
                await self.service.claim_thread(conversation)
            except StoreUnavailable as exc:  # say so in the thread, never a silent drop
                log.error("Discord: %s", exc)
                await channel.send(rules.neutralize("⚠️ " + friendly_error(exc, self.service.limits)))
                return
            await self._answer(channel, Ask(conversation, f"discord:{message.author.id}", question,
                                            platform=self.platform, workspace=str(data.guild_id or ""),
                                            reply_to=_reply_to(channel.id)))
        except Exception:  # one failed answer must not take the client down
            log.exception("Discord: could not answer message %s", message.id)

    async def on_command(self, interaction: discord.Interaction, url: str, question: str) -> None:
        if not self.access.allows(interaction_incoming(interaction)):
            await interaction.response.send_message("This bot is not enabled here.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        try:
            text = f"{url} {question}".strip()
            target: discord.Thread | None = None
            if isinstance(interaction.channel, discord.TextChannel):
                original = await interaction.original_response()
                try:
                    target = await original.create_thread(name=rules.thread_name(text))
                except discord.HTTPException as exc:  # no permission: answer in place
                    log.info("Discord: no thread for /zenn: %s", exc)
            channel_id = target.id if target else interaction.channel_id or 0
            conversation = rules.conversation_id(channel_id)
            await self.service.claim_thread(conversation)
            if target is not None:
                await interaction.followup.send(f"Answering in {target.mention}.", allowed_mentions=NO_PINGS)
            ask = Ask(conversation, f"discord:{interaction.user.id}", text, platform=self.platform,
                      workspace=str(interaction.guild_id or ""), reply_to=_reply_to(channel_id))
            if target is not None:
                await self._answer(target, ask)
            else:
                await self._stream(interaction.followup.send, interaction.channel_id or 0, ask)
        except Exception as exc:  # the deferred "thinking…" must not hang forever
            log.error("Discord: /zenn failed: %s", exc, exc_info=not isinstance(exc, StoreUnavailable))
            await interaction.followup.send(rules.neutralize("⚠️ " + friendly_error(exc, self.service.limits)),
                                            allowed_mentions=NO_PINGS)

    async def _answer(self, channel: discord.abc.Messageable, ask: Ask) -> None:
        """Answer `ask` in `channel`, typing while the run works (`answering` counts them)."""
        self.answering += 1
        try:
            async with channel.typing():
                await self._stream(channel.send, channel.id, ask)
        finally:
            self.answering -= 1

    async def acknowledge_lost_run(self, run: RunRecord) -> None:
        """After a restart: tell the asker of a lost run so in its channel, replacing the message
        the run was writing when there is one."""
        where = json.loads(run.reply_to or "{}")
        if not where.get("channel_id"):
            return
        await self.client.wait_until_ready()
        channel = self.client.get_partial_messageable(int(where["channel_id"]))
        text = rules.neutralize(f"⚠️ I was restarted while answering “{short_question(run)}”, so that "
                                "answer was lost. Please ask again.")
        if where.get("status_id"):
            try:
                await channel.get_partial_message(int(where["status_id"])).edit(
                    content=text, view=None, embeds=[], allowed_mentions=NO_PINGS)
                return
            except discord.HTTPException as exc:
                # Gone (deleted as the answer moved on, and the bot died before recording that)
                # or too old to edit: the asker is told in a new message.
                if not (isinstance(exc, discord.NotFound) or exc.code == EDIT_WINDOW_PASSED):
                    raise
                log.info("Discord: the lost run's message cannot be edited (%s); telling the asker anew", exc.code)
        await channel.send(text, allowed_mentions=NO_PINGS)

    async def _stream(self, send: Send, channel_id: int, ask: Ask) -> None:
        """Stream the answer to `ask` into messages posted through `send`.

        Raises `discord.HTTPException` when not even the final messages can be written."""
        def render(part: rules.Part, run_id: str) -> dict:
            return {"content": part.content, "view": buttons.view_for(part.buttons, run_id, channel_id),
                    "embeds": [discord.Embed(title=c.title, url=c.url, description=c.description)
                               for c in part.cards],
                    "allowed_mentions": NO_PINGS}

        async def record_first(run_id: str, message) -> None:  # if the bot dies now, recovery edits it
            try:
                await self.service.update_reply_to(run_id, _reply_to(channel_id, message.id))
            except StoreUnavailable as exc:
                log.warning("Discord: could not record where the answer is: %s", exc)

        live = LiveAnswer(send, self.throttles.for_channel(channel_id), render, record_first)
        await live.show(self.service.stream(ask))

    async def on_stop(self, interaction: discord.Interaction, run_id: str) -> None:
        """A Stop press: the asker (or someone who manages messages) stops the run; the streamed
        message then says so. Anyone else, or a run that is over, gets a note only they see."""
        asker = self.service.run_owner(run_id)
        if asker is not None and not rules.may_stop(f"discord:{interaction.user.id}", asker,
                                                    interaction.permissions.manage_messages):
            await interaction.response.send_message(buttons.NOT_YOURS, ephemeral=True)
        elif asker is not None and self.service.cancel(run_id):
            log.info("Discord: run %s stopped by %s", run_id, interaction.user.id)
            await interaction.response.defer()
        else:
            await interaction.response.send_message(buttons.NOT_RUNNING, ephemeral=True)

    async def on_feedback(self, interaction: discord.Interaction, channel_id: int, value: str) -> None:
        """A 👍/👎 press, stored with the thread and the message it was given on."""
        message_id = str(interaction.message.id) if interaction.message else ""
        try:
            await self.service.record_feedback("discord", rules.conversation_id(channel_id), message_id,
                                               f"discord:{interaction.user.id}", value)
        except Exception:
            log.exception("Discord: could not store feedback on message %s", message_id)
            await interaction.response.send_message(buttons.NOT_SAVED, ephemeral=True)
            return
        await interaction.response.send_message(buttons.THANKS[value], ephemeral=True)


def _reply_to(channel_id: int, message_id: int | None = None) -> str:
    """Where a lost run is told (see `DiscordAdapter.acknowledge_lost_run`)."""
    return json.dumps({"channel_id": channel_id} | ({"status_id": message_id} if message_id else {}))
