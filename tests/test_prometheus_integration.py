"""A real Prometheus scraping the real monitor: every dashboard query and every alert query returns
data, and the drift alerts' conditions are false on clean traffic and true under drift.

One module-scoped run (about 20 s): the monitor in-process (checks every second, windows of 300),
Prometheus (apt `prometheus`) on 127.0.0.1 running the project's prometheus.yml rewritten to scrape
it every second, with the generated alert rules. Traffic goes through HTTP in three phases:
  clean    600 held-out rows with their true prices (and a few invalid requests)
  concept  300 more held-out rows whose labels are 25% dearer (price_up_25): inputs unchanged
  data     300 rows of large stones (large_stones), no labels
Beside it, a second monitor serves a classifier (cut from the other columns of the diamonds table,
trained by train.py's CSV path), scraped by the same Prometheus as a group of its own: 300 clean
labelled rows in the clean phase, 300 whose Premium stones are labelled Ideal in the concept phase.
After each phase a check runs on both, Prometheus scrapes them, and every alert condition is evaluated.
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
from monitoring.diamonds import DATA_DIR, as_payload
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


def settle(client: Client, prometheus: Prometheus, *others: Client) -> dict:
    """Run a check now on each monitor and wait until Prometheus has scraped every result (or later
    ones); returns the first monitor's report."""
    report = client.call("POST", "/drift/check")
    for other in others:
        other.call("POST", "/drift/check")
    checked = time.time()

    def scraped():
        result = prometheus.query(f'drift_last_check_timestamp_seconds{{job="{gen_dashboard.JOB}"}}')
        return (len(result) == 1 + len(others) and all(float(r["value"][1]) >= checked - 2.5 for r in result)
                and result)

    wait_until(scraped, 15, "Prometheus to scrape the latest drift checks")
    time.sleep(1.2)  # one more scrape: every gauge of that check is in
    return report


def _classifier_rows(split, start: int, stop: int) -> list[dict]:
    rows = split.X_test.iloc[start:stop]
    return [{k: (v if isinstance(v, str) else float(v)) for k, v in row.items()} for row in rows.to_dict("records")]


def drive_classifier(client: Client, split, start: int, stop: int, relabel: dict | None = None) -> None:
    ids = client.predict(_classifier_rows(split, start, stop))
    labels = split.y_test.iloc[start:stop].replace(relabel or {})
    assert client.feedback(list(zip(ids, labels)))["accepted"] == len(ids)


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
    import train  # the classifier: the diamonds table's cut, trained as `train.py --data ... --target cut` does

    csv, quiet = DATA_DIR / "diamonds.csv", (lambda _: None)
    classifier_artifact = train.train_csv(csv, "cut", n_estimators=10, n_jobs=1, say=quiet)
    split = train.split_csv(csv, "cut", say=quiet)
    classifier = start_monitor(MonitorConfig(host="127.0.0.1", port=0, check_interval=1.0, window=WINDOW,
                                             label_window=WINDOW, db_path=None),
                               artifact=classifier_artifact, registry=CollectorRegistry())
    prometheus = None
    try:
        target = monitor.url.removeprefix("http://")
        classifier_target = classifier.url.removeprefix("http://")
        prometheus = Prometheus(tmp, [target, classifier_target], rule_files=[rules])
        client, classifier_client = Client(monitor.url), Client(classifier.url)
        started = time.time()
        wait_until(lambda: len(prometheus.query(f'up{{job="{gen_dashboard.JOB}"}} == 1')) == 2, 20, "the first scrapes")

        rng = np.random.default_rng(7)
        rows = heldout_rows()
        rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
        phases = {}

        drive(client, rows.iloc[:2 * WINDOW])
        for bad in ('{"carat": 1}', "{not json", '{"carat": 0.5, "cut": "Perfect", "color": "E", '
                                                 '"clarity": "VS1", "depth": 61.5, "table": 55}'):
            assert http("POST", monitor.url + "/predict", raw=bad)[0] == 400  # for "invalid requests by reason"
        drive_classifier(classifier_client, split, 0, WINDOW)
        phases["clean"] = (settle(client, prometheus, classifier_client), evaluate_alerts(prometheus))
        starts = {"clean": _starts(prometheus)}

        # the next 300 stones, each once (apply() would resample them with replacement), 25% dearer
        concept_rows = SCENARIOS["price_up_25"].sample(rows.iloc[2 * WINDOW:3 * WINDOW], WINDOW, rng, replace=False)
        drive(client, concept_rows)
        drive_classifier(classifier_client, split, WINDOW, 2 * WINDOW, relabel={"Premium": "Ideal"})
        phases["concept"] = (settle(client, prometheus, classifier_client), evaluate_alerts(prometheus))
        starts["concept"] = _starts(prometheus)

        data_rows = SCENARIOS["large_stones"].sample(rows.iloc[3 * WINDOW:], WINDOW, rng)
        drive(client, data_rows, labels=False)
        phases["data"] = (settle(client, prometheus, classifier_client), evaluate_alerts(prometheus))
        starts["data"] = _starts(prometheus)
        cusums = {kind: prometheus.query(f'{kind}_drift_cusum_ratio{{job="{gen_dashboard.JOB}"}}')
                  for kind in ("data", "concept")}
        classifier_report = classifier_client.call("GET", "/drift")

        time.sleep(2)  # a few more scrapes so that rate() windows after the last traffic have points
        yield {"prometheus": prometheus, "monitor": monitor, "phases": phases, "started": started,
               "target": target, "classifier_target": classifier_target, "classifier": classifier,
               "starts": starts, "cusums": cusums, "classifier_report": classifier_report, "ended": time.time()}
    finally:
        if prometheus is not None:
            prometheus.stop()
        monitor.stop()
        classifier.stop()


def _starts(prometheus: Prometheus) -> dict:
    """drift_since_timestamp_seconds now, by (instance, kind), and what the dashboard's "since" stats
    read now (by kind: their query's values, -1 for "no drift")."""
    out = {(s["metric"]["instance"], s["metric"]["kind"]): float(s["value"][1])
           for s in prometheus.query(f'drift_since_timestamp_seconds{{job="{gen_dashboard.JOB}"}}')}
    panels = {p["id"]: p for p in gen_dashboard.DASHBOARD["panels"]}
    for kind in ("data", "concept"):
        (query,) = panels[gen_dashboard.PANEL_IDS[f"{kind}-since"]]["targets"]
        out[kind] = [float(s["value"][1]) for s in prometheus.query(query["expr"].replace("$instance", ".+"))]
    return out


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
    series = run["prometheus"].query(f'up{{job="{gen_dashboard.JOB}"}}')
    assert {s["metric"]["instance"] for s in series} == {run["target"], run["classifier_target"]}
    assert all(s["value"][1] == "1" for s in series)


def test_the_classifier_is_scraped_with_its_task_and_its_classes(run):
    prometheus = run["prometheus"]
    (info,) = prometheus.query(f'model_info{{job="{gen_dashboard.JOB}", task="classification"}}')
    assert info["metric"]["instance"] == run["classifier_target"] and info["metric"]["name"] == "diamonds-cut"
    by_class = prometheus.query(f'predictions_by_class_total{{job="{gen_dashboard.JOB}"}}')
    assert {s["metric"]["class"] for s in by_class} == {"Fair", "Good", "Ideal", "Premium", "Very Good"}
    assert sum(float(s["value"][1]) for s in by_class) >= 2 * WINDOW
    (accuracy,) = prometheus.query(f'concept_drift_window_accuracy{{job="{gen_dashboard.JOB}"}} >= 0')
    assert accuracy["metric"]["instance"] == run["classifier_target"]


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
    assert alerts["DataDrift"] == [] and alerts["ConceptDrift"] == []  # the classifier's included


def test_prices_up_for_the_same_stones_is_concept_drift_only(run):
    report, alerts = run["phases"]["concept"]
    assert report["concept_drift"]["detected"]
    assert not report["data_drift"]["detected"], report["data_drift"]
    # a monitor with its own store is a group of one: the regressor's prices and the classifier's
    # relabelled class each fire once
    assert {a["metric"]["group"] for a in alerts["ConceptDrift"]} == {run["target"], run["classifier_target"]}
    assert len(alerts["ConceptDrift"]) == 2
    assert alerts["DataDrift"] == []
    concept = next(a for a in gen_alerts.ALERTS if a.name == "ConceptDrift")
    bias = run["prometheus"].query(next(d for d in concept.details if d.name == "bias").query)
    (bias,) = [b for b in bias if b["metric"]["group"] == run["target"]]
    assert 15 < float(bias["value"][1]) < 35, "actual prices ~25% above predictions"


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


def test_since_when_is_nan_on_clean_traffic_and_dated_within_the_run_under_drift(run):
    starts, regressor, classifier = run["starts"], run["target"], run["classifier_target"]
    clean = {k: v for k, v in starts["clean"].items() if isinstance(k, tuple)}
    assert len(clean) == 4  # both kinds, both monitors, from the first check on
    assert all(math.isnan(v) for v in clean.values())
    assert starts["clean"]["data"] == starts["clean"]["concept"] == [-1]  # the stats read "no drift"
    # prices up: the regressor's concept drift is dated within the run; its inputs did not drift
    assert run["started"] <= starts["concept"][(regressor, "concept")] <= run["ended"]
    assert math.isnan(starts["concept"][(regressor, "data")])
    # a classifier's concept drift has no start estimate: NaN although detected (the stat reads "start unknown")
    assert run["phases"]["concept"][1]["ConceptDrift"] and math.isnan(starts["concept"][(classifier, "concept")])
    assert run["started"] <= starts["data"][(regressor, "data")] <= run["ended"]
    # the stats: the earliest start of the monitors shown, in milliseconds (Grafana's dateTimeFromNow)
    assert starts["concept"]["concept"] == [1000 * starts["concept"][(regressor, "concept")]]
    assert starts["concept"]["data"] == [-1]
    assert starts["data"]["data"] == [1000 * starts["data"][(regressor, "data")]]


def test_each_cusum_the_reports_name_is_a_series_and_a_classifiers_labels_have_none(run):
    reports = {run["target"]: run["phases"]["data"][0], run["classifier_target"]: run["classifier_report"]}
    for kind, label in (("data", "feature"), ("concept", "segment")):
        for instance, report in reports.items():
            series = [s for s in run["cusums"][kind] if s["metric"]["instance"] == instance]
            subjects = ((report[f"{kind}_drift"].get("sequential") or {}).get("subjects")) or {}
            assert {s["metric"][label] for s in series} == set(subjects), (kind, instance)
            assert all(float(s["value"][1]) >= 0 for s in series)
    assert run["cusums"]["concept"], "the regressor's labels have CUSUMs"
    assert not (run["classifier_report"]["concept_drift"].get("sequential") or {}).get("subjects")
