"""The Gemini stub the tests use: `bench.gemini_stub` (the benchmark uses it too)."""

from bench.gemini_stub import GeminiStub, call_reply, error_reply, text_reply  # noqa: F401
