"""The guard's decisions, with name resolution stubbed: nothing here opens a connection."""

from __future__ import annotations

import ipaddress

import pytest

from agent.urlguard import BlockedUrl, UrlPolicy, escape_url, parse_ip_literal

FAKE_DNS = {
    "public.example": ["93.184.216.34"],
    "rebind.example": ["127.0.0.1"],
    "mixed.example": ["93.184.216.34", "10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "v6private.example": ["fd00::1"],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host not in FAKE_DNS:
        raise OSError(f"no such host {host}")
    return FAKE_DNS[host]


POLICY = UrlPolicy(resolver=fake_resolver)

HOSTILE = [
    ("http://127.0.0.1:8080/", "own machine"),
    ("http://localhost/", "could not be found"),  # not in the fake DNS: refused either way
    ("http://[::1]/", "own machine"),
    ("http://0.0.0.0/", "not a real destination"),
    ("http://2130706433/", "own machine"),
    ("http://0x7f.1/", "own machine"),
    ("http://0177.0.0.1/", "own machine"),
    ("http://127.1/", "own machine"),
    ("http://%31%32%37.0.0.1/", "own machine"),
    ("http://１２７.０.０.１/", "own machine"),
    ("http://169.254.169.254/latest/meta-data/", "link-local or cloud metadata"),
    ("http://10.0.0.1/", "private network"),
    ("http://172.16.5.4/", "private network"),
    ("http://192.168.1.1/", "private network"),
    ("http://100.64.0.1/", "private network"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "own machine"),
    ("http://[::ffff:a9fe:a9fe]/", "link-local or cloud metadata"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00::1]/", "private network"),
    ("http://[64:ff9b::a00:1]/", "private network"),
    ("http://[2002:7f00:1::]/", "own machine"),
    ("http://rebind.example/", "own machine"),
    ("http://mixed.example/", "private network"),
    ("http://metadata.example/", "cloud metadata"),
    ("http://v6private.example/", "private network"),
    ("file:///etc/passwd", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
    ("data:text/html,<h1>x</h1>", "only http and https"),
    ("chrome://settings", "only http and https"),
    ("view-source:http://public.example/", "only http and https"),
    ("about:config", "only http and https"),
    ("ftp://public.example/", "only http and https"),
    ("http://user:pw@public.example/", "user name or password"),
    ("http://[::1", "valid link"),
    ("http://" + "a" * 3000 + ".example/", "too long"),
]


@pytest.mark.parametrize("url, reason", HOSTILE)
async def test_hostile_urls_are_refused(url, reason):
    with pytest.raises(BlockedUrl) as refused:
        await POLICY.check(url)
    assert reason in refused.value.reason


async def test_public_host_passes():
    target = await POLICY.check("https://public.example/a?b=c")
    assert (target.host, target.port, target.scheme) == ("public.example", 443, "https")


@pytest.mark.parametrize("host, expected", [
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.01", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("10.1", "10.0.0.1"), ("0xa9fea9fe", "169.254.169.254"),
    ("zenn.dev", None), ("1.2.3.example", None),
])
def test_browser_style_ipv4_spellings(host, expected):
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed else None) == expected


async def test_allowlist_limits_hosts():
    policy = UrlPolicy(allowed_hosts=("zenn.dev",), resolver=fake_resolver)
    with pytest.raises(BlockedUrl, match="allowed sites"):
        await policy.check("http://public.example/")
    FAKE_DNS["zenn.dev"] = ["93.184.216.35"]
    assert (await policy.check("https://zenn.dev/asap")).host == "zenn.dev"


async def test_private_network_switch_and_test_trust():
    assert (await UrlPolicy(allow_private_network=True, resolver=fake_resolver).check("http://10.0.0.1/")).host
    trusted = UrlPolicy(trusted_addresses=frozenset({ipaddress.ip_address("127.0.0.1")}), resolver=fake_resolver)
    await trusted.check("http://127.0.0.1:9/")
    with pytest.raises(BlockedUrl):
        await trusted.check("http://127.0.0.2:9/")


MARKUP = [
    ("https://public.example/p?<!channel>&<@U0ADMIN>", "'<'"),
    ("https://public.example/p?q=<b>", "'<'"),
    ("https://public.example/a b", "U+0020"),
    ("https://public.example/a\tb", "U+0009"),
    ("https://public.example/a\nb", "U+000A"),
    ("https://public.example/a\x00b", "U+0000"),
    ("https://public.example/a\x7fb", "U+007F"),
    ("https://public.example/a\u3000b", "U+3000"),  # ideographic space
    ("https://public.example/a\u200bb", "U+200B"),  # zero-width space
    ("https://public.example/a\u202eb", "U+202E"),  # right-to-left override
    ("https://public.example/a|@here", "'|'"),
    ("https://public.example\\@evil.example/", "'\\'"),
    ("https://public.example/`code`", "'`'"),
]


@pytest.mark.parametrize("url, character", MARKUP)
def test_urls_with_markup_whitespace_or_control_characters_are_refused(url, character):
    with pytest.raises(BlockedUrl) as refused:
        POLICY.check_url(url)
    assert refused.value.reason == f"that link has a character links must percent-encode ({character})"
    assert all(c not in refused.value.detail for c in "<> |\n\t")  # the detail shows it encoded


@pytest.mark.parametrize("url", [
    "https://public.example/p?q=%3C!channel%3E&r=%7C",
    "https://public.example/記事/日本語?q=検索",
    "  https://public.example/surrounded-by-spaces  ",
])
def test_percent_encoded_and_non_ascii_urls_pass(url):
    assert POLICY.check_url(url).host == "public.example"


def test_escape_url_encodes_exactly_what_is_refused():
    assert escape_url("https://h/p?<!channel>&<@U0ADMIN> a|b\u200b") == \
        "https://h/p?%3C!channel%3E&%3C@U0ADMIN%3E%20a%7Cb%E2%80%8B"
    assert escape_url("https://h/記事?q=%41") == "https://h/記事?q=%41"
    POLICY.check_url(escape_url("https://public.example/a b<c>\\d"))


async def test_a_model_asking_for_a_url_with_mentions_gets_a_refusal_not_a_fetch(tmp_path):
    """A page made the model open a URL carrying Slack mentions: the tool refuses it before any
    request, and the refusal shows the URL encoded."""
    from langchain_core.messages import AIMessage, ToolMessage

    from bench.replica import ReplicaServer
    from bench.scripted_model import current_turn, tool_call
    from tests.helpers import make_settings, running

    def policy(messages):
        _, _, since = current_turn(messages)
        results = [m for m in since if isinstance(m, ToolMessage)]
        if not results:
            return tool_call("read_page", url=f"{site.url}/injected?<!channel>&<@U0ADMIN>")
        return AIMessage(content=str(results[-1].content))

    async with ReplicaServer() as site:
        async with running(make_settings(tmp_path, site.url), policy) as (runtime, model):
            reply = await runtime.service.handle("t", "u", "what does the page say?")
        hits = list(site.hits)
    assert reply.text.startswith(f"ERROR: Could not read {site.url}/injected?%3C!channel%3E&%3C@U0ADMIN%3E: "
                                 "that link has a character links must percent-encode ('<').")
    assert "<!channel>" not in reply.text and "<@U0ADMIN>" not in reply.text
    assert not any(h.startswith("/injected") for h in hits)
