"""Building blocks for tests: the replica, settings on a temporary database, a runtime with a
scripted model, and scripted-model policies that answer from what the tools returned."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from contextlib import asynccontextmanager
from pathlib import Path

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from agent.urlguard import UrlPolicy
from bench.scripted_model import ScriptedChatModel, current_turn, tool_call
from bot.runtime import Runtime, open_runtime
from bot.settings import Settings
from tests.pg import on_postgres, shared_server

TRUSTED_REPLICA = UrlPolicy(trusted_addresses=frozenset({ipaddress.ip_address("127.0.0.1")}))
URL = re.compile(r"https?://[^\s\]\)」”]+")
_DATABASES: dict[str, str] = {}  # tmp_path -> PostgreSQL database URL
ROW = re.compile(r"^(\d+) \| (\d+) \| [^|]* \| [^|]* \| (.+?) \| (\S+)$", re.M)


def make_settings(tmp_path: Path, zenn_url: str = "https://zenn.dev", **overrides) -> Settings:
    """Settings on the test's store: a SQLite file in `tmp_path`, or in the PostgreSQL run
    (`ZENNBOT_TEST_STORE=postgres`) a database of its own on the test server, the same one for
    every call with the same `tmp_path` (a restart finds its data)."""
    values = dict(zennbot_db=str(tmp_path / "zennbot.db"), zenn_base_url=zenn_url,
                  zennbot_llm_retry_initial_delay=0.01, zennbot_page_timeout=20.0,
                  zenn_requests_per_second=20.0)  # the replica is local; pacing has tests of its own
    if on_postgres():
        values["zennbot_database_url"] = database_url(tmp_path)
    values.update(overrides)
    return Settings(_env_file=None, **values)


def database_url(tmp_path: Path) -> str:
    """The test's PostgreSQL database (made on first use, one per `tmp_path`)."""
    if str(tmp_path) not in _DATABASES:
        _DATABASES[str(tmp_path)] = shared_server().new_database()
    return _DATABASES[str(tmp_path)]


def store_env(tmp_path: Path, sqlite_file: str = "z.db") -> dict[str, str]:
    """Environment naming the test's store for a `zennbot` subprocess: the SQLite file, plus in
    the PostgreSQL run the test's database (which then takes precedence)."""
    env = {"ZENNBOT_DB": str(tmp_path / sqlite_file)}
    if on_postgres():
        env["ZENNBOT_DATABASE_URL"] = database_url(tmp_path)
    return env


@asynccontextmanager
async def running(settings: Settings, policy_fn=None, model=None, policy: UrlPolicy = TRUSTED_REPLICA):
    model = model or ScriptedChatModel(policy=policy_fn or reading_policy)
    runtime: Runtime = await open_runtime(settings, model=model, policy=policy)
    try:
        yield runtime, model
    finally:
        await runtime.close(grace=1)


def reading_policy(messages: list[BaseMessage]) -> AIMessage:
    """A model that reads the URL of the message (or the last page the thread read) once, then
    answers from the tool result: the Nth most liked article for "N番目", else the page's title."""
    _, human, since = current_turn(messages)
    results = [m for m in since if isinstance(m, ToolMessage)]
    if not results:
        urls = URL.findall(str(human.content)) or _earlier_urls(messages)
        if not urls:
            return AIMessage(content="(no page) " + str(human.content)[:100])
        return tool_call("read_page", url=urls[0])
    result = str(results[-1].content)
    if result.startswith("ERROR"):
        return AIMessage(content=result)
    wanted = re.search(r"(\d+)番目", str(human.content))
    rows = {int(m[1]): m for m in ROW.finditer(result)}
    if wanted and int(wanted[1]) in rows:
        row = rows[int(wanted[1])]
        return AIMessage(content=f"{wanted[1]}番目にいいねが多い記事は「{row[3]}」({row[2]} いいね) です。")
    if rows:
        row = rows[1]
        return AIMessage(content=f"一番いいねが多い記事は「{row[3]}」({row[2]} いいね) です。")
    title = next((line for line in result.splitlines() if line.startswith("# ")), "(no title)")
    return AIMessage(content=f"Read: {title[2:]}")


def _earlier_urls(messages: list[BaseMessage]) -> list[str]:
    """URLs of pages read earlier in the thread, newest first (from the compacted notes)."""
    found: list[str] = []
    for message in reversed(messages):
        if isinstance(message, (ToolMessage, HumanMessage)):
            found += [u for u in URL.findall(str(message.content)) if "/articles/" not in u]
    return found


async def query_rows(settings: Settings, sql: str, params: tuple = ()) -> list[tuple]:
    """The rows a statement (with `?` placeholders) gives in the settings' store, SQLite or
    PostgreSQL; a change is committed. Runs in a thread: a blocking wait on the event loop
    would stop the bot's own writers (in this process) from finishing the transaction it waits
    for, until the busy timeout."""
    return await asyncio.to_thread(_query_rows, settings, sql, params)


def _query_rows(settings: Settings, sql: str, params: tuple) -> list[tuple]:
    if settings.zennbot_database_url is None:
        import sqlite3

        with contextlib.closing(sqlite3.connect(settings.zennbot_db, timeout=60)) as db:
            cursor = db.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
            db.commit()
            return rows
    import psycopg

    with psycopg.connect(settings.zennbot_database_url.get_secret_value()) as db:
        cursor = db.execute(sql.replace("?", "%s"), params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


async def count_rows(settings: Settings, table: str, thread_id: str | None = None) -> int:
    """Rows of a table (of one thread) in the settings' store. LangGraph names the checkpoint
    writes table `writes` in SQLite and `checkpoint_writes` in PostgreSQL."""
    where, params = ("", ()) if thread_id is None else (" WHERE thread_id = ?", (thread_id,))
    if settings.zennbot_database_url is not None:
        table = {"writes": "checkpoint_writes"}.get(table, table)
    return (await query_rows(settings, f"SELECT COUNT(*) FROM {table}{where}", params))[0][0]


SLACK_LISTENING = re.compile(rb"Slack: listening on port (\d+)")


async def reported_port(stream, pattern: re.Pattern[bytes] = SLACK_LISTENING, timeout: float = 120) -> int:
    """The port a subprocess says it bound (servers bind port 0 and report it: a port picked
    and released by the test could be taken by another process in between). `stream` is the
    subprocess's stderr pipe, or the path of its log file."""

    async def scan() -> int:
        if isinstance(stream, Path):
            while not (match := pattern.search(stream.read_bytes())):
                await asyncio.sleep(0.05)
            return int(match[1])
        while line := await stream.readline():
            if match := pattern.search(line):
                return int(match[1])
        raise AssertionError("the process ended without reporting its port")
    return await asyncio.wait_for(scan(), timeout)
