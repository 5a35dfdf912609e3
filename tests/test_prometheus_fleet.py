"""A real Prometheus scraping a fleet: three real monitor processes sharing one real PostgreSQL
store (tests/postgres.py), scraped every second by Prometheus 2.42 (apt `prometheus`) running the
project's prometheus.yml with its generated alert rules. The replicas are given the label that
`dns_sd_configs` gives the compose service's replicas (`__meta_dns_name="replica"`), so the
project's own relabelling makes them one `group`, "fleet:replica", as in production.

Traffic is spread round-robin over the replicas, each replica sent the labels of its neighbour's
predictions; a fleet check runs after each phase (clean held-out rows, then large stones). Then
every dashboard query and every alert query returns data, and a drift alert's condition holds once
for the fleet (one series per drifted feature), not once per replica, although each of the three
replicas reports the fleet's drift.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from evaluation.scenarios import SCENARIOS, heldout_rows
from monitoring.diamonds import as_payload
from tests.helpers import request
from tests.observability import ROOT, Prometheus, load_yaml, wait_until
from tests.test_fleet import Replica
from tests.test_prometheus_integration import _finite, _grafana_substitute, evaluate_alerts
from tools import gen_alerts, gen_dashboard

WINDOW = 300   # the replicas' --window and --label-window (tests/test_fleet.py's Replica)
FLEET = "fleet:replica"


def _spread(replicas: list[Replica], rows, labels: bool) -> None:
    """Rows round-robin over the replicas in lists of 20; each list's labels go to the next one."""
    for k, start in enumerate(range(0, len(rows), 20)):
        chunk = rows.iloc[start:start + 20]
        status, answer = replicas[k % len(replicas)].post("/predict", as_payload(chunk))
        assert status == 200, answer
        if labels:
            sent = [{"id": i, "actual": float(p)} for i, p in zip(answer["ids"], chunk["price"])]
            status, joined = replicas[(k + 1) % len(replicas)].post("/feedback", sent)
            assert (status, joined) == (200, {"accepted": len(sent), "unknown": []})


def _settle(replicas: list[Replica], prometheus: Prometheus) -> dict:
    """A fleet check now, on the first replica; wait until Prometheus scraped it from all three."""
    status, report = replicas[0].post("/drift/check")
    assert status == 200 and report["scope"] == "fleet", report
    checked = time.time()

    def scraped():
        result = prometheus.query(f'drift_last_check_timestamp_seconds{{job="{gen_dashboard.JOB}"}} >= {checked - 1}')
        return len(result) == len(replicas) and result

    wait_until(scraped, 20, "every replica to serve the fleet's check and Prometheus to scrape it")
    time.sleep(1.5)   # one more scrape: every gauge of that check is in
    return report


@pytest.fixture(scope="module")
def run(small_artifact_path, postgres_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus-fleet")
    rules = tmp / "alert-rules.yml"   # evaluated every second; pending periods: promtool's tests
    document = load_yaml(ROOT / "prometheus" / "alert-rules.yml")
    for group in document["groups"]:
        group["interval"] = "1s"
    rules.write_text(yaml.safe_dump(document, sort_keys=False))
    db = postgres_server.new_database()
    # a fleet check every second (one replica's), which every replica takes up at its next tick
    replicas = [Replica(small_artifact_path, db, f"replica-{k}", interval=1.0) for k in range(3)]
    prometheus = None
    try:
        for r in replicas:
            r.wait_serving()
        targets = [r.url.removeprefix("http://") for r in replicas]
        prometheus = Prometheus(tmp, targets, rule_files=[rules], target_labels={"__meta_dns_name": "replica"})
        started = time.time()
        wait_until(lambda: len(prometheus.query(f'up{{job="{gen_dashboard.JOB}"}} == 1')) == 3, 20,
                   "the first scrape of all three")
        rng = np.random.default_rng(11)
        rows = heldout_rows()
        rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
        phases = {}
        _spread(replicas, rows.iloc[:WINDOW], labels=True)
        for r in replicas:   # for "invalid requests by reason"
            assert request(r.url, "POST", "/predict", raw=b"{not json")[0] == 400
        phases["clean"] = (_settle(replicas, prometheus), evaluate_alerts(prometheus))
        drifted = SCENARIOS["large_stones"].sample(rows.iloc[WINDOW:], WINDOW, rng)
        _spread(replicas, drifted, labels=False)
        phases["data"] = (_settle(replicas, prometheus), evaluate_alerts(prometheus))
        time.sleep(2)   # a few more scrapes, so that rate() windows after the last traffic have points
        yield {"prometheus": prometheus, "replicas": replicas, "targets": targets, "phases": phases,
               "started": started}
    finally:
        if prometheus is not None:
            prometheus.stop()
        for r in replicas:
            r.stop()


def test_the_three_replicas_are_one_group(run):
    up = run["prometheus"].query(f'up{{job="{gen_dashboard.JOB}"}}')
    assert sorted(s["metric"]["instance"] for s in up) == sorted(run["targets"])
    assert {s["metric"]["group"] for s in up} == {FLEET} and all(s["value"][1] == "1" for s in up)


# A classifier's series: NaN or absent for this fleet of regressors (tests/test_prometheus_integration.py
# scrapes a classifier and checks these queries return data there).
_CLASSIFIER_ONLY = ("accuracy", "log_loss", "predictions_by_class", "task=\"classification\"")


def test_every_dashboard_query_returns_data(run):
    prometheus, now = run["prometheus"], time.time()
    empty, checked = [], 0
    for panel in gen_dashboard.DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            if any(name in target["expr"] for name in _CLASSIFIER_ONLY):
                continue
            expr = _grafana_substitute(target["expr"], run)
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            if target.get("instant"):
                ok = bool(prometheus.query(expr))
            else:
                ok = any(_finite(s["values"]) for s in prometheus.query_range(expr, run["started"], now, 1))
            checked += 1
            if not ok:
                empty.append(f"{panel['title']} / {target['refId']}: {expr}")
    assert checked >= 40
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_every_alert_query_returns_data_once_per_group_or_instance(run):
    prometheus = run["prometheus"]
    for alert in gen_alerts.ALERTS:
        instances = prometheus.query(alert.query)
        assert instances, f"{alert.name}: {alert.query} returned nothing"
        for series in instances:
            assert set(series["metric"]) == set(alert.by), (alert.name, series["metric"])
        keys = [tuple(s["metric"][k] for k in alert.by) for s in instances]
        assert len(keys) == len(set(keys)), (alert.name, keys)
        if "group" in alert.by:   # the fleet's drift: one series for the group, not one per replica
            assert {s["metric"]["group"] for s in instances} == {FLEET}, (alert.name, instances)
        if "instance" in alert.by:   # serving health: one per replica
            assert sorted(s["metric"]["instance"] for s in instances) == sorted(run["targets"]), alert.name
        for detail in alert.details:
            assert prometheus.query(detail.query), f"{alert.name}/{detail.name}: {detail.query} returned nothing"


def test_prometheus_evaluates_every_generated_rule(run):
    groups = run["prometheus"].api("rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {a.name for a in gen_alerts.ALERTS}
    assert all(rule["health"] == "ok" for rule in rules.values()), rules


def test_no_drift_alert_on_clean_traffic_spread_over_the_fleet(run):
    report, alerts = run["phases"]["clean"]
    assert report["data_drift"]["window_size"] == WINDOW and report["concept_drift"]["labelled_size"] == WINDOW
    assert alerts["DataDrift"] == [] and alerts["ConceptDrift"] == []


def test_drift_spread_over_the_replicas_fires_once_for_the_fleet(run):
    report, alerts = run["phases"]["data"]
    assert report["data_drift"]["detected"] and report["data_drift"]["window_size"] == WINDOW
    drifted = {n for n, f in report["data_drift"]["features"].items() if f["detected"]}
    assert "carat" in drifted
    # every replica reports the fleet's drift ...
    per_replica = run["prometheus"].query(f'data_drift_feature_detected{{job="{gen_dashboard.JOB}", feature="carat"}} == 1')
    assert sorted(s["metric"]["instance"] for s in per_replica) == sorted(run["targets"])
    # ... and the alert condition holds once per drifted feature, for the fleet
    fired = [(s["metric"]["feature"], s["metric"]["group"]) for s in alerts["DataDrift"]]
    assert sorted(fired) == sorted((feature, FLEET) for feature in drifted)


def test_health_alerts_stay_quiet_while_the_fleet_works(run):
    for phase, (_, alerts) in run["phases"].items():
        for name in ("MonitorDown", "DriftChecksStalled", "DriftCheckFailures"):
            assert alerts[name] == [], (phase, name, alerts[name])
