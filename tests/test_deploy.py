"""deploy/ checked where it can be without Docker: the compose file names only real settings,
its replicas split the Discord shards and advertise their own proxies, the browser service has
no way out but the bots, and it runs Chromium with the bot's own flags. (Running the browser
service's start script is tested in test_browser_service.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from agent.browser import LAUNCH_ARGS
from bot.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PG_STORE_SETTING = "ZENNBOT_DATABASE_URL"  # the PostgreSQL store's setting (branch postgres)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text("utf-8"))


def bots() -> dict[str, dict[str, str]]:
    return {name: service["environment"] for name, service in compose()["services"].items()
            if name.startswith("bot-")}


def interpolated(env: dict[str, str]) -> dict[str, str]:
    return {key: re.sub(r"\$\{(\w+)[^}]*\}", lambda m: m[1].lower(), str(value)) for key, value in env.items()}


def test_every_bot_setting_is_real_and_valid():
    known = {name.upper() for name in Settings.model_fields} | {PG_STORE_SETTING}
    for name, env in bots().items():
        assert set(env) <= known, (name, set(env) - known)
        values = {k.lower(): v for k, v in interpolated(env).items() if k != PG_STORE_SETTING}
        settings = Settings(_env_file=None, **values)
        assert settings.browser_ws_endpoint == "ws://browser:3000/browser_ws_path"
        assert settings.zennbot_proxy_advertised_host == name  # the browser service reaches this replica


def test_replicas_split_the_shards():
    envs = list(bots().values())
    counts = {int(env["DISCORD_SHARD_COUNT"]) for env in envs}
    ids = [int(i) for env in envs for i in env["DISCORD_SHARD_IDS"].split(",")]
    assert len(counts) == 1 and sorted(ids) == list(range(counts.pop()))


def test_the_browser_service_reaches_only_the_bots():
    config = compose()
    browser_networks = config["services"]["browser"]["networks"]
    assert all(config["networks"][n].get("internal") for n in browser_networks)
    assert all(set(browser_networks) <= set(config["services"][name]["networks"]) for name in bots())


def test_the_browser_service_runs_chromium_with_the_bots_flags():
    server = json.loads((DEPLOY / "browser" / "server.json").read_text("utf-8"))
    assert server["args"] == LAUNCH_ARGS and server["headless"] is True
