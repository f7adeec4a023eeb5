"""What PromQL expressions read: metric names and label matchers, and what a scrape offers.

Not a PromQL parser: enough of the grammar to find every series name an
expression selects, for the expressions a dashboard and alert rules hold.
String literals, range and subquery brackets, Grafana's ``$variables``,
label matchers and grouping clauses (``by (...)``, ``on (...)``...) are
removed first; what is left of an identifier is then a function or
aggregation when a ``(`` follows it, a keyword when it is one, and
otherwise a series name.

A series name exists when the scrape holds it as Prometheus stores it: a
counter family ``x`` as ``x_total`` (never bare ``x``), a histogram as
``x_bucket``, ``x_count`` and ``x_sum``, a gauge as ``x``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

#: Binary operators, modifiers and literals that look like identifiers.
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)
#: Series Prometheus makes itself for every target; no scrape holds them.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_BRACKETS = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The series names ``expr`` selects."""
    text = _STRING.sub('""', expr)
    text = _BRACKETS.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in KEYWORDS:
            names.add(name)
    return names


def template_names(query: str) -> set[str]:
    """The series names a Grafana template variable's query reads.

    ``label_values(selector, label)`` reads the selector's names (the last
    argument is a label); ``label_values(label)`` reads none; anything else
    is an expression.
    """
    match = _LABEL_VALUES.match(query)
    if match:
        return metric_names(match.group(1))
    if query.strip().startswith("label_values("):
        return set()
    return metric_names(query)


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector: ``metric{label op "value"}``."""

    metric: str
    label: str
    op: str
    value: str


def matchers(expr: str) -> list[Matcher]:
    """Every ``label op "value"`` matcher of the selectors in ``expr`` that name a metric."""
    found = []
    for selector in _SELECTOR.finditer(expr):
        metric, body = selector.group(1), selector.group(2)
        for label, op, value in _MATCHER.findall(body):
            found.append(Matcher(metric, label, op, value))
    return found


@dataclass(frozen=True)
class Exposition:
    """The series names a scrape offers, and the labels each carries."""

    series: frozenset[str]
    labels: dict[str, frozenset[str]]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        """Read a Prometheus text-format scrape."""
        series: set[str] = set()
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            # The names a family's type gives, whether or not it has samples now.
            if family.type == "counter":
                series.add(f"{family.name}_total")
            elif family.type == "histogram":
                series.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
            elif family.type == "summary":
                series.update(f"{family.name}{suffix}" for suffix in ("", "_count", "_sum"))
            elif family.type == "info":
                series.add(f"{family.name}_info")
            else:
                series.add(family.name)
            for sample in family.samples:
                series.add(sample.name)
                labels.setdefault(sample.name, set()).update(sample.labels)
        return cls(frozenset(series), {k: frozenset(v) for k, v in labels.items()})

    def missing(self, names: set[str]) -> set[str]:
        """The names the scrape does not offer (series Prometheus makes itself aside)."""
        return {name for name in names if name not in self.series and name not in SYNTHETIC}
