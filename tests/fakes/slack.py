"""The mock Slack Web API the tests use: `bench.slack_api` (the load benchmark uses it too)."""

from bench.slack_api import (BOT_USER, TEAM, Message, MockSlackApi, action_body, event_body,  # noqa: F401
                             eventually, signed_headers)
