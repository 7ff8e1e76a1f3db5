"""The SQLite store's crash-proof parts: one writer discipline under bursts, one run per thread
across processes (leases), lost runs found after a crash, clear failures."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
import time

import pytest

from agent.types import CachedPage
from bot.store import RunRecord, StoreUnavailable
from bot.store.sqlite import SqliteStore as Store


async def test_a_burst_of_mixed_reads_and_writes_never_finds_the_database_locked(tmp_path):
    """A read left open on the shared connection (a row not yet fetched) used to make a
    concurrent write on it fail at once with "database is locked" as soon as another connection
    had committed in between (a stale snapshot cannot be upgraded to a write). The old store
    failed this within a few rounds; now every coroutine waits its turn."""
    path = str(tmp_path / "z.db")
    store = await Store.open(path)
    other = await Store.open(path)  # another process's connection, in effect
    await store.put_page(CachedPage("https://x/0", "t", "text", "browser", "", time.time()))
    await store.claim_thread("t0")
    try:
        for n in range(200):
            results = await asyncio.gather(
                store.get_page("https://x/0", 60), store.owns_thread("t0"),
                store.first_sighting(f"ev{n}"), store.claim_thread(f"t{n}"),
                other.first_sighting(f"other{n}"),
                other.put_page(CachedPage(f"https://y/{n}", "t", "x" * 2000, "browser", "", time.time())),
                store.get_page("https://x/0", 60), store.first_sighting(f"ev{n}"), store.latest_checkpoint("t0"))
            assert results[0] is not None and results[1] is True and results[2] is True and results[7] is False
    finally:
        await other.close()
        await store.close()


async def test_turn_lock_is_one_holder_at_a_time_across_stores(tmp_path):
    path = str(tmp_path / "z.db")
    a, b = await Store.open(path), await Store.open(path)
    order: list[str] = []
    try:
        async def hold(store: Store, name: str, hold_for: float) -> None:
            async with store.turn_lock("t"):
                order.append(f"{name} in")
                await asyncio.sleep(hold_for)
                order.append(f"{name} out")

        first = asyncio.create_task(hold(a, "a", 0.3))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, hold(b, "b", 0), hold(a, "a2", 0))
    finally:
        await a.close()
        await b.close()
    assert order[:2] == ["a in", "a out"]
    pairs = [order[i:i + 2] for i in range(0, len(order), 2)]
    assert all(p[0].endswith(" in") and p[1] == p[0].replace(" in", " out") for p in pairs)


HOLDER = textwrap.dedent("""
    import asyncio, sys
    from bot.store import RunRecord
    from bot.store.sqlite import SqliteStore as Store

    async def main(path):
        store = await Store.open(path)
        async with store.turn_lock("t"):
            await store.begin_run(RunRecord("t", "console", "u", "the lost question", "cp-1", "where"))
            print("holding", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1]))
""")


async def test_a_killed_holder_leaves_a_lost_run_that_is_taken_over_at_once(tmp_path):
    path = str(tmp_path / "z.db")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER, path,
                                                   stdout=asyncio.subprocess.PIPE)
    store = await Store.open(path)
    try:
        assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"holding"
        assert await store.unfinished_runs() == []  # alive: its run is its own business
        waiter = asyncio.create_task(_enter(store, "t"))
        await asyncio.sleep(0.3)
        assert not waiter.done()  # the live holder keeps the thread
        process.send_signal(signal.SIGKILL)
        await process.wait()
        lost = await store.unfinished_runs()
        await asyncio.wait_for(waiter, 5)  # taken over without waiting for the lease to lapse
        assert [(r.thread_id, r.question, r.checkpoint, r.reply_to) for r in lost] == [
            ("t", "the lost question", "cp-1", "where")]
        assert await store.unfinished_runs("slack") == []
        await store.finish_run(lost[0].run_id)
        assert await store.unfinished_runs() == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await store.close()


async def _enter(store: Store, thread_id: str) -> None:
    async with store.turn_lock(thread_id):
        pass


async def test_a_lease_from_another_host_is_respected_until_it_lapses(tmp_path):
    path = str(tmp_path / "z.db")
    store = await Store.open(path)
    raw = sqlite3.connect(path)
    try:
        raw.execute("INSERT INTO thread_leases VALUES ('t', 'L', 'elsewhere', 1, 'x', ?)", (time.time() + 0.8,))
        raw.execute("INSERT INTO runs VALUES ('r1', 't', 'slack', 'u', 'q', '', NULL, 1.0, 'L')")
        raw.commit()
        assert await store.unfinished_runs() == []
        started = time.monotonic()
        await asyncio.wait_for(_enter(store, "t"), 10)
        assert time.monotonic() - started > 0.3  # waited for the lapse
        assert [r.run_id for r in await store.unfinished_runs()] == ["r1"]
    finally:
        raw.close()
        await store.close()


async def test_a_run_is_recorded_until_finished_and_only_inside_its_turn(tmp_path):
    store = await Store.open(str(tmp_path / "z.db"))
    try:
        run = RunRecord("t", "slack", "U1", "q?", None, '{"channel": "C1"}')
        with pytest.raises(RuntimeError):
            await store.begin_run(run)
        async with store.turn_lock("t"):
            await store.begin_run(run)
            await store.update_reply_to(run.run_id, '{"channel": "C1", "status_ts": "9"}')
            assert await store.unfinished_runs() == []  # ours, and we are alive
        # released without finish_run (a failure while finishing): now it counts as lost
        lost = await store.unfinished_runs("slack")
        assert [(r.run_id, r.reply_to, r.checkpoint) for r in lost] == [
            (run.run_id, '{"channel": "C1", "status_ts": "9"}', None)]
        await store.finish_run(run.run_id)
        assert await store.unfinished_runs() == []
        await store.ping()
    finally:
        await store.close()


async def test_a_database_locked_by_another_process_is_store_unavailable(tmp_path):
    path = str(tmp_path / "z.db")
    store = await Store.open(path, busy_timeout=0.3)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.first_sighting("ev")
        with pytest.raises(StoreUnavailable):
            await store.rollback_checkpoints("t", None)
    finally:
        blocker.rollback()
        blocker.close()
    try:
        assert caught.value.reason == "locked by another process"
        assert await store.first_sighting("ev")  # and it works again once the lock is gone
    finally:
        await store.close()


def test_disk_errors_name_the_reason():
    from bot.store.sqlite import unavailable

    assert unavailable(sqlite3.OperationalError("database or disk is full")).reason == "out of disk space"
    assert unavailable(OSError(28, "No space left on device")).reason == "out of disk space"
    assert unavailable(sqlite3.OperationalError("database is locked")).reason == "locked by another process"
    assert os.strerror(28)  # (the errno the kernel uses for a full disk)
