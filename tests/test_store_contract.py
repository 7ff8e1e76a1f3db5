"""The store contract (`bot.store.base`), checked on both backends with the same tests: one
fixture per backend, as LangGraph's checkpointer conformance suite does. A second store opened
on the same database stands for another process (or replica)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from agent.types import CachedPage, TokenUsage
from bot.store import RunRecord, Store, StoreUnavailable
from bot.store.base import BudgetClaim, FeedEntry, Holder
from tests.store_backends import Backend, postgres_backend, sqlite_backend  # noqa: F401  (fixtures)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


def _config(thread_id: str) -> dict:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def _put_checkpoint(store: Store, thread_id: str) -> str:
    checkpoint = empty_checkpoint()
    await store.checkpointer.aput(_config(thread_id), checkpoint, {"source": "input", "step": 0}, {})
    return checkpoint["id"]


async def _turn_and_run(store: Store, key: str) -> None:
    async with store.turn_lock(f"t-{key}"):
        await store.begin_run(RunRecord(f"t-{key}", "slack", "u", "q", None, "", run_id=f"r-{key}"))
        await store.finish_run(f"r-{key}")


async def _seed_checkpoints(store: Store, key: str) -> None:
    await _put_checkpoint(store, f"c-{key}")
    await _put_checkpoint(store, f"c-{key}")


async def _rollback(store: Store, key: str) -> None:
    oldest = [c async for c in store.checkpointer.alist(_config(f"c-{key}"))][-1]
    await store.rollback_checkpoints(f"c-{key}", oldest.config["configurable"]["checkpoint_id"])


async def _nothing(store: Store, key: str) -> None:
    pass


# Every write of the contract (and the turn lock), as `op(store, unique key)`, with what it
# needs done first (not cancelled).
WRITES: dict[str, tuple[Callable[[Store, str], Awaitable[object]], Callable[[Store, str], Awaitable[object]]]] = {
    "ping": (_nothing, lambda s, k: s.ping()),
    "put_page": (_nothing, lambda s, k: s.put_page(CachedPage(f"https://x.test/{k}", "t", "text", "browser", "", 1e10))),
    "claim_thread": (_nothing, lambda s, k: s.claim_thread(k)),
    "first_sighting": (_nothing, lambda s, k: s.first_sighting(k)),
    "rate_wait": (_nothing, lambda s, k: s.rate_wait(f"user:{k}", 5, 60)),
    "record_usage": (_nothing, lambda s, k: s.record_usage(k, "slack", "T", "t", [TokenUsage("m", 1, 2),
                                                                                   TokenUsage("n", 3, 4)])),
    "record_feedback": (_nothing, lambda s, k: s.record_feedback("slack", "t", k, "u", "good")),
    "queue_run": (_nothing, lambda s, k: s.queue_run(RunRecord(f"t-{k}", "slack", "u", "q", None, "", run_id=k), 60)),
    "update_reply_to": (_nothing, lambda s, k: s.update_reply_to(k, "{}")),
    "finish_run": (_nothing, lambda s, k: s.finish_run(k)),
    "turn_lock_and_run": (_nothing, _turn_and_run),
    "checkpoint_put": (_nothing, lambda s, k: _put_checkpoint(s, f"c-{k}")),
    "rollback_checkpoints": (_seed_checkpoints, _rollback),
    "prune_checkpoints": (_seed_checkpoints, lambda s, k: s.prune_checkpoints(f"c-{k}")),
    "reserve_tokens": (_nothing, lambda s, k: s.reserve_tokens(BudgetClaim(k, "slack", "T", "u", 10), 10**9)),
    "settle_tokens": (lambda s, k: s.reserve_tokens(BudgetClaim(k, "slack", "T", "u", 10), 10**9),
                      lambda s, k: s.settle_tokens(k, 7)),
    "claim_feed_poll": (_nothing, lambda s, k: s.claim_feed_poll(f"/{k}/feed", 1000.0, 900.0, 60.0)),
    "record_feed_poll": (lambda s, k: s.claim_feed_poll(f"/{k}/feed", 1000.0, 900.0, 60.0),
                         lambda s, k: s.record_feed_poll(f"/{k}/feed", '"e"', "", [
                             FeedEntry(f"/{k}/feed", f"https://zenn.dev/a/articles/{k}", "t", "a", 900.0)])),
}


async def _writes_go_on(store: Store, other: Store, key: str, name: str) -> None:
    """The next writes of this process and of another one succeed (each within its own busy
    timeout: a lock left held would make them fail with `StoreUnavailable`), on the connection
    the cancelled write used: the store's own, the checkpointer's, a thread's lease."""
    if "checkpoint" in name:
        await _put_checkpoint(store, f"after-{key}")
        await _put_checkpoint(other, f"other-{key}")
    elif name.startswith("turn_lock"):
        async with other.turn_lock(f"t-{key}"):  # no lease left behind by a cancelled turn
            pass
    else:
        await store.claim_thread(f"after-{key}")
        await other.first_sighting(f"other-{key}")


@pytest.mark.parametrize("name", WRITES)
async def test_a_write_cancelled_at_any_await_leaves_the_store_usable(backend, name):
    """Cancel the write after N event-loop turns, for N = 0, 1, 2, … until it completes first;
    after each cancellation this process and another one write as usual, and nothing is left
    open (a transaction, a lock, a connection out of its pool)."""
    prepare, op = WRITES[name]
    store = await backend.open()
    other = await backend.open(busy_timeout=3.0)
    try:
        for turns in range(10_000):
            key = f"{name}-{turns}-{uuid.uuid4().hex[:6]}"
            await prepare(store, key)
            task = asyncio.create_task(op(store, key))
            for _ in range(turns):
                await asyncio.sleep(0)
            if task.done():
                await task  # it completed before being cancelled: every await point was tried
                break
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.wait_for(_writes_go_on(store, other, key, name), 30)
            await backend.assert_clean(store)
        else:
            raise AssertionError(f"{name} never completed")
    finally:
        await other.close()
        await store.close()
    assert turns > 0


async def test_a_waiting_run_is_abandoned_only_once_its_process_is_gone(backend):
    """A run recorded as waiting for its turn is listed as abandoned when its holder is provably
    gone (a dead process on this host) or its wait ran out; never while its process lives, nor
    once it began (then it is a lost run, if anything) or finished."""
    store = await backend.open()
    dead = await backend.open()
    try:
        gone = await asyncio.create_subprocess_exec("true")
        await gone.wait()
        dead._me = Holder(dead._me.host, gone.pid, "its-token")  # noqa: SLF001  (a process that died)
        await store.queue_run(RunRecord("t1", "discord", "u", "mine, alive", None, "", run_id="alive"), 60)
        await dead.queue_run(RunRecord("t1", "discord", "u", "waiting", None, '{"a": 1}', run_id="w1"), 60)
        await dead.queue_run(RunRecord("t2", "slack", "u", "other platform", None, "", run_id="w2"), 60)
        await dead.queue_run(RunRecord("t3", "discord", "u", "began", None, "", run_id="w3"), 60)
        await store.queue_run(RunRecord("t4", "discord", "u", "ran out", None, "", run_id="w4"), -1)
        await dead.update_reply_to("w1", '{"a": 2}')
        async with store.turn_lock("t3"):
            await store.begin_run(RunRecord("t3", "discord", "u", "began", "cp", "", run_id="w3"))
            found = await store.abandoned_runs("discord")
            assert [(r.run_id, r.question, r.reply_to, r.checkpoint) for r in found] == [
                ("w1", "waiting", '{"a": 2}', None), ("w4", "ran out", "", None)]
            assert {r.run_id for r in await store.abandoned_runs()} == {"w1", "w2", "w4"}
            await store.finish_run("w3")
        for run_id in ("w1", "w2", "w4"):
            await store.finish_run(run_id)
        assert await store.abandoned_runs() == [] and await store.unfinished_runs() == []
    finally:
        await dead.close()
        await store.close()


async def test_a_connection_left_inside_a_transaction_is_rolled_back_on_next_use(backend):
    """A stale transaction (what a cut-short write used to leave) is rolled back by the next
    use, and the database is then writable by others again; readiness heals it too."""
    store = await backend.open()
    other = await backend.open(busy_timeout=3.0)
    try:
        await backend.wedge(store)
        await store.claim_thread("after-wedge")
        await other.first_sighting("other-after-wedge")
        assert await other.owns_thread("after-wedge")
        await backend.wedge(store)
        await store.ping()
        await other.claim_thread("other-after-ping")
        await backend.assert_clean(store)
    finally:
        await other.close()
        await store.close()


async def test_readiness_fails_when_the_store_cannot_write(backend):
    store = await backend.open(busy_timeout=0.5)
    try:
        await store.ping()
        async with backend.write_blocked():
            with pytest.raises(StoreUnavailable):
                await store.ping()
        await store.ping()
    finally:
        await store.close()


async def test_both_backends_implement_the_whole_contract(backend):
    store = await backend.open()
    try:
        assert isinstance(store, Store)
        members = {name for name in vars(Store) if not name.startswith("_")} | {"checkpointer"}
        assert all(callable(getattr(store, name)) or name == "checkpointer" for name in members)
        await _put_checkpoint(store, "t")
        backend.execute("ALTER TABLE checkpoints RENAME TO checkpoints_gone")
        with pytest.raises(StoreUnavailable):  # the checkpointer's database errors are the store's
            await _put_checkpoint(store, "t")
        with pytest.raises(StoreUnavailable):
            await store.checkpointer.aget_tuple(_config("t"))
    finally:
        await store.close()
