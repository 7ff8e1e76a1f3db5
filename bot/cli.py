"""The `zennbot` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.llm import MissingApiKey, require_api_key
from bot.settings import Settings
from bot.store import StoreUnavailable

log = logging.getLogger("zennbot")


def _bench(argv: list[str]) -> int:
    """The benchmarks live beside the product in a checkout (`bench/`), not in the installed
    package: found on the path, or next to this package in a source checkout."""
    checkout = Path(__file__).resolve().parents[1]
    if importlib.util.find_spec("bench") is None and (checkout / "bench" / "cli.py").is_file():
        sys.path.insert(0, str(checkout))
    try:
        from bench.cli import main as bench_main
    except ImportError:
        print("The benchmarks come with a source checkout: run `make bench` (or `zennbot bench`) there.")
        return 2
    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zennbot", description="A research bot that reads the web for a team.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="start the configured adapters (Discord, Slack), else the console chat")
    chat = commands.add_parser("chat", help="chat in the console")
    chat.add_argument("--thread", default="default", help="conversation name (history is kept per name)")
    ask = commands.add_parser("ask", help="ask one question and print the answer")
    ask.add_argument("question")
    ask.add_argument("--thread", default="default")
    read = commands.add_parser("read", help="print exactly what the agent sees for a URL")
    read.add_argument("url")
    read.add_argument("--part", type=int, default=1)
    bench = commands.add_parser("bench", add_help=False,
                                help="measure cost, speed and reading quality, from a checkout (zennbot bench --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    stats = commands.add_parser("stats", help="tokens used per day, platform and thread; the answers' feedback")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser("follows", help="list every channel's follows and when its next digest goes out")
    digest = commands.add_parser("digest", help="post a channel's due digest now if it was not posted; --now: one on demand")
    digest.add_argument("--channel", required=True, help="the channel id (Discord channel id or Slack channel id)")
    digest.add_argument("--platform", choices=("discord", "slack"), help="when the id could be either")
    digest.add_argument("--now", action="store_true", help="build one now: everything since the last digest")
    digest.add_argument("--dry-run", action="store_true", help="print the digest instead of posting it (nothing is claimed)")
    commands.add_parser("migrate", help="create or update the database's tables, then exit (safe while replicas run)")
    commands.add_parser("discord-invite", help="print the URL that invites the bot to a Discord server")
    raw = sys.argv[1:] if argv is None else argv
    # `zennbot bench …` options (--help included) are the benchmarks' own parser's.
    args = (argparse.Namespace(command="bench", bench_args=raw[1:]) if raw[:1] == ["bench"]
            else parser.parse_args(raw))

    settings = Settings()
    command = args.command or "run"
    level = settings.zennbot_log_level.upper()
    if command in ("chat", "ask", "read", "bench", "stats", "follows", "digest") and "zennbot_log_level" not in settings.model_fields_set:
        level = "WARNING"  # in a terminal, the progress lines say what happens
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "discord.gateway", "slack_bolt", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # SIGTERM stops every command as Ctrl-C does (the async commands handle both more gently).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if command == "bench":
            return _bench(args.bench_args)
        if command == "discord-invite":
            from adapters.discord.bot import invite_url

            if not settings.discord_application_id:
                print("Set DISCORD_APPLICATION_ID (the application id from the Discord developer portal).")
                return 2
            print(invite_url(settings.discord_application_id))
            return 0
        if command == "migrate":
            return asyncio.run(_migrate(settings))
        if command == "follows":
            from bot.digest.cli import print_follows

            return asyncio.run(print_follows(settings))
        if command == "digest":
            from bot.digest.cli import digest_command

            return asyncio.run(digest_command(settings, args.channel, args.platform, now=args.now,
                                              dry_run=args.dry_run, make_poster=_digest_poster))
        if command == "read":
            return asyncio.run(_read(settings, args.url, args.part))
        if command == "stats":
            from bot.stats import print_stats

            return asyncio.run(print_stats(settings, as_json=args.json))
        if command in ("ask", "chat", "run"):  # said before anything heavy is loaded
            require_api_key(settings.zennbot_model, settings.google_key)
        if command == "ask":
            return asyncio.run(_ask(settings, args.thread, args.question))
        if command == "chat":
            return asyncio.run(_chat(settings, args.thread))
        return asyncio.run(_run(settings))
    except MissingApiKey as exc:
        print(exc, file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        where = "PostgreSQL (ZENNBOT_DATABASE_URL)" if settings.zennbot_database_url else settings.zennbot_db
        print(f"The database {where} is unavailable ({exc.reason}).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _migrate(settings: Settings) -> int:
    """Bring the schema up to date on its own, e.g. before starting replicas (they also do it
    at start, one at a time)."""
    from bot.store import open_store

    store = await open_store(settings)
    await store.close()
    print("PostgreSQL" if settings.zennbot_database_url else f"SQLite {settings.zennbot_db}", "is up to date.")
    return 0


async def _digest_poster(settings: Settings, platform: str):
    """The platform's digest poster for a one-off post, and how to close it."""
    if platform == "slack":
        from slack_sdk.web.async_client import AsyncWebClient

        from adapters.slack.digest import SlackDigestPoster

        if settings.slack_bot_token is None:
            raise SystemExit("Set SLACK_BOT_TOKEN to post to Slack.")
        client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url)

        async def close_slack() -> None:
            return None
        return SlackDigestPoster(client), close_slack
    import discord

    from adapters.discord.bot import use_endpoints
    from adapters.discord.digest import DiscordDigestPoster

    if settings.discord_token is None:
        raise SystemExit("Set DISCORD_TOKEN to post to Discord.")
    use_endpoints(settings)
    client = discord.Client(intents=discord.Intents.none(), allowed_mentions=discord.AllowedMentions.none())
    await client.login(settings.discord_token.get_secret_value())
    return DiscordDigestPoster(client, wait_until_ready=False), client.close


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def _until_signal(work: Awaitable[int], on_stop: Callable[[], Awaitable[None]] | None = None) -> int:
    """Run `work` until it ends or SIGINT/SIGTERM arrives. On a signal, `on_stop()` lets runs
    in progress finish within the shutdown grace (their users are told if they cannot), then
    whatever `work` still waits for (input, a lease) is cancelled (exit code 0)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("stopping")
            if on_stop is not None:
                await on_stop()
            # the answer cut short by on_stop is being printed: give it that moment, no more
            await asyncio.wait([task], timeout=1.0)
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:  # stopped while waiting for input: a clean stop
            return 0
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _read(settings: Settings, url: str, part: int) -> int:
    from agent.tools import build_tools
    from bot.runtime import open_browsing

    browsing = await open_browsing(settings)

    async def read() -> int:
        read_page = next(t for t in build_tools(browsing.reader) if t.name == "read_page")
        print(await read_page.ainvoke({"url": url, "part": part}))
        return 0

    try:
        return await _until_signal(read())
    finally:
        await browsing.close()


async def _ask(settings: Settings, thread: str, question: str) -> int:
    from adapters.console import acknowledge_lost_run, ask
    from bot.recovery import recover_lost_runs
    from bot.runtime import open_runtime

    async with await open_runtime(settings) as runtime:
        async def work() -> int:
            await recover_lost_runs(runtime.store, "console", acknowledge_lost_run)
            reply = await ask(runtime.service, thread, question)
            return 0 if reply.ok else 1

        return await _until_signal(work(), lambda: runtime.service.close(settings.zennbot_shutdown_grace))


async def _chat(settings: Settings, thread: str) -> int:
    from adapters.console import acknowledge_lost_run, chat
    from bot.recovery import recover_lost_runs
    from bot.runtime import open_runtime

    async with await open_runtime(settings) as runtime:
        async def work() -> int:
            await recover_lost_runs(runtime.store, "console", acknowledge_lost_run)
            await chat(runtime.service, thread)
            return 0

        return await _until_signal(work(), lambda: runtime.service.close(settings.zennbot_shutdown_grace))


async def _run(settings: Settings) -> int:
    """Run every configured adapter until SIGINT/SIGTERM; the console when none is configured."""
    from bot.runtime import open_runtime

    runtime = await open_runtime(settings)
    health = None
    adapters = []
    digests = None
    if settings.discord_enabled or settings.slack_mode:
        from bot.digest.setup import open_digests

        digests = open_digests(settings, runtime)
    follows = digests.commands if digests else None
    if settings.discord_enabled:
        from adapters.discord.bot import DiscordAdapter

        adapters.append(DiscordAdapter(settings, runtime.service, follows))
    if settings.slack_mode:
        from adapters.slack.app import SlackAdapter

        adapters.append(SlackAdapter(settings, runtime.service, follows))
    try:
        if settings.zennbot_health_port is not None:
            from bot.health import HealthServer, readiness_checks

            server = HealthServer(readiness_checks(runtime.store, runtime.browsing.browser),
                                  settings.zennbot_health_host, settings.zennbot_health_port)
            await server.start()
            health = server
        if not adapters:
            from adapters.console import acknowledge_lost_run, chat
            from bot.recovery import recover_lost_runs

            log.info("no Discord or Slack settings: starting the console chat")

            async def console() -> int:
                await recover_lost_runs(runtime.store, "console", acknowledge_lost_run)
                await chat(runtime.service, "default")
                return 0

            return await _until_signal(console(), lambda: runtime.service.close(settings.zennbot_shutdown_grace))
        from bot.recovery import recover_in_background

        # Lost runs of the platforms served here: rolled back and acknowledged while serving.
        recoveries = [asyncio.create_task(recover_in_background(runtime.store, adapter.platform,
                                                                adapter.acknowledge_lost_run))
                      for adapter in adapters]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(adapter.start(), name=type(adapter).__name__) for adapter in adapters]
        if digests is not None and settings.zennbot_digests:
            # Digests of the platforms served here; a digest missed while down goes out now, once.
            digests.runner.posters.update({adapter.platform: adapter.digest_poster() for adapter in adapters})
            recoveries.append(asyncio.create_task(digests.runner.run_forever(), name="digests"))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [task for task in done if task is not stopper and task.exception()]
        for task in failed:
            log.error("%s stopped: %s", task.get_name(), task.exception())
        log.info("shutting down")
        for task in recoveries:
            task.cancel()
        await runtime.service.close(settings.zennbot_shutdown_grace)
        for adapter in adapters:
            await adapter.close()
        for task in [*tasks, *recoveries]:
            task.cancel()
        await asyncio.gather(*tasks, *recoveries, return_exceptions=True)
        return 1 if failed else 0
    finally:
        if health is not None:
            await health.close()
        await runtime.close(grace=0)
