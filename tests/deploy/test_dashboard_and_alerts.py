"""The Grafana dashboard and the alert rules read what a running instance really exports.

A real ``genesys-mux run`` (a cluster member with a Redis sink and a failing
webhook, against the emulator) is scraped over HTTP; every metric name the
dashboard's queries and the alert rules' expressions select must be in that
scrape, with the labels they match on. promtool lints the scrape, checks the
rules and runs their unit tests (deploy/prometheus/alerts_test.yml).
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from genesys_mux.core.events import ControlEvent
from tests.deploy.conftest import DEPLOY, HOOK_SECRET, Scrape, promtool, run_tool
from tests.deploy.promql import Exposition, matchers, metric_names, template_names

DASHBOARD = DEPLOY / "grafana" / "genesys-mux.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
RUNBOOK = DEPLOY.parent / "docs" / "operations" / "dashboards-and-alerts.md"

#: Labels the scrape cannot show: Prometheus adds them to every series of a target.
TARGET_LABELS = {"job", "instance"}
#: Label values the expressions may match, where the set is fixed by the code.
KNOWN_VALUES = {
    "kind": {kind.kind for kind in typing.get_args(ControlEvent)},
    "how": {"acquired", "handover", "released", "lost"},
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def template_queries() -> list[tuple[str, str]]:
    """(where, query) of every query variable."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(
                (
                    f"variable ${variable['name']}",
                    query["query"] if isinstance(query, dict) else query,
                )
            )
    return found


def alert_queries() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


# -- the name extraction itself ------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('rate(a_total{stream=~"x|y", job="by(z)"}[5m])', {"a_total"}),
        (
            'histogram_quantile(0.99, sum by (le, stream) (rate(h_bucket{job=~"$job"}'
            "[$__rate_interval])))",
            {"h_bucket"},
        ),
        ("a / on (instance) group_left (version) b_info", {"a", "b_info"}),
        ("count(g == 0) or vector(0)", {"g"}),
        ("g > 0.8 * 1073741824 and g offset 5m > 1e3", {"g"}),
        ("sum without (sink) (increase(c_total[1h:5m]))", {"c_total"}),
        ("max by (job) (u) > 0 unless on (job) absent(v)", {"u", "v"}),
        ('up{job="genesys-mux"} == bool 0', {"up"}),
    ],
)
def test_metric_names_are_the_selected_series(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_template_queries_name_the_selector_not_the_label() -> None:
    assert template_names('label_values(m{job=~"$job"}, instance)') == {"m"}
    assert template_names("label_values(job)") == set()


def test_counters_and_histograms_exist_under_their_stored_names() -> None:
    text = (
        "# HELP c_total A counter.\n# TYPE c_total counter\nc_total 1.0\n"
        "# HELP h A histogram.\n# TYPE h histogram\n"
        'h_bucket{le="+Inf"} 1.0\nh_count 1.0\nh_sum 0.5\n'
        "# HELP g A gauge.\n# TYPE g gauge\ng 2.0\n"
    )
    exposition = Exposition.parse(text)
    assert exposition.missing({"c_total", "h_bucket", "h_count", "h_sum", "g", "up"}) == set()
    # Prometheus stores no bare counter name, and a gauge has no buckets.
    assert exposition.missing({"c", "h", "g_bucket", "g_total", "nope"}) == {
        "c",
        "h",
        "g_bucket",
        "g_total",
        "nope",
    }


# -- the files against a real scrape --------------------------------------------


async def test_every_metric_the_dashboard_and_alerts_read_is_exported(scrape: Scrape) -> None:
    exposition = Exposition.parse(scrape.text)
    queries = dashboard_queries() + alert_queries()
    problems = []
    for where, expr in queries:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        for name in sorted(exposition.missing(names)):
            problems.append(f"{where}: {name} is not exported")
    for where, query in template_queries():
        for name in sorted(exposition.missing(template_names(query))):
            problems.append(f"{where}: {name} is not exported")
    for where, expr in queries:
        for matcher in matchers(expr):
            if matcher.label in TARGET_LABELS or matcher.metric not in exposition.labels:
                continue
            if matcher.label not in exposition.labels[matcher.metric]:
                problems.append(f"{where}: {matcher.metric} has no label {matcher.label!r}")
            known = KNOWN_VALUES.get(matcher.label)
            if known is not None and matcher.op in ("=", "=~"):
                for value in matcher.value.split("|"):
                    if value not in known:
                        problems.append(f"{where}: {matcher.label}={value!r} is never exported")
    assert not problems, "\n".join(problems)

    # The check itself catches a misspelt name and a counter without _total.
    (no_live,) = (expr for where, expr in alert_queries() if "NoLiveChannel" in where)
    broken = no_live.replace("genesys_mux_channel_live", "genesys_mux_channel_alive")
    assert exposition.missing(metric_names(broken)) == {"genesys_mux_channel_alive"}
    assert exposition.missing({"genesys_mux_stream_gaps"}) == {"genesys_mux_stream_gaps"}


async def test_promtool_finds_nothing_to_lint_in_a_real_scrape(scrape: Scrape) -> None:
    code, output = await run_tool(promtool(), "check", "metrics", stdin=scrape.text.encode())
    assert code == 0, output
    assert output.strip() == "", output
    # No credential of the run reaches the metrics.
    for secret in ("demo-secret", HOOK_SECRET, HOOK_SECRET.removeprefix("whsec_")):
        assert secret not in scrape.text
    # The scrape is the whole of it: build info, process and runtime collectors.
    names = Exposition.parse(scrape.text).series
    assert {"genesys_mux_build_info", "process_resident_memory_bytes", "python_info"} <= names


async def test_promtool_accepts_the_alert_rules() -> None:
    code, output = await run_tool(promtool(), "check", "rules", str(ALERTS))
    assert code == 0, output
    assert f"SUCCESS: {len(alert_rules())} rules found" in output, output


async def test_the_alert_rules_pass_their_unit_tests() -> None:
    code, output = await run_tool(promtool(), "test", "rules", str(ALERT_TESTS))
    assert code == 0, output
    assert "SUCCESS" in output, output


# -- the files' shape -----------------------------------------------------------


def test_dead_letter_signals_count_the_sinks_letters_too() -> None:
    """A stream's dead letters are in two counters: whatever reads one reads both.

    ``genesys_mux_stream_dead_lettered_total`` counts the buffer's letters
    (overflow, stop), ``genesys_mux_sink_dead_lettered_total`` those a sink
    gave up on; an alert or a panel reading the first alone missed every
    letter of a failing sink.
    """
    queries = dashboard_queries() + alert_queries()
    readers = [
        (where, expr)
        for where, expr in queries
        if "genesys_mux_stream_dead_lettered_total" in metric_names(expr)
    ]
    assert any("GenesysMuxDeadLetters" in where for where, _ in readers)
    assert len(readers) >= 3
    for where, expr in readers:
        assert "genesys_mux_sink_dead_lettered_total" in metric_names(expr), where


def test_every_alert_says_how_bad_for_how_long_and_what_to_do() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules), "alert names repeat"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"GenesysMux[A-Z]\w+", name), name
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["labels"]["service"] == "genesys-mux", name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), (name, key)
    # Each alert's runbook hint points at its section of the operations page.
    guide = RUNBOOK.read_text(encoding="utf-8")
    sections = set(re.findall(r"^### (\w+)$", guide, re.MULTILINE))
    assert sections == {rule["alert"] for rule in rules}, "runbook sections and alerts differ"
    tested = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    covered = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    assert covered <= {rule["alert"] for rule in rules}
    assert {"GenesysMuxNoLiveChannel", "GenesysMuxSinkFailing"} <= covered


def test_the_dashboard_follows_its_datasource_job_and_instance_variables() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "stream"} <= set(variables)
    all_panels = list(panels(board["panels"]))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    # Grafana would push overlapping panels around: the layout must tile.
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            # Every query honours the selection, or the panel would mix deployments.
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
