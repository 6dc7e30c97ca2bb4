"""docs/admin.md's tables, generated from the code so that they cannot drift from it.

docs/admin.md is written by hand around them: each generated part sits between
``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``, and ``fill`` replaces what is between
the markers with the text rendered now (the admin methods from ``schemas.admin``, the
``gjproxy admin`` METHOD table from the command, the Prometheus metrics from the collectors'
own families). The caller gathers those inputs; this module only formats them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from schemas.admin import ERROR_REPLIES, Method


class Sample(Protocol):
    name: str
    labels: Mapping[str, str]


class Family(Protocol):
    """A Prometheus metric family, as ``prometheus_client`` collectors yield them."""

    type: str
    documentation: str
    samples: list[Sample]


MAX_LISTED_VALUES = 3
"""A label with more values than this is shown as ``label="..."``."""


def method_table(docs: Mapping[Method, tuple[str, str, str]]) -> str:
    rows = ["| Code | Name | Parameters | Reply DATA |", "|---|---|---|---|"]
    for method in sorted(Method):
        name, params, reply = docs[method]
        rows.append(f"| {int(method)} | {name} | {params} | {reply} |")
    return "\n".join(rows)


def method_range() -> str:
    """The sentence that says which codes gjproxy defines."""
    last = max(method for method in Method if method not in ERROR_REPLIES)
    return (
        "Codes 0-3 are the protocol's own; 4-253 are reserved for extensions, of which gjproxy"
        f" defines 4-{int(last)}. Every value is ASCII decimal unless said otherwise."
    )


def invalid_method() -> str:
    last = max(method for method in Method if method not in ERROR_REPLIES)
    return (
        f"- 255: the code is not a method this server offers (any code other than 0-{int(last)})."
    )


def command_table(commands: Mapping[str, tuple[str, str]]) -> str:
    rows = ["| METHOD | Asks for | Prints |", "|---|---|---|"]
    rows += [f"| `{name}` | {asks} | {prints} |" for name, (asks, prints) in commands.items()]
    return "\n".join(rows)


def metric_table(families: Iterable[Family]) -> str:
    """One row per sample name (a summary's ``_count`` and ``_sum`` each get one)."""
    rows = ["| Metric | Type | Meaning |", "|---|---|---|"]
    for family in families:
        names: dict[str, dict[str, list[str]]] = {}
        for sample in family.samples:
            labels = names.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, [])
                if value not in labels[label]:
                    labels[label].append(value)
        for name, labels in names.items():
            meaning = family.documentation
            if name.endswith("_sum") and family.type == "summary":
                meaning = "the sum of what the `_count` row counts (seconds)"
            rows.append(f"| `{name}{_labels_text(labels)}` | {family.type} | {meaning} |")
    return "\n".join(rows)


def _labels_text(labels: Mapping[str, list[str]]) -> str:
    if not labels:
        return ""
    parts = []
    for label, values in labels.items():
        if len(values) > MAX_LISTED_VALUES:
            parts.append(f'{label}="..."')
        else:
            parts.append(label + "=" + "\\|".join(f'"{value}"' for value in sorted(values)))
    return "{" + ",".join(parts) + "}"


def fill(text: str, parts: Mapping[str, str]) -> str:
    """``text`` with each generated part replaced; a part without its markers is an error."""
    for name, body in parts.items():
        pattern = re.compile(
            rf"(<!-- generated: {re.escape(name)} -->\n).*?(\n<!-- end: {re.escape(name)} -->)",
            re.DOTALL,
        )
        text, count = pattern.subn(lambda match, body=body: match[1] + body + match[2], text)
        if count != 1:
            raise ValueError(f"docs/admin.md: expected one generated part {name!r}, found {count}")
    return text
