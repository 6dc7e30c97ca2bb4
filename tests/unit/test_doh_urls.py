"""A DoH server's URL: its authority and path, and the URLs refused."""

from __future__ import annotations

import pytest

from jproxy.handlers.dns.doh import parse_doh_url


@pytest.mark.parametrize(
    ("url", "authority", "path"),
    [
        ("https://127.0.0.1:8443/dns-query", "127.0.0.1:8443", "/dns-query"),
        ("https://dns.example/q?x=1", "dns.example", "/q?x=1"),
        ("https://[::1]/", "[::1]", "/"),
        ("https://dns.example", "dns.example", "/dns-query"),
    ],
)
def test_doh_urls(url: str, authority: str, path: str) -> None:
    server = parse_doh_url(url)
    assert (server.authority, server.path) == (authority, path)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/dns-query", "https:///x", "https://u:p@h/", "https://h:99999/"]
)
def test_bad_doh_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_doh_url(url)
