"""A real Prometheus scraping the real monitor: every dashboard query and every alert query returns
data, and the drift alerts' conditions are false on clean traffic and true under drift.

One module-scoped run (about 20 s): the monitor in-process (checks every second, windows of 300),
Prometheus (apt `prometheus`) on 127.0.0.1 running the project's prometheus.yml rewritten to scrape
it every second, with the generated alert rules. Traffic goes through HTTP in three phases:
  clean    600 held-out rows with their true prices (and a few invalid requests)
  concept  300 more held-out rows whose labels are 25% dearer (price_up_25): inputs unchanged
  data     300 rows of large stones (large_stones), no labels
After each phase a check runs, Prometheus scrapes it, and every alert condition is evaluated.
"""
from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from evaluation.scenarios import SCENARIOS, heldout_rows
from evaluation.simulate import Client
from monitoring.diamonds import as_payload
from tests.observability import ROOT, Prometheus, http, load_yaml, wait_until
from tools import gen_alerts, gen_dashboard

WINDOW = 300


def drive(client: Client, rows, labels: bool = True, batch: int = 100) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows.iloc[start:start + batch]
        ids = client.predict(as_payload(chunk))
        if labels:
            answer = client.feedback(list(zip(ids, chunk["price"].astype(float))))
            assert answer["accepted"] == len(ids)


def settle(client: Client, prometheus: Prometheus) -> dict:
    """Run a check now and wait until Prometheus has scraped its result (or a later one's)."""
    report = client.call("POST", "/drift/check")
    checked = time.time()

    def scraped():
        result = prometheus.query(f'drift_last_check_timestamp_seconds{{job="{gen_dashboard.JOB}"}}')
        return result and float(result[0]["value"][1]) >= checked - 0.5 and result

    wait_until(scraped, 15, "Prometheus to scrape the latest drift check")
    time.sleep(1.2)  # one more scrape: every gauge of that check is in
    return report


def evaluate_alerts(prometheus: Prometheus) -> dict[str, list[dict]]:
    """Each alert's condition as Prometheus evaluates it now: the series for which it holds."""
    return {alert.name: prometheus.query(alert.condition) for alert in gen_alerts.ALERTS}


@pytest.fixture(scope="module")
def run(small_artifact, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus-integration")
    # The generated rules, evaluated every second instead of every 30 s (conditions only: their
    # pending periods are unit-tested by promtool in test_configs.py).
    rules = tmp / "alert-rules.yml"
    document = load_yaml(ROOT / "prometheus" / "alert-rules.yml")
    for group in document["groups"]:
        group["interval"] = "1s"
    rules.write_text(yaml.safe_dump(document, sort_keys=False))
    config = MonitorConfig(host="127.0.0.1", port=0, check_interval=1.0, window=WINDOW, label_window=WINDOW,
                           db_path=None)
    monitor = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    prometheus = None
    try:
        target = monitor.url.removeprefix("http://")
        prometheus = Prometheus(tmp, [target], rule_files=[rules])
        client = Client(monitor.url)
        started = time.time()
        wait_until(lambda: prometheus.query(f'up{{job="{gen_dashboard.JOB}"}} == 1'), 20, "the first scrape")

        rng = np.random.default_rng(7)
        rows = heldout_rows()
        rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
        phases = {}

        drive(client, rows.iloc[:2 * WINDOW])
        for bad in ('{"carat": 1}', "{not json", '{"carat": 0.5, "cut": "Perfect", "color": "E", '
                                                 '"clarity": "VS1", "depth": 61.5, "table": 55}'):
            assert http("POST", monitor.url + "/predict", raw=bad)[0] == 400  # for "invalid requests by reason"
        phases["clean"] = (settle(client, prometheus), evaluate_alerts(prometheus))

        # the next 300 stones, each once (apply() would resample them with replacement), 25% dearer
        concept_rows = SCENARIOS["price_up_25"].sample(rows.iloc[2 * WINDOW:3 * WINDOW], WINDOW, rng, replace=False)
        drive(client, concept_rows)
        phases["concept"] = (settle(client, prometheus), evaluate_alerts(prometheus))

        data_rows = SCENARIOS["large_stones"].sample(rows.iloc[3 * WINDOW:], WINDOW, rng)
        drive(client, data_rows, labels=False)
        phases["data"] = (settle(client, prometheus), evaluate_alerts(prometheus))

        time.sleep(2)  # a few more scrapes so that rate() windows after the last traffic have points
        yield {"prometheus": prometheus, "monitor": monitor, "phases": phases, "started": started,
               "target": target}
    finally:
        if prometheus is not None:
            prometheus.stop()
        monitor.stop()


def _grafana_substitute(expr: str, run: dict) -> str:
    """Grafana's variables as Grafana would fill them for this run (scrape interval 1 s)."""
    seconds = max(5, math.ceil(time.time() - run["started"]))
    return (expr.replace("$__rate_interval", "4s")  # max(interval + scrape, 4 x scrape)
                .replace("$__interval", "1s")
                .replace("$__range", f"{seconds}s")
                .replace("$instance", ".+"))  # the variable's "All" value (allValue)


def _finite(values) -> bool:
    return any(math.isfinite(float(v)) for _, v in values)


def test_the_monitor_is_scraped_under_the_project_job_name(run):
    (series,) = run["prometheus"].query(f'up{{job="{gen_dashboard.JOB}"}}')
    assert series["metric"]["instance"] == run["target"] and series["value"][1] == "1"


def test_every_dashboard_query_returns_data(run):
    prometheus, now = run["prometheus"], time.time()
    empty = []
    checked = 0
    for panel in gen_dashboard.DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            expr = _grafana_substitute(target["expr"], run)
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            if target.get("instant"):
                result = prometheus.query(expr)
                ok = bool(result)
            else:
                result = prometheus.query_range(expr, run["started"], now, 1)
                ok = any(_finite(series["values"]) for series in result)
            checked += 1
            if not ok:
                empty.append(f"{panel['title']} / {target['refId']}: {expr}")
    assert checked >= 40
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_the_dashboard_variable_lists_the_monitor(run):
    (variable,) = [v for v in gen_dashboard.DASHBOARD["templating"]["list"] if v["type"] == "query"]
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
    series = run["prometheus"].api("series", **{"match[]": match.group(1)})
    assert run["target"] in {s[match.group(2)] for s in series}


def test_every_alert_query_returns_data_and_every_detail_matches_its_instances(run):
    """What Grafana's rules query (A and one query per detail) returns data, and each detail's
    series carry a subset of the alert instance's labels: that is how Grafana fills $values.<name>."""
    prometheus = run["prometheus"]
    for alert in gen_alerts.ALERTS:
        instances = prometheus.query(alert.query)
        assert instances, f"{alert.name}: {alert.query} returned nothing"
        for series in instances:
            assert set(series["metric"]) == set(alert.by), (alert.name, series["metric"])
        for detail in alert.details:
            values = prometheus.query(detail.query)
            assert values, f"{alert.name}/{detail.name}: {detail.query} returned nothing"
            for series in instances:
                labels = series["metric"]
                matching = [v for v in values if v["metric"].items() <= labels.items()]
                assert len(matching) == 1, (alert.name, detail.name, labels, values)


def test_prometheus_loaded_and_evaluates_every_generated_rule(run):
    groups = run["prometheus"].api("rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {a.name for a in gen_alerts.ALERTS}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


def test_drift_conditions_are_false_on_clean_traffic(run):
    report, alerts = run["phases"]["clean"]
    assert report["data_drift"]["window_size"] == WINDOW and report["concept_drift"]["labelled_size"] == WINDOW
    assert not report["data_drift"]["detected"] and not report["concept_drift"]["detected"]
    assert alerts["DataDrift"] == [] and alerts["ConceptDrift"] == []


def test_prices_up_for_the_same_stones_is_concept_drift_only(run):
    report, alerts = run["phases"]["concept"]
    assert report["concept_drift"]["detected"]
    assert not report["data_drift"]["detected"], report["data_drift"]
    (fired,) = alerts["ConceptDrift"]
    assert fired["metric"]["group"] == run["target"]   # a monitor with its own store: a group of one
    assert alerts["DataDrift"] == []
    concept = next(a for a in gen_alerts.ALERTS if a.name == "ConceptDrift")
    bias = run["prometheus"].query(next(d for d in concept.details if d.name == "bias").query)
    assert 15 < float(bias[0]["value"][1]) < 35, "actual prices ~25% above predictions"


def test_larger_stones_are_data_drift_named_by_feature(run):
    report, alerts = run["phases"]["data"]
    assert report["data_drift"]["detected"]
    drifted = {n for n, f in report["data_drift"]["features"].items() if f["detected"]}
    fired = {s["metric"]["feature"] for s in alerts["DataDrift"]}
    assert "carat" in fired
    assert fired == drifted, "one alert instance per feature the monitor flagged"


def test_health_alerts_stay_quiet_while_the_monitor_works(run):
    for phase, (_, alerts) in run["phases"].items():
        for name in ("MonitorDown", "DriftChecksStalled", "DriftCheckFailures"):
            assert alerts[name] == [], (phase, name, alerts[name])
