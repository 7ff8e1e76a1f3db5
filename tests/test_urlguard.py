"""The guard's decisions, with name resolution stubbed: nothing here opens a connection."""

from __future__ import annotations

import ipaddress

import pytest

from agent.urlguard import BlockedUrl, UrlPolicy, parse_ip_literal

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
