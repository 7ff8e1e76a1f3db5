"""The chat model: Gemini through langchain-google-genai by default, any LangChain provider by
`provider:model` (e.g. `openai:gpt-4.1-mini`) when its package is installed.

Retries are ours (`graph.RetryPolicy`, the same for every provider), so the client's own are off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # LangChain is imported when a model is made: a missing key is told at once
    from langchain_core.language_models import BaseChatModel


class MissingApiKey(Exception):
    """No key for the configured model; the message says what to set."""


def require_api_key(model: str, api_key: str | None) -> None:
    """Raise `MissingApiKey` when `model` is Gemini's and there is no key (other providers'
    packages read their own)."""
    provider, _, name = model.partition(":")
    if (not name or provider == "google_genai") and not api_key:
        raise MissingApiKey("Set GOOGLE_API_KEY (a Gemini API key from https://aistudio.google.com/apikey) "
                            "in the environment or in .env.")


def make_chat_model(model: str, *, api_key: str | None, base_url: str | None = None,
                    timeout: float = 60.0) -> BaseChatModel:
    require_api_key(model, api_key)
    provider, _, name = model.partition(":")
    if name and provider != "google_genai":
        from langchain.chat_models import init_chat_model

        return init_chat_model(name, model_provider=provider, timeout=timeout, max_retries=0)
    from langchain_google_genai import ChatGoogleGenerativeAI

    from agent.tls import tls_context

    return ChatGoogleGenerativeAI(
        model=name or provider,
        google_api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=1,  # one attempt: RetryPolicy retries
        temperature=0.3,
        # httpx takes "verify", aiohttp (and the websocket session) "ssl"; each drops the other's
        client_args={"verify": tls_context(), "ssl": tls_context()},
    )
