"""Links to the drift report from Grafana and from the Discord alerts lead to places that exist.

The dashboard (tools/gen_dashboard.py) links to the page through a textbox variable, `monitor_url`;
the alert rules (tools/gen_alerts.py) carry `report_path`, which the Discord contact point puts after
${MONITOR_PUBLIC_URL}. Here both are filled in as Grafana fills them (its variable interpolation,
its environment expansion of provisioning settings), the contact point's message is rendered by
Alertmanager's own template engine (amtool), and every anchor is looked up on a page the monitor
really served.
"""
from __future__ import annotations

import json
import re

import pytest
from prometheus_client import CollectorRegistry

import monitor as monitor_module
from monitor import MonitorConfig, start_monitor
from monitoring import report
from tests.helpers import heldout_frame, request
from tests.observability import ROOT, load_yaml, run_tool, tool
from tests.report_support import CATEGORICAL, NUMERIC, PageOutline, check, clean_rows, send
from tools import gen_dashboard

PUBLIC = "https://monitor.example.com:8443"
FEATURE_PANELS = ("feature-distance", "feature-p-value", "feature-table", "detected-timeline")


@pytest.fixture(scope="module")
def page_ids(small_artifact) -> set[str]:
    """The ids on a report page the monitor served after one check."""
    handle = start_monitor(MonitorConfig(port=0, check_interval=0, window=200, label_window=100, db_path=None),
                           artifact=small_artifact, registry=CollectorRegistry())
    try:
        send(handle.url, clean_rows(heldout_frame(), 200))
        check(handle.url)
        status, _, html = request(handle.url, "GET", report.REPORT_PATH)
        assert status == 200
    finally:
        handle.stop()
    return set(PageOutline(html).ids)


def _fill_grafana_link(url: str, variable_value: str, feature: str) -> str:
    """What Grafana makes of a link: ${monitor_url:raw} as typed, field/data variables as the value."""
    url = url.replace("${monitor_url:raw}", variable_value)
    return re.sub(r"\$\{__(field\.labels|data\.fields)\.feature\}", feature, url)


def _split(url: str) -> tuple[str, str]:
    base, _, anchor = url.partition("#")
    return base, anchor


def test_one_path_for_the_page_everywhere():
    assert gen_dashboard.REPORT_PATH == report.REPORT_PATH == "/drift/report"
    assert report.REPORT_PATH in monitor_module.ROUTES


# ----------------------------------------------------------------------------------- Grafana

def test_the_dashboard_holds_the_monitor_url_in_a_textbox_variable():
    variables = {v["name"]: v for v in gen_dashboard.DASHBOARD["templating"]["list"]}
    variable = variables["monitor_url"]
    assert variable["type"] == "textbox" and variable["query"] == "http://localhost:5000"
    assert variable["current"]["value"] == "http://localhost:5000"
    # the compose file publishes the monitor there by default
    compose = load_yaml(ROOT / "docker-compose.yml")
    assert any(p.endswith(":5000:5000") for p in compose["services"]["monitor"]["ports"])


def test_the_dashboard_links_to_the_page(page_ids):
    (link,) = [link for link in gen_dashboard.DASHBOARD["links"] if "drift/report" in link["url"]]
    assert link["type"] == "link" and link["targetBlank"] is True
    assert _fill_grafana_link(link["url"], PUBLIC, "") == PUBLIC + "/drift/report"
    panels = {p["id"]: p for p in gen_dashboard.DASHBOARD["panels"]}
    for key, anchor in (("data-drift", "data"), ("concept-drift", "concept")):
        (panel_link,) = panels[gen_dashboard.PANEL_IDS[key]]["links"]
        assert _split(_fill_grafana_link(panel_link["url"], PUBLIC, "")) == (PUBLIC + "/drift/report", anchor)
        assert anchor in page_ids


def test_every_per_feature_panel_links_each_feature_to_its_card(page_ids):
    panels = {p["id"]: p for p in gen_dashboard.DASHBOARD["panels"]}
    for key in FEATURE_PANELS:
        panel = panels[gen_dashboard.PANEL_IDS[key]]
        (link,) = panel["fieldConfig"]["defaults"]["links"]
        # data links percent-encode variables unless told otherwise: the URL must stay raw
        assert link["url"].startswith("${monitor_url:raw}/drift/report#feature-"), (key, link["url"])
        for feature in NUMERIC + CATEGORICAL:
            base, anchor = _split(_fill_grafana_link(link["url"], PUBLIC, feature))
            assert base == PUBLIC + "/drift/report" and anchor == f"feature-{feature}"
            assert anchor in page_ids, f"{key}: no card #{anchor} on the page"
            assert feature in _fill_grafana_link(link["title"], PUBLIC, feature)
    # series that are not features (the Holm thresholds, the concept row) do not link to a feature
    overrides = {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
                 for key in ("feature-p-value", "detected-timeline")
                 for o in panels[gen_dashboard.PANEL_IDS[key]]["fieldConfig"]["overrides"]}
    assert overrides["alpha / k.*"]["links"] == [] and overrides["alpha \\(family.*"]["links"] == []
    (concept,) = overrides["concept \\(labels\\)"]["links"]
    assert concept["url"].endswith("/drift/report#concept")


# ----------------------------------------------------------------------------------- alerts

def _grafana_expand(text: str, env: dict[str, str]) -> str:
    """Grafana's expansion of provisioning settings: $NAME and ${NAME} from the environment, $$ -> $."""
    keep = "\0"
    text = text.replace("$$", keep)
    text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)
    return text.replace(keep, "$")


def _rules(path) -> dict[str, dict]:
    document = load_yaml(path)
    return {r.get("title") or r.get("alert"): r for g in document["groups"] for r in g["rules"]}


def test_drift_rules_carry_the_place_on_the_page_in_both_rule_files(page_ids):
    grafana = _rules(ROOT / "grafana-provisioning" / "alerting" / "rules.yaml")
    prometheus = _rules(ROOT / "prometheus" / "alert-rules.yml")
    expected = {"DataDrift": "/drift/report#feature-{{ $labels.feature }}", "ConceptDrift": "/drift/report#concept"}
    for name in grafana:
        assert grafana[name]["annotations"].get("report_path") == expected.get(name), name
        assert prometheus[name]["annotations"].get("report_path") == expected.get(name), name
    for feature in NUMERIC + CATEGORICAL:
        assert f"feature-{feature}" in page_ids
    assert "concept" in page_ids


def test_compose_gives_grafana_and_the_monitor_the_public_url():
    compose = load_yaml(ROOT / "docker-compose.yml")
    for service in ("grafana", "monitor"):
        assert compose["services"][service]["environment"]["MONITOR_PUBLIC_URL"] == \
            "${MONITOR_PUBLIC_URL:-http://localhost:5000}", service
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["MONITOR_PUBLIC_URL"] == "http://localhost:5000"


def _alert(name: str, labels: dict, annotations: dict) -> dict:
    return {"status": "firing", "labels": {"alertname": name, **labels},
            "annotations": {"summary": f"{name} summary", "description": f"{name} description",
                            "dashboard": "http://localhost:3000/d/model-monitoring/model-monitoring", **annotations},
            "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
            "fingerprint": name}


@pytest.mark.parametrize("name, labels, anchor", [
    ("DataDrift", {"feature": "carat"}, "feature-carat"),
    ("ConceptDrift", {}, "concept"),
    ("MonitorDown", {}, None),
])
def test_the_discord_message_links_to_the_alerts_place_on_the_page(name, labels, anchor, tmp_path, page_ids):
    (contact_point,) = load_yaml(ROOT / "grafana-provisioning" / "alerting" / "contact-points.yaml")["contactPoints"]
    message = _grafana_expand(contact_point["receivers"][0]["settings"]["message"], {"MONITOR_PUBLIC_URL": PUBLIC})
    rule = _rules(ROOT / "grafana-provisioning" / "alerting" / "rules.yaml")[name]
    annotations = {}
    if "report_path" in rule["annotations"]:  # Grafana fills $labels into annotations
        annotations["report_path"] = rule["annotations"]["report_path"].replace(
            "{{ $labels.feature }}", labels.get("feature", ""))
    data = {"receiver": "discord", "status": "firing", "alerts": [_alert(name, labels, annotations)],
            "groupLabels": {"alertname": name}, "commonLabels": {"alertname": name, **labels},
            "commonAnnotations": {}, "externalURL": "http://localhost:9093"}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "none.tmpl").write_text("")
    result = run_tool([tool("amtool"), "template", "render", f"--template.glob={tmp_path / 'none.tmpl'}",
                       f"--template.text={message}", f"--template.data={tmp_path / 'data.json'}"])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("Drift report: ")]
    if anchor is None:
        assert lines == [], "only drift alerts link to the drift report"
        return
    assert lines == [f"Drift report: {PUBLIC}/drift/report#{anchor}"], result.stdout
    assert anchor in page_ids
