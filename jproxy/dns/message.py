"""DNS queries and answers as DNS over HTTPS carries them (RFC 8484), without I/O.

dnspython builds and parses the messages; this module decides what an answer means for a
connect: the addresses to try, how long they may be kept, or why there are none. DoH asks with
DNS id 0 (RFC 8484 section 4.1: HTTP caches then see identical requests for identical questions).
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

MEDIA_TYPE = "application/dns-message"
MAX_MESSAGE_SIZE = 65535
"""A DNS message never exceeds this (its TCP length prefix is 16 bits); a longer body is bad."""

RECORD_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
"""Asked for each name, in this order; the addresses are tried in the same order."""


class DnsError(Exception):
    """An answer that cannot be used (malformed, not ours, a server failure); says why."""


@dataclass(frozen=True)
class Answer:
    """What a name resolved to: ``addresses`` (empty when ``negative``) and their lifetime."""

    addresses: tuple[str, ...]
    ttl: int
    negative: str = ""
    """Why there are no addresses ("NXDOMAIN", "no address records"); empty when positive."""


def query(host: str, record_type: dns.rdatatype.RdataType) -> dns.message.QueryMessage:
    """The query for ``host``'s records of ``record_type``, with id 0 and recursion desired."""
    try:
        message = dns.message.make_query(dns.name.from_text(host), record_type)
    except (dns.exception.DNSException, UnicodeError, ValueError) as error:
        raise DnsError(f"{host!r} is not a valid DNS name: {error}") from None
    message.id = 0
    return message


def read_answer(sent: dns.message.QueryMessage, wire: bytes) -> Answer:
    """The meaning of ``wire``, the reply to ``sent``; ``DnsError`` when it cannot be used."""
    if len(wire) > MAX_MESSAGE_SIZE:
        raise DnsError(f"answer of {len(wire)} bytes, more than a DNS message can be")
    try:
        reply = dns.message.from_wire(wire)
        if not sent.is_response(reply):
            raise DnsError("the answer is not for the question asked")
        rcode = reply.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsError(f"the DNS server answered {dns.rcode.to_text(rcode)}")
        chain = reply.resolve_chaining()
    except dns.exception.DNSException as error:
        raise DnsError(f"malformed DNS answer: {error}") from None
    if chain.answer is None:
        why = "NXDOMAIN" if rcode == dns.rcode.NXDOMAIN else "no address records"
        return Answer((), chain.minimum_ttl, why)
    return Answer(tuple(record.address for record in chain.answer), chain.minimum_ttl)


def combine(answers: list[Answer]) -> Answer:
    """One answer from the answers for each record type: every address, the shortest lifetime.

    A name with addresses of either family is positive; otherwise the first reason stands.
    """
    addresses = tuple(address for answer in answers for address in answer.addresses)
    ttl = min(answer.ttl for answer in answers)
    if addresses:
        return Answer(addresses, ttl)
    return Answer((), ttl, answers[0].negative)
