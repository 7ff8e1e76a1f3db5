"""The guard proxy itself: only the bot's clients may use it, and it refuses blocked targets."""

from __future__ import annotations

import httpx
import pytest

from agent.proxy import BLOCKED_HEADER, GuardProxy
from bench.replica import ReplicaServer
from tests.helpers import TRUSTED_REPLICA


async def test_only_the_bots_own_clients_may_use_the_proxy():
    async with ReplicaServer() as zenn, GuardProxy(TRUSTED_REPLICA) as proxy:
        async with httpx.AsyncClient(proxy=proxy.url, trust_env=False) as stranger:
            assert (await stranger.get(zenn.url + "/asap")).status_code == 407
        wrong = httpx.Proxy(proxy.url, auth=(proxy.username, "guess"))
        async with httpx.AsyncClient(proxy=wrong, trust_env=False) as guesser:
            assert (await guesser.get(zenn.url + "/asap")).status_code == 407
        right = httpx.Proxy(proxy.url, auth=(proxy.username, proxy.password))
        async with httpx.AsyncClient(proxy=right, trust_env=False) as bot:
            assert (await bot.get(zenn.url + "/asap")).status_code == 200
            refused = await bot.get("http://127.0.0.2:9/latest/meta-data/")
    assert refused.status_code == 403 and "own machine" in refused.headers[BLOCKED_HEADER]
    assert zenn.hits == ["/asap"]


@pytest.mark.parametrize("limit, complete", [(None, True), (10_000, False)])
async def test_responses_are_cut_at_the_limit(limit, complete):
    async with ReplicaServer() as zenn, GuardProxy(TRUSTED_REPLICA, max_response_bytes=limit) as proxy:
        right = httpx.Proxy(proxy.url, auth=(proxy.username, proxy.password))
        async with httpx.AsyncClient(proxy=right, trust_env=False) as bot:
            if complete:
                page = await bot.get(zenn.url + "/asap/articles/34237ad87f8511")
                assert page.text.rstrip().endswith("</html>") and len(page.content) > 80_000
            else:
                with pytest.raises(httpx.HTTPError):
                    await bot.get(zenn.url + "/asap/articles/34237ad87f8511")


async def test_a_proxy_listening_beyond_loopback_still_demands_its_credentials():
    """For a browser service on another machine: listening on every interface, advertised under
    a name the service resolves (here "localhost"), and still only for the bot's own clients."""
    everywhere = GuardProxy(TRUSTED_REPLICA, host="0.0.0.0", advertised_host="localhost")
    async with ReplicaServer() as zenn, everywhere as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        assert proxy.url == f"http://localhost:{port}" and proxy.local_url == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(proxy=proxy.url, trust_env=False) as stranger:
            assert (await stranger.get(zenn.url + "/asap")).status_code == 407
        right = httpx.Proxy(proxy.url, auth=(proxy.username, proxy.password))
        async with httpx.AsyncClient(proxy=right, trust_env=False) as bot:
            assert (await bot.get(zenn.url + "/asap")).status_code == 200
            refused = await bot.get("http://127.0.0.2:9/latest/meta-data/")
    assert refused.status_code == 403 and zenn.hits == ["/asap"]
