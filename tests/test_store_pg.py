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

from agent.pages import CachedPage
from bot.store_pg import PgStore
from tests.pg import shared_server


@pytest.fixture
def database_url() -> str:
    return shared_server().new_database()


def _rows(url: str, table: str) -> set[tuple]:
    with psycopg.connect(url) as db:
        columns = {"checkpoints": "checkpoint_id", "checkpoint_blobs": "channel, version",
                   "checkpoint_writes": "checkpoint_id, task_id, idx"}[table]
        return set(db.execute(f"SELECT {columns} FROM {table}").fetchall())


async def test_replicas_starting_at_once_on_an_empty_database_all_set_it_up(database_url, tmp_path):
    async def migrate() -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "migrate", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ZENNBOT_DATABASE_URL": database_url, "ZENNBOT_DB": str(tmp_path / "unused.db")})
        out, err = await process.communicate()
        return process.returncode, out.decode() + err.decode()

    results = await asyncio.gather(*(migrate() for _ in range(6)))
    assert [code for code, _ in results] == [0] * 6, [output for _, output in results]
    assert all("PostgreSQL is up to date." in output and "Traceback" not in output for _, output in results)
    assert not (tmp_path / "unused.db").exists()
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT count(*) FROM zennbot_migrations").fetchone()[0] == 1
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
