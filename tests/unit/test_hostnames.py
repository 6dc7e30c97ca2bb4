"""Host texts the server resolves (RFC 1035/1123 names, IP literals), and log quoting."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jproxy.policy.hostnames import MAX_NAME_LENGTH, InvalidHost, check_host, for_log, ip_literal

LABEL_63 = "a" * 63
NAME_253 = ".".join([LABEL_63, LABEL_63, LABEL_63, "a" * 61])


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "example.com.",
        "localhost",
        "a",
        "x-1.example",
        "1password.com",  # RFC 1123: labels may start with a digit
        "_dmarc.example.com",
        "my_host.lan",
        "xn--bcher-kva.example",  # IDN as punycode
        "EXAMPLE.COM",
        "0x7f000001",  # not all digits: a name (the resolver and the policy judge the rest)
        LABEL_63 + ".com",
        NAME_253,
        NAME_253 + ".",
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "2001:db8::1",
    ],
)
def test_accepted_hosts(host) -> None:
    check_host(host)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("", "empty"),
        (".", "empty"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("a" * 64, "longer than 63"),
        ("a" * 64 + ".com", "longer than 63"),
        ("a" * 255, "longer than 253"),
        (NAME_253 + "a", "longer than 253"),
        ("bad\nname.example", "character"),
        ("nul\x00name", "character"),
        ("tab\tname", "character"),
        ("sp ace.example", "character"),
        ("-lead.example", "character"),
        ("trail-.example", "character"),
        ("semi;colon", "character"),
        ("[::1]", "character"),
        ("fe80::1%eth0", "character"),  # zone index: not a literal, not a name
        ("b\u00fccher.example", "not ASCII"),
        ("127.1", "all-digit"),
        ("2130706433", "all-digit"),
        ("0177.0.0.1", "all-digit"),
        ("10.0.0.1.", "all-digit"),
        ("1.2.3.4.5", "all-digit"),
    ],
)
def test_refused_hosts_say_why(host, why) -> None:
    with pytest.raises(InvalidHost, match=why):
        check_host(host)


def test_ip_literals_are_the_standard_forms_only() -> None:
    assert str(ip_literal("127.0.0.1")) == "127.0.0.1"
    assert str(ip_literal("::1")) == "::1"
    for text in ("127.1", "2130706433", "0x7f.0.0.1", "fe80::1%eth0", "localhost", "[::1]"):
        assert ip_literal(text) is None, text


def test_the_length_bound_is_253_without_the_trailing_dot() -> None:
    assert len(NAME_253) == MAX_NAME_LENGTH


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("example.com", "example.com"),
        ("bad\nname", "bad\\nname"),
        ("nul\x00name", "nul\\x00name"),
        ("cr\r\nINFO forged line", "cr\\r\\nINFO forged line"),
        ('quote"d', 'quote\\"d'),
        ("back\\slash", "back\\\\slash"),
        ("b\u00fccher", "b\\xfccher"),
        ("esc\x1b[31m", "esc\\x1b[31m"),
    ],
)
def test_log_quoting_escapes_control_bytes(text, logged) -> None:
    assert for_log(text) == logged
    assert "\n" not in for_log(text) and "\r" not in for_log(text)


def test_log_quoting_is_bounded() -> None:
    quoted = for_log("a" * 100_000)
    assert len(quoted) < 400 and quoted.endswith("...")


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda raw: raw.decode("latin-1")))
def test_any_text_is_either_a_host_or_refused_with_a_reason(text) -> None:
    try:
        check_host(text)
    except InvalidHost as error:
        assert str(error)
    else:
        assert ip_literal(text) is not None or re.fullmatch(r"[A-Za-z0-9_.-]{1,254}", text)
    quoted = for_log(text)
    assert quoted.isprintable() and quoted.isascii()
