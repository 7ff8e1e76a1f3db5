"""Every setting of zennbot, read once from the environment and `.env`.

Each field here is listed, with a comment, in `.env.example`. Secrets are `SecretStr`, so
printing or logging the settings never shows them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # LLM
    google_api_key: SecretStr | None = None
    zennbot_model: str = "gemini-2.5-flash"
    google_gemini_base_url: str | None = None
    zennbot_llm_timeout: float = 60.0
    zennbot_llm_max_retries: int = 4
    zennbot_llm_retry_initial_delay: float = 1.0

    # Storage
    zennbot_db: str = "zennbot.db"
    zennbot_db_busy_timeout: float = 10.0
    zennbot_database_url: SecretStr | None = None  # postgresql://… : PostgreSQL instead of ZENNBOT_DB
    zennbot_db_pool_size: int = 10

    # Browsing
    zenn_base_url: str = "https://zenn.dev"
    browser_executable: str | None = None
    zennbot_allowed_hosts: CommaList = Field(default_factory=list)
    zennbot_allow_private_network: bool = False
    zennbot_page_timeout: float = 20.0
    zennbot_page_max_requests: int = 200
    zennbot_page_max_bytes: int = 8_000_000
    zennbot_page_max_chars: int = 200_000
    zennbot_page_part_chars: int = 8_000
    zennbot_page_cache_ttl: float = 3600.0
    zennbot_list_max_items: int = 500
    zennbot_list_max_loads: int = 10
    zennbot_list_max_seconds: float = 15.0  # within the page timeout
    zennbot_max_renders: int = Field(default=0, ge=0)  # pages rendered in Chromium at once; 0: one per CPU core
    zennbot_max_fetches: int = Field(default=16, ge=1)  # servers' HTML fetched at once
    zennbot_browser_idle: float = Field(default=180.0, gt=0)  # s without renders before the browser is closed

    # Zenn: the shared client's manners (agent/zenn_client.py)
    zennbot_contact_url: str = ""  # in the User-Agent: where Zenn can reach whoever runs the bot
    zenn_requests_per_second: float = Field(default=1.0, gt=0)  # per process; across replicas with PostgreSQL
    zenn_max_in_flight: int = Field(default=2, ge=1)  # Zenn requests at once per process
    zenn_request_timeout: float = Field(default=15.0, gt=0)  # seconds per Zenn request
    zenn_max_pages: int = Field(default=5, ge=1)  # list pages (48 items each) per question, unless asked for all

    # Browser service (remote browsers) and the filtering proxy they reach
    browser_ws_endpoint: str | None = None
    browser_cdp_url: str | None = None
    zennbot_proxy_host: str = "127.0.0.1"
    zennbot_proxy_port: int = 0
    zennbot_proxy_advertised_host: str | None = None

    # Conversation limits
    zennbot_run_timeout: float = 180.0
    zennbot_max_concurrent_runs: int = Field(default=64, ge=1)  # answers in progress (each waiting one is cheap)
    zennbot_max_model_calls: int = Field(default=32, ge=1)  # model calls at once (the provider's rate limit)
    zennbot_max_urls_per_turn: int = 5
    zennbot_max_message_chars: int = 4_000
    zennbot_user_rate_limit: int = 10
    zennbot_thread_rate_limit: int = 20
    zennbot_daily_token_budget: int = 0
    zennbot_run_token_estimate: int = 20_000
    zennbot_log_level: str = "INFO"
    zennbot_shutdown_grace: float = 8.0

    # Follows and digests (bot/digest)
    zennbot_digests: bool = True  # post the followed channels' digests while `zennbot run` serves
    zennbot_follows_per_channel: int = Field(default=10, ge=1)
    zennbot_follows_per_workspace: int = Field(default=50, ge=1)  # per Discord server / Slack workspace
    zennbot_digest_tz: str = "Asia/Tokyo"  # a new channel's time zone (its digest comes daily at 09:00)
    zennbot_digest_max_items: int = Field(default=10, ge=1, le=10)  # items shown; the rest are counted
    zennbot_digest_weekly_empty_note: bool = False  # a weekly digest with nothing new says so in one line
    discord_follow_roles: CommaList = Field(default_factory=list)  # role ids that may follow, besides Manage Channels
    slack_follow_admins: CommaList = Field(default_factory=list)  # user ids that may follow (empty: anyone)

    # Discord
    discord_token: SecretStr | None = None
    discord_application_id: str | None = None
    discord_guild_id: int | None = None
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str | None = None
    discord_thread_require_mention: bool = False
    discord_allowed_guilds: CommaList = Field(default_factory=list)
    discord_allowed_channels: CommaList = Field(default_factory=list)
    discord_allowed_roles: CommaList = Field(default_factory=list)
    discord_shard_count: int | None = None
    discord_shard_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)

    # Slack
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_port: int = 3000
    slack_api_url: str = "https://slack.com/api/"
    slack_allowed_channels: CommaList = Field(default_factory=list)
    slack_allowed_users: CommaList = Field(default_factory=list)
    slack_stream_interval: float = Field(default=1.0, gt=0)  # s between calls streaming an answer

    # Health endpoints for orchestrators
    zennbot_health_port: int | None = None
    zennbot_health_host: str = "0.0.0.0"

    @field_validator(
        "zennbot_allowed_hosts",
        "discord_allowed_guilds",
        "discord_allowed_channels",
        "discord_allowed_roles",
        "slack_allowed_channels",
        "slack_allowed_users",
        "discord_shard_ids",
        "discord_follow_roles",
        "slack_follow_admins",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("google_gemini_base_url", "browser_executable", "discord_gateway_url",
                     "discord_application_id", "browser_ws_endpoint", "browser_cdp_url",
                     "zennbot_proxy_advertised_host", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("zennbot_database_url", mode="before")
    @classmethod
    def _postgres_url(cls, value: object) -> object:
        if value == "":
            return None
        if isinstance(value, str) and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("ZENNBOT_DATABASE_URL must start with postgresql:// (or be empty for SQLite)")
        return value

    @field_validator("discord_guild_id", "discord_shard_count", "zennbot_health_port", mode="before")
    @classmethod
    def _blank_int_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.browser_ws_endpoint and self.browser_cdp_url:
            raise ValueError("set BROWSER_WS_ENDPOINT or BROWSER_CDP_URL, not both")
        if self.discord_shard_count is not None and self.discord_shard_count < 1:
            raise ValueError("DISCORD_SHARD_COUNT must be at least 1")
        if self.discord_shard_ids:
            if self.discord_shard_count is None:
                raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the total over all replicas)")
            wrong = [i for i in self.discord_shard_ids if not 0 <= i < self.discord_shard_count]
            if wrong or len(set(self.discord_shard_ids)) != len(self.discord_shard_ids):
                raise ValueError(f"DISCORD_SHARD_IDS must be distinct numbers from 0 to "
                                 f"{self.discord_shard_count - 1} (DISCORD_SHARD_COUNT - 1)")
        return self

    @property
    def google_key(self) -> str | None:
        return self.google_api_key.get_secret_value() if self.google_api_key else None

    @property
    def discord_enabled(self) -> bool:
        return self.discord_token is not None

    @property
    def slack_mode(self) -> str | None:
        """'socket', 'http' or None, from which Slack settings are present."""
        if self.slack_bot_token is None:
            return None
        if self.slack_app_token is not None:
            return "socket"
        if self.slack_signing_secret is not None:
            return "http"
        return None
