"""The PostgreSQL store on a real server: schema set-up raced by several processes, stores of
different replicas agreeing on events and rate limits, rollback and pruning of LangGraph's
rows. (The rest of its behaviour is the whole suite, run again with ZENNBOT_TEST_STORE=postgres.)"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph

from agent.types import CachedPage
from bot.store.postgres import MIGRATIONS, PgStore, migrate
from tests.forkserver import start_zennbot
from tests.pg import shared_server


@pytest.fixture
def database_url() -> str:
    return shared_server().new_database()


def _rows(url: str, table: str) -> set[tuple]:
    with psycopg.connect(url) as db:
        columns = {"checkpoints": "checkpoint_id", "checkpoint_blobs": "channel, version",
                   "checkpoint_writes": "checkpoint_id, task_id, idx"}[table]
        return set(db.execute(f"SELECT {columns} FROM {table}").fetchall())


async def test_concurrent_set_ups_of_an_empty_database_all_succeed(database_url):
    """Eight set-ups at once, each on its own connections (without the set-up lock, most fail
    with UniqueViolation on LangGraph's and our tables)."""
    results = await asyncio.gather(*(migrate(database_url) for _ in range(8)), return_exceptions=True)
    assert results == [None] * 8
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT count(*) FROM zennbot_migrations").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT count(*) FROM checkpoint_migrations").fetchone()[0] == 10


async def test_replicas_starting_at_once_on_an_empty_database_all_set_it_up(database_url, tmp_path):
    async def migrate() -> tuple[int, str]:
        process = await start_zennbot(
            "migrate", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ZENNBOT_DATABASE_URL": database_url, "ZENNBOT_DB": str(tmp_path / "unused.db")})
        out, err = await process.communicate()
        return process.returncode, out.decode() + err.decode()

    results = await asyncio.gather(*(migrate() for _ in range(6)))
    assert [code for code, _ in results] == [0] * 6, [output for _, output in results]
    assert all("PostgreSQL is up to date." in output and "Traceback" not in output for _, output in results)
    assert not (tmp_path / "unused.db").exists()
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT count(*) FROM zennbot_migrations").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT count(*), count(DISTINCT v) FROM checkpoint_migrations").fetchone() == (10, 10)
        assert db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0


async def test_two_replicas_see_each_event_once_and_share_rate_limits(database_url):
    a, b = await asyncio.gather(PgStore.open(database_url), PgStore.open(database_url))
    try:
        ids = [f"slack:C1:{n}" for n in range(40)]
        fresh = await asyncio.gather(*(store.first_sighting(i) for i in ids for store in (a, b)))
        assert sum(fresh) == 40 and all(fresh[k] != fresh[k + 1] for k in range(0, 80, 2))

        waits = await asyncio.gather(*(store.rate_wait("user:u1", 3, 60) for _ in range(4) for store in (a, b)))
        assert sorted(w == 0 for w in waits) == [False] * 5 + [True] * 3
        assert all(0 < w <= 60 for w in waits if w)
        assert await a.rate_wait("user:u2", 3, 60) == 0  # per key
        assert await b.rate_wait("user:u3", 1, 0.2) == 0
        assert await a.rate_wait("user:u3", 1, 0.2) > 0
        await asyncio.sleep(0.3)
        assert await a.rate_wait("user:u3", 1, 0.2) == 0  # the window slid on

        await a.claim_thread("slack:T:C:1.0")
        assert await b.owns_thread("slack:T:C:1.0") and not await b.owns_thread("slack:T:C:2.0")
    finally:
        await a.close()
        await b.close()


async def test_page_cache_keeps_text_postgres_cannot_store(database_url):
    store = await PgStore.open(database_url)
    try:
        await store.put_page(CachedPage("https://x.test/a", "A\x00B", "text\x00", "browser", "", time.time()))
        await store.put_page(CachedPage("https://x.test/b", "old", "t", "browser", "", time.time() - 3600))
        page = await store.get_page("https://x.test/a", 60)
        assert page is not None and page.title == "AB" and page.text == "text"
        assert await store.get_page("https://x.test/b", 60) is None  # older than max_age
        assert await store.get_page("https://x.test/b", 7200) is not None
    finally:
        await store.close()


def _echo_graph(store: PgStore):
    def reply(state: MessagesState) -> dict:
        asked = [m.content for m in state["messages"] if isinstance(m, HumanMessage)]
        if asked[-1] == "fail":
            raise RuntimeError("the run failed")
        return {"messages": [AIMessage(f"seen: {asked}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    return builder.compile(checkpointer=store.checkpointer)


async def test_rollback_leaves_nothing_of_the_failed_run_and_prune_keeps_the_history(database_url):
    store = await PgStore.open(database_url)
    graph, config = _echo_graph(store), {"configurable": {"thread_id": "t1"}}
    try:
        await graph.ainvoke({"messages": [HumanMessage("one")]}, config)
        before = await store.latest_checkpoint("t1")
        rows = {table: _rows(database_url, table) for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")}
        with pytest.raises(RuntimeError):
            await graph.ainvoke({"messages": [HumanMessage("fail")]}, config)
        assert _rows(database_url, "checkpoint_blobs") > rows["checkpoint_blobs"]  # the failed run left rows

        await store.rollback_checkpoints("t1", before)
        assert {table: _rows(database_url, table) for table in rows} == rows
        state = await graph.aget_state(config)
        assert [m.content for m in state.values["messages"]] == ["one", "seen: ['one']"]

        result = await graph.ainvoke({"messages": [HumanMessage("two")]}, config)
        assert result["messages"][-1].content == "seen: ['one', 'two']"
        await store.prune_checkpoints("t1")
        assert len(_rows(database_url, "checkpoints")) == 1 and _rows(database_url, "checkpoint_writes") == set()
        state = await graph.aget_state(config)
        assert [m.content for m in state.values["messages"]] == ["one", "seen: ['one']", "two", "seen: ['one', 'two']"]
        result = await graph.ainvoke({"messages": [HumanMessage("three")]}, config)
        assert result["messages"][-1].content == "seen: ['one', 'two', 'three']"

        await store.rollback_checkpoints("t1", None)  # a new thread's failed first run
        assert all(_rows(database_url, table) == set() for table in rows)
        assert (await graph.aget_state(config)).values == {}
    finally:
        await store.close()


async def test_turn_lock_across_replicas_and_lost_runs(database_url):
    from bot.store import RunRecord, StoreUnavailable

    a, b = await PgStore.open(database_url), await PgStore.open(database_url)
    order: list[str] = []
    try:
        async def hold(store: PgStore, name: str, hold_for: float) -> None:
            async with store.turn_lock("t"):
                order.append(f"{name} in")
                await asyncio.sleep(hold_for)
                order.append(f"{name} out")

        first = asyncio.create_task(hold(a, "a", 0.3))
        await asyncio.sleep(0.1)
        await asyncio.gather(first, hold(b, "b", 0), hold(a, "a2", 0), hold(b, "b2", 0))
        assert order[:2] == ["a in", "a out"]
        assert all(order[i].endswith(" in") and order[i + 1] == order[i].replace(" in", " out")
                   for i in range(0, len(order), 2)) and len(order) == 8

        with pytest.raises(RuntimeError):
            await a.begin_run(RunRecord("t", "slack", "u", "q", None))
        async with a.turn_lock("t"):
            await a.begin_run(RunRecord("t", "slack", "u", "q\x00?", "cp-1", "where", run_id="r1"))
            assert await b.unfinished_runs() == []  # a live replica works on it
        lost = await b.unfinished_runs("slack")
        assert [(r.run_id, r.question, r.checkpoint, r.reply_to) for r in lost] == [("r1", "q?", "cp-1", "where")]
        assert await b.unfinished_runs("discord") == []
        await b.finish_run("r1")
        assert await a.unfinished_runs() == []
    finally:
        await a.close()
        await b.close()
    with pytest.raises(StoreUnavailable):
        await a.ping()


HOLDER = """
import asyncio, sys
from bot.store import RunRecord
from bot.store.postgres import MIGRATIONS, PgStore, migrate

async def main(url):
    store = await PgStore.open(url)
    async with store.turn_lock("t"):
        await store.begin_run(RunRecord("t", "console", "u", "the lost question", "cp-1", "where"))
        print("holding", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_killed_replica_frees_its_thread_at_once_and_its_run_is_lost(database_url):
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER, database_url,
                                                  stdout=asyncio.subprocess.PIPE)
    store = await PgStore.open(database_url)
    try:
        assert (await asyncio.wait_for(holder.stdout.readline(), 60)).strip() == b"holding"
        assert await store.unfinished_runs() == []
        holder.kill()
        await holder.wait()
        async with store.turn_lock("t"):  # taken once the server notices the connection is gone
            lost = await store.unfinished_runs()
        assert [(r.question, r.checkpoint) for r in lost] == [("the lost question", "cp-1")]
    finally:
        if holder.returncode is None:
            holder.kill()
        await store.close()


async def test_token_usage_and_feedback_add_up_over_replicas(database_url):
    from agent.types import TokenUsage
    from bot.store import utc_day

    a, b = await PgStore.open(database_url), await PgStore.open(database_url)
    try:
        await a.record_usage("r1", "slack", "T1", "slack:T1:C1:1.0", [TokenUsage("m", 100, 20)])
        await b.record_usage("r2", "slack", "T1", "slack:T1:C1:2.0", [TokenUsage("m", 50, 5)])
        await b.record_usage("r3", "discord", "G1", "discord:9", [TokenUsage("m", 7, 3)])
        await a.record_usage("r2", "slack", "T1", "slack:T1:C1:2.0", [TokenUsage("m", 60, 5)])  # replaces
        assert await b.tokens_today("slack", "T1") == 185 and await a.tokens_today("slack", "T2") == 0
        by_platform = await a.usage_by("platform")
        assert [(r.key, r.runs, r.input_tokens, r.output_tokens) for r in by_platform] == [
            ("slack", 2, 160, 25), ("discord", 1, 7, 3)]
        assert [r.key for r in await b.usage_by("day")] == [utc_day()]
        with pytest.raises(ValueError):
            await a.usage_by("user_id; DROP TABLE runs")
        await a.record_feedback("slack", "t", "m1", "u1", "good")
        await b.record_feedback("slack", "t", "m1", "u1", "bad")  # a second click replaces the first
        await b.record_feedback("slack", "t", "m1", "u2", "bad")
        assert await a.feedback_counts() == {("slack", "bad"): 2}
    finally:
        await a.close()
        await b.close()


async def test_a_database_of_the_previous_version_gains_the_follow_and_digest_tables(database_url):
    """Migration 1 (follows and digests) on a database that a bot without them set up: its data
    stays, the new tables appear, and the version is recorded once."""
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("CREATE TABLE zennbot_migrations (v INTEGER PRIMARY KEY)")
        db.execute(MIGRATIONS[0])
        db.execute("INSERT INTO zennbot_migrations (v) VALUES (0)")
        db.execute("INSERT INTO bot_threads (thread_id) VALUES ('kept')")
    store = await PgStore.open(database_url)
    try:
        assert await store.owns_thread("kept")
        assert await store.list_follows() == [] and await store.digest_channels() == []
    finally:
        await store.close()
    with psycopg.connect(database_url) as db:
        assert [r[0] for r in db.execute("SELECT v FROM zennbot_migrations ORDER BY v")] == list(range(len(MIGRATIONS)))
