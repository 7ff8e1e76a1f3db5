"""The Discord adapter: discord.py 2.x over the service.

Mentions in a text channel open a public thread from the message; every human message in a
thread the bot opened is a turn of that conversation (which threads are the bot's is stored in
SQLite). `/zenn url question` defers, then answers as a follow-up. Nothing the bot sends can
ping anyone: `AllowedMentions.none()` on the client.
"""

from __future__ import annotations

import json
import logging

import discord
import yarl
from discord import app_commands

from adapters import discord_rules as rules
from adapters.errors import AdapterError
from adapters.status import StatusMessage
from bot.recovery import RunTicket, short_question
from bot.service import ConversationService, Reply, friendly_error
from bot.settings import Settings
from bot.store import RunRecord, Store, StoreUnavailable

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
    def __init__(self, adapter: DiscordAdapter) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=NO_PINGS)
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        settings = self.adapter.settings

        @app_commands.command(name="zenn", description="Ask zennbot about a page")
        @app_commands.describe(url="The page to read", question="What to find out (optional)")
        async def zenn(interaction: discord.Interaction, url: str, question: str = "") -> None:
            await self.adapter.on_command(interaction, url, question)

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


class DiscordAdapter:
    platform = "discord"

    def __init__(self, settings: Settings, service: ConversationService, store: Store) -> None:
        self.settings = settings
        self.service = service
        self.store = store
        self.access = rules.Access(frozenset(settings.discord_allowed_guilds),
                                   frozenset(settings.discord_allowed_channels),
                                   frozenset(settings.discord_allowed_roles))
        use_endpoints(settings)
        self.client = ZennDiscordClient(self)
        self._threads_here: set[str] = set()  # threads claimed by this process, when the database cannot tell

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

    async def on_message(self, message: discord.Message) -> None:
        try:
            bot = self.client.user
            if bot is None:
                return
            data = incoming(message)
            owns = data.channel_kind in ("thread", "forum_thread") and await self._owns_thread(
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
            self._threads_here.add(conversation)
            try:
                await self.store.claim_thread(conversation)
            except StoreUnavailable as exc:  # say so in the thread, never a silent drop
                log.error("Discord: %s", exc)
                await channel.send("⚠️ " + friendly_error(exc, self.service.limits))
                return
            await self._answer(channel, conversation, message.author.id, question)
        except Exception:  # one failed answer must not take the client down
            log.exception("Discord: could not answer message %s", message.id)

    async def _owns_thread(self, conversation: str) -> bool:
        try:
            return await self.store.owns_thread(conversation)
        except StoreUnavailable as exc:
            log.warning("Discord: %s; thread ownership from memory", exc)
            return conversation in self._threads_here

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
            self._threads_here.add(conversation)
            await self.store.claim_thread(conversation)
            if target is not None:
                await interaction.followup.send(f"Answering in {target.mention}.", allowed_mentions=NO_PINGS)
            ticket = RunTicket(self.platform, json.dumps({"channel_id": channel_id}))
            reply = await self.service.handle(conversation, f"discord:{interaction.user.id}", text, ticket=ticket)
            await _post(target.send if target is not None else interaction.followup.send, reply)
        except Exception as exc:  # the deferred "thinking…" must not hang forever
            log.error("Discord: /zenn failed: %s", exc, exc_info=not isinstance(exc, StoreUnavailable))
            await interaction.followup.send("⚠️ " + friendly_error(exc, self.service.limits),
                                            allowed_mentions=NO_PINGS)

    async def _answer(self, channel: discord.abc.Messageable, conversation: str, user_id: int, question: str) -> None:
        ticket = RunTicket(self.platform, json.dumps({"channel_id": channel.id}))

        async def post_status(line: str) -> discord.Message:
            message = await channel.send(line)
            # If the bot dies now, the status message is what recovery ends.
            ticket.reply_to = json.dumps({"channel_id": channel.id, "status_id": message.id})
            try:
                await self.store.update_reply_to(ticket.run_id, ticket.reply_to)
            except StoreUnavailable as exc:
                log.warning("Discord: could not record the status message: %s", exc)
            return message

        status = StatusMessage(post_status, lambda message, line: message.edit(content=line), "⏳")
        async with channel.typing():
            reply = await self.service.handle(conversation, f"discord:{user_id}", question, status.show, ticket)
        await _post(channel.send, reply, status.handle)

    async def acknowledge_lost_run(self, run: RunRecord) -> None:
        """After a restart: tell the asker of a lost run so in its channel, replacing the "⏳"
        status message when there is one."""
        where = json.loads(run.reply_to or "{}")
        if not where.get("channel_id"):
            return
        await self.client.wait_until_ready()
        channel = self.client.get_partial_messageable(int(where["channel_id"]))
        text = (f"⚠️ I was restarted while answering “{short_question(run)}”, so that answer was lost. "
                "Please ask again.")
        if where.get("status_id"):
            await channel.get_partial_message(int(where["status_id"])).edit(content=text, allowed_mentions=NO_PINGS)
        else:
            await channel.send(text, allowed_mentions=NO_PINGS)


async def _post(send, reply: Reply, status: discord.Message | None = None) -> None:
    """Post `reply` through `send` (a channel's or a follow-up's); the first part replaces the
    status message when there is one, the page cards ride on the last part."""
    messages = rules.answer_messages(reply.text, reply.sources, reply.ok)
    embeds = [discord.Embed(title=c.title, url=c.url, description=c.description)
              for c in rules.page_cards(reply.sources)] if reply.ok else []
    if status is not None:
        first, messages = messages[0], messages[1:]
        await status.edit(content=first, embeds=[] if messages else embeds, allowed_mentions=NO_PINGS)
    for index, part in enumerate(messages):
        await send(part, embeds=embeds if index == len(messages) - 1 else [], allowed_mentions=NO_PINGS)
