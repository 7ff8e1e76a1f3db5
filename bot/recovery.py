"""After a crash: a run that never finished is rolled back (its steps never become the thread's
history) and its asker is told, by the adapter of its platform, that the question was lost. A
run that was still waiting for its turn had nothing to roll back: its asker is told all the same.

Rollback happens at two moments, both under the thread's `turn_lock`: at start-up
(`recover_lost_runs`, for the platforms the process serves) and at the thread's next run
(`roll_back_lost_runs`, called by the service before it starts the agent), whichever comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.store import RunRecord, Store, StoreUnavailable

log = logging.getLogger(__name__)

Acknowledge = Callable[[RunRecord], Awaitable[None]]


def short_question(run: RunRecord, limit: int = 80) -> str:
    text = " ".join(run.question.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


async def roll_back_lost_runs(store: Store, thread_id: str, alive: frozenset[str] = frozenset()) -> list[RunRecord]:
    """Roll back the thread's lost runs, oldest first (the oldest's checkpoint is where the
    thread was last whole), except the runs `alive` in this process (answered, their answer
    being posted). The caller holds `turn_lock(thread_id)`. Raises `StoreUnavailable`."""
    lost = [run for run in await store.unfinished_runs() if run.thread_id == thread_id and run.run_id not in alive]
    for run in lost:
        await store.rollback_checkpoints(thread_id, run.checkpoint)
        await store.finish_run(run.run_id)
    if lost:
        log.info("rolled back %d lost run(s) of %s", len(lost), thread_id)
    return lost


async def recover_lost_runs(store: Store, platform: str, acknowledge: Acknowledge) -> list[RunRecord]:
    """Roll back every lost run of `platform`, and forget every run that was waiting for its
    turn when its process died; hand each to `acknowledge` (which tells its asker). A run is
    marked finished before its asker is told, so a notice is posted at most once; a failed
    acknowledgement is logged, not retried: the thread is whole either way. Waits for a thread
    whose lease has not lapsed yet. Raises `StoreUnavailable`."""
    recovered: list[RunRecord] = []
    for run in await store.unfinished_runs(platform):
        async with store.turn_lock(run.thread_id):
            if run.run_id not in {r.run_id for r in await store.unfinished_runs(platform)}:
                continue  # the thread's next run got there first
            await store.rollback_checkpoints(run.thread_id, run.checkpoint)
            await store.finish_run(run.run_id)
            await _tell(acknowledge, run)
        recovered.append(run)
        log.info("recovered a lost run of %s (%s)", run.thread_id, short_question(run))
    for run in await store.abandoned_runs(platform):
        await store.finish_run(run.run_id)
        await _tell(acknowledge, run)
        recovered.append(run)
        log.info("told the asker of a run that was waiting in %s (%s)", run.thread_id, short_question(run))
    return recovered


async def _tell(acknowledge: Acknowledge, run: RunRecord) -> None:
    try:
        await acknowledge(run)
    except Exception as exc:  # the platform is down or refuses: the log says so
        log.warning("could not tell %s that its question was lost: %s", run.thread_id, exc)


async def recover_in_background(store: Store, platform: str, acknowledge: Acknowledge) -> None:
    """`recover_lost_runs` for a task of its own: failures end in one log line."""
    try:
        await recover_lost_runs(store, platform, acknowledge)
    except StoreUnavailable as exc:
        log.error("could not recover lost %s runs: %s", platform, exc)
