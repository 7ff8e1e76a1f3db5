"""A recovery notice is posted at most once: the lost run is marked finished before its asker is
told, so a store failure at that moment means the notice comes at the next start, not twice.
On SQLite and (ZENNBOT_TEST_STORE=postgres) PostgreSQL."""

from __future__ import annotations

import pytest

from bot.recovery import recover_lost_runs
from bot.store import RunRecord, StoreUnavailable, open_store
from tests.helpers import make_settings


async def test_a_recovery_notice_is_posted_at_most_once(tmp_path):
    store = await open_store(make_settings(tmp_path))
    try:
        async with store.turn_lock("discord:1"):
            await store.begin_run(RunRecord("discord:1", "discord", "u", "lost question", None, "{}", "run1"))
        told: list[str] = []

        async def acknowledge(run: RunRecord) -> None:
            told.append(run.run_id)

        real_finish = store.finish_run
        failures = [StoreUnavailable("locked")]

        async def finish_failing_once(run_id: str) -> None:
            if failures:
                raise failures.pop()
            await real_finish(run_id)

        store.finish_run = finish_failing_once
        with pytest.raises(StoreUnavailable):
            await recover_lost_runs(store, "discord", acknowledge)
        assert told == []  # not told yet: the run is still lost, and will be told about once
        assert [r.run_id for r in await recover_lost_runs(store, "discord", acknowledge)] == ["run1"]
        assert await recover_lost_runs(store, "discord", acknowledge) == []
        assert told == ["run1"]

        async def platform_down(run: RunRecord) -> None:
            raise ConnectionError("down")

        async with store.turn_lock("discord:2"):
            await store.begin_run(RunRecord("discord:2", "discord", "u", "another", None, "{}", "run2"))
        assert len(await recover_lost_runs(store, "discord", platform_down)) == 1  # logged, not retried
        assert await store.unfinished_runs("discord") == []
    finally:
        await store.close()
