"""The bot's database: the contract (`base`) and its two backends, SQLite (`sqlite`, one file,
one or a few processes) and PostgreSQL (`postgres`, any number of replicas). The backends never
import each other; `open_store` picks one from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.store.base import RunRecord, Store, StoreUnavailable, TurnLost, UsageRow, utc_day

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = ["RunRecord", "Store", "StoreUnavailable", "TurnLost", "UsageRow", "open_store", "utc_day"]


async def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL when `ZENNBOT_DATABASE_URL` is a postgresql://
    URL (shared by replicas; its driver imported only then), else the SQLite file `ZENNBOT_DB`.
    Raises `StoreUnavailable`."""
    if settings.zennbot_database_url is not None:
        from bot.store.postgres import PgStore

        return await PgStore.open(settings.zennbot_database_url.get_secret_value(),
                                  settings.zennbot_db_pool_size, settings.zennbot_db_busy_timeout)
    from bot.store.sqlite import SqliteStore

    return await SqliteStore.open(settings.zennbot_db, settings.zennbot_db_busy_timeout)
