"""Settings: every one documented in .env.example, lists and secrets read as users write them."""

from __future__ import annotations

import re
from pathlib import Path

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_setting_with_a_comment():
    lines = (ROOT / ".env.example").read_text("utf-8").splitlines()
    documented = {}
    for index, line in enumerate(lines):
        if match := re.match(r"^([A-Z0-9_]+)=", line):
            documented[match[1]] = lines[index - 1].startswith("#")
    assert set(documented) == {name.upper() for name in Settings.model_fields}
    assert all(documented.values()), [name for name, ok in documented.items() if not ok]


def test_comma_lists_blanks_and_secrets(monkeypatch):
    monkeypatch.setenv("ZENNBOT_ALLOWED_HOSTS", "zenn.dev, example.com ,")
    monkeypatch.setenv("DISCORD_GUILD_ID", "")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s")
    settings = Settings(_env_file=None)
    assert settings.zennbot_allowed_hosts == ["zenn.dev", "example.com"]
    assert settings.discord_guild_id is None and settings.slack_mode == "http"
    assert "xoxb-secret" not in repr(settings) and "xoxb-secret" not in str(settings.model_dump())
