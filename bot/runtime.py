"""Assembles the bot from settings: store, guard, browser, page reader, model, agent, service."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from langchain_core.language_models import BaseChatModel

from agent.browser import BrowserLimits, BrowserPool, ListBounds
from agent.graph import ResearchAgent, RetryPolicy
from agent.limits import Limit, cpu_count
from agent.llm import make_chat_model
from agent.pages import PageLimits, PageReader
from agent.proxy import GuardProxy
from agent.tls import tls_context
from agent.urlguard import UrlPolicy
from agent.zenn import ZennClient
from agent.zenn_client import ZennHttp, ZennLimits, user_agent
from bot.service import ConversationService, ServiceLimits
from bot.settings import Settings
from bot.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass
class Browsing:
    """The store and everything that reads pages; enough for `zennbot read`."""

    settings: Settings
    policy: UrlPolicy
    store: Store
    browser: BrowserPool
    http: httpx.AsyncClient
    reader: PageReader

    async def close(self) -> None:
        self.reader.close()
        await self.http.aclose()
        await self.browser.close()
        await self.store.close()


@dataclass
class Runtime:
    browsing: Browsing
    agent: ResearchAgent
    service: ConversationService
    model: BaseChatModel  # the agent's; the digests' summaries use it too

    @property
    def store(self) -> Store:
        return self.browsing.store

    async def close(self, grace: float = 30.0) -> None:
        await self.service.close(grace)
        await self.browsing.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def policy_from(settings: Settings) -> UrlPolicy:
    return UrlPolicy(allowed_hosts=tuple(settings.zennbot_allowed_hosts),
                     allow_private_network=settings.zennbot_allow_private_network)


def model_from(settings: Settings) -> BaseChatModel:
    return make_chat_model(settings.zennbot_model, api_key=settings.google_key,
                           base_url=settings.google_gemini_base_url, timeout=settings.zennbot_llm_timeout)


async def open_browsing(settings: Settings, policy: UrlPolicy | None = None) -> Browsing:
    policy = policy or policy_from(settings)
    store = await open_store(settings)
    proxy = GuardProxy(policy, max_response_bytes=settings.zennbot_page_max_bytes,
                       host=settings.zennbot_proxy_host, port=settings.zennbot_proxy_port,
                       advertised_host=settings.zennbot_proxy_advertised_host)
    browser = BrowserPool(
        policy,
        BrowserLimits(navigation_timeout=settings.zennbot_page_timeout,
                      max_requests=settings.zennbot_page_max_requests,
                      max_bytes=settings.zennbot_page_max_bytes,
                      lists=ListBounds(max_items=settings.zennbot_list_max_items,
                                       max_loads=settings.zennbot_list_max_loads,
                                       max_seconds=settings.zennbot_list_max_seconds)),
        executable=settings.browser_executable,
        ws_endpoint=settings.browser_ws_endpoint,
        cdp_url=settings.browser_cdp_url,
        proxy=proxy,
        renders=Limit("browser renders", settings.zennbot_max_renders or cpu_count()),
        idle=settings.zennbot_browser_idle,
    )
    await browser.start()
    # The JSON client goes through the same filtering proxy as the browser.
    http = httpx.AsyncClient(proxy=httpx.Proxy(proxy.local_url, auth=(proxy.username, proxy.password)),
                             trust_env=False, follow_redirects=False, verify=tls_context(),
                             timeout=httpx.Timeout(settings.zennbot_page_timeout),
                             headers={"User-Agent": "zennbot/0.1"})
    reader = PageReader(browser, ZennClient(zenn_http_from(settings, http, store)), store, policy,
                        PageLimits(part_chars=settings.zennbot_page_part_chars,
                                   max_chars=settings.zennbot_page_max_chars,
                                   cache_ttl=settings.zennbot_page_cache_ttl,
                                   max_bytes=settings.zennbot_page_max_bytes,
                                   timeout=settings.zennbot_page_timeout),
                        http=http, fetches=Limit("page fetches", settings.zennbot_max_fetches))
    reader.start_warm_up()
    return Browsing(settings, policy, store, browser, http, reader)


def zenn_http_from(settings: Settings, http: httpx.AsyncClient, store: Store) -> ZennHttp:
    """The process's one Zenn client; its pace is shared with other replicas through the store."""
    if not settings.zennbot_contact_url:
        log.info("ZENNBOT_CONTACT_URL is not set: Zenn sees the bot's name but no way to reach you")
    return ZennHttp(settings.zenn_base_url, http, user_agent=user_agent("0.1", settings.zennbot_contact_url),
                    limits=ZennLimits(rate=settings.zenn_requests_per_second,
                                      in_flight=settings.zenn_max_in_flight,
                                      timeout=settings.zenn_request_timeout),
                    shared_rate=store.rate_wait)


async def open_runtime(settings: Settings, *, model: BaseChatModel | None = None,
                       policy: UrlPolicy | None = None) -> Runtime:
    """Everything the adapters need. `model` and `policy` are for tests and the benchmark."""
    model = model or model_from(settings)
    browsing = await open_browsing(settings, policy)
    agent = ResearchAgent(model, browsing.reader, browsing.store.checkpointer,
                          max_urls=settings.zennbot_max_urls_per_turn, max_zenn_pages=settings.zenn_max_pages,
                          retry=RetryPolicy(attempts=settings.zennbot_llm_max_retries,
                                            initial_delay=settings.zennbot_llm_retry_initial_delay),
                          model_calls=Limit("model calls", settings.zennbot_max_model_calls))
    service = ConversationService(agent, browsing.store, browsing.policy, ServiceLimits(
        run_timeout=settings.zennbot_run_timeout,
        max_concurrent_runs=settings.zennbot_max_concurrent_runs,
        max_urls_per_turn=settings.zennbot_max_urls_per_turn,
        max_message_chars=settings.zennbot_max_message_chars,
        user_rate_limit=settings.zennbot_user_rate_limit,
        thread_rate_limit=settings.zennbot_thread_rate_limit,
        daily_token_budget=settings.zennbot_daily_token_budget,
        run_token_estimate=settings.zennbot_run_token_estimate,
    ))
    return Runtime(browsing, agent, service, model)
