"""Write the Grafana dashboard "Model Monitoring" (grafana-provisioning/dashboards/model-monitoring.json).

    python -m tools.gen_dashboard           # rewrite the JSON
    python -m tools.gen_dashboard --check   # exit 1 if the committed JSON differs (tests/test_configs.py)

The JSON is what Grafana's file provisioning reads: a plain dashboard model (no {"dashboard": ...}
wrapper, no ${DS_...} import inputs), every panel and query naming the provisioned Prometheus
datasource by its fixed uid. It is generated so that the panels' boilerplate stays consistent;
edit the panel list below, not the JSON.

Queries select `job="model-monitor"` (the scrape job in prometheus.yml) and `instance=~"$instance"`
(a dashboard variable listing the scraped monitors, "All" by default). Drift series are drawn per
`group` (prometheus.yml's relabelling: a monitor with its own store, or a fleet of replicas sharing
one), so that a fleet's drift, which each replica reports alike, is one line, not one per replica.

Links lead to the monitor's drift report page (GET /drift/report): a dashboard link, panel links on
the drift panels and data links on the per-feature panels (to the feature's card on the page). Grafana
cannot know where a browser reaches the monitor (provisioning does not expand environment variables
in dashboard JSON), so a textbox variable `monitor_url` holds it, http://localhost:5000 by default
(docker-compose.yml's port): type another address in it, or open the dashboard with
`?var-monitor_url=https://monitor.example.com`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "grafana-provisioning" / "dashboards" / "model-monitoring.json"

JOB = "model-monitor"  # job_name in prometheus.yml
DATASOURCE_UID = "prometheus"  # uid in grafana-provisioning/datasources/prometheus.yml
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
DASHBOARD_UID = "model-monitoring"
DASHBOARD_TITLE = "Model Monitoring"
DASHBOARD_URL_PATH = f"/d/{DASHBOARD_UID}/model-monitoring"

M = f'job="{JOB}", instance=~"$instance"'  # matchers shared by every query

REPORT_PATH = "/drift/report"  # the monitor's drift report page (monitoring/report.py)
MONITOR_URL_VARIABLE = "monitor_url"
DEFAULT_MONITOR_URL = "http://localhost:5000"
# `:raw`: data links percent-encode variables by default, which would turn the URL into one path segment.
REPORT_URL = f"${{{MONITOR_URL_VARIABLE}:raw}}{REPORT_PATH}"


def report_link(title: str, anchor: str = "") -> dict:
    """A panel or data link to the drift report page (#data, #concept, #feature-<name>), in a new tab."""
    return {"title": title, "url": REPORT_URL + anchor, "targetBlank": True}


FEATURE_REPORT_LINK = report_link("Drift report: ${__field.labels.feature}", "#feature-${__field.labels.feature}")


def sel(metric: str, extra: str = "") -> str:
    """`metric{job="model-monitor", instance=~"$instance"[, extra]}`."""
    return f"{metric}{{{M}{', ' + extra if extra else ''}}}"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None) -> dict:
    t = {"datasource": DATASOURCE, "refId": ref, "editorMode": "code", "expr": expr,
         "legendFormat": legend or "__auto", "range": not instant, "instant": instant}
    if fmt:
        t["format"] = fmt
    return t


def targets(*specs) -> list[dict]:
    """targets((expr, legend), ...) with refIds A, B, C..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(specs)]


def thresholds(*steps) -> dict:
    """thresholds(("green", None), ("red", 1)): absolute steps, the first from -infinity."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


OK_DRIFT = [{"type": "value", "options": {"0": {"text": "no drift", "color": "green", "index": 0},
                                          "1": {"text": "DRIFT", "color": "red", "index": 1}}}]
SINCE_MAPPINGS = [  # the "since" stats' query: -1 while nothing drifts, NaN for a drift without a start
    {"type": "value", "options": {"-1": {"text": "no drift", "color": "green", "index": 0}}},
    {"type": "special", "options": {"match": "null+nan", "result": {"text": "start unknown", "index": 1}}}]
UP_DOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                         "1": {"text": "UP", "color": "green", "index": 1}}}]


def stat(title, description, tgts, unit="none", mappings=None, steps=None, decimals=None, text_mode="value"):
    defaults = {"unit": unit, "mappings": mappings or [],
                "thresholds": steps or thresholds(("green", None)), "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": description, "targets": tgts,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": text_mode,
                        "justifyMode": "center", "orientation": "auto", "showPercentChange": False}}


def timeseries(title, description, tgts, unit="none", overrides=None, custom=None, steps=None,
               minimum=None, maximum=None, legend_calcs=("lastNotNull", "max"), data_links=None, links=None):
    custom_defaults = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "showPoints": "never",
                       "spanNulls": True, "axisSoftMin": 0, "thresholdsStyle": {"mode": "off"}}
    # `custom={"axisSoftMin": None}` removes a default: the key is left out, since the schema types
    # these as numbers and has no null (the Grafana schema test reports a null as a dropped key)
    custom_defaults = {k: v for k, v in {**custom_defaults, **(custom or {})}.items() if v is not None}
    defaults = {"unit": unit, "custom": custom_defaults, "color": {"mode": "palette-classic"},
                "thresholds": steps or thresholds(("green", None))}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if data_links:
        defaults["links"] = list(data_links)
    return {"type": "timeseries", "title": title, "description": description, "targets": tgts,
            **({"links": list(links)} if links else {}),
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                                   "calcs": list(legend_calcs)},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


DETECTED_BAND = {  # a 0/1 "detected" series drawn as a red band behind the scores, on a hidden 0..1 axis
    "custom.drawStyle": "line", "custom.lineInterpolation": "stepAfter", "custom.lineWidth": 0,
    "custom.fillOpacity": 25, "custom.axisPlacement": "hidden", "min": 0, "max": 1,
    "custom.axisSoftMin": 0, "color": {"mode": "fixed", "fixedColor": "red"}, "unit": "none"}
DASHED_LINE = {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}, "custom.fillOpacity": 0,
               "custom.lineWidth": 2, "color": {"mode": "fixed", "fixedColor": "orange"}}


def _override(regex: str, props: dict) -> dict:
    """Field override for the series whose display name matches `regex`."""
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": k, "value": v} for k, v in props.items()]}


# --------------------------------------------------------------------------------------------------
# The panels, top to bottom. Each entry: (key, width, height, panel) in rows of 24 columns; `key`
# names panels that alert rules link to (tools/gen_alerts.py), through PANEL_IDS.

def _panels():
    n_tests = f"max by (group) ({sel('data_drift_tests')})"  # the Holm family: features x tests x scales
    alpha = f"max by (group) ({sel('data_drift_alpha')})"
    inputs = sel("drift_window_samples", 'window="inputs"')
    input_window = f"max by (group) ({inputs})"
    yield ("row", 24, 1, {"type": "row", "title": "Drift", "collapsed": False, "panels": []})
    yield ("data-drift-state", 4, 4, stat(
        "Data drift", "data_drift_detected: 1 when at least one feature's test rejects after the "
        "Holm correction at the family-wise level alpha (one false alarm in 1/alpha checks at most).",
        targets((f"max({sel('data_drift_detected')})", "")), mappings=OK_DRIFT,
        steps=thresholds(("green", None), ("red", 1))))
    yield ("concept-drift-state", 4, 4, stat(
        "Concept drift", "concept_drift_detected: 1 when the labelled predictions' errors depart from "
        "the held-out reference errors (calibrated test, not a fixed threshold on the score).",
        targets((f"max({sel('concept_drift_detected')})", "")), mappings=OK_DRIFT,
        steps=thresholds(("green", None), ("red", 1))))
    yield ("up", 4, 4, stat(
        "Monitor", "Prometheus' `up` for the monitor's scrape job: DOWN when /metrics cannot be scraped.",
        targets((f"min({sel('up')})", "")), mappings=UP_DOWN,
        steps=thresholds(("red", None), ("green", 1))))
    yield ("prediction-rate-stat", 4, 4, stat(
        "Predictions / s", "Rows predicted per second (a list request counts each row).",
        targets((f"sum(rate({sel('predictions_total')}[$__rate_interval]))", "")), unit="reqps",
        decimals=1))
    yield ("windows-stat", 4, 4, stat(
        "Drift windows", "Samples in the data-drift window (served inputs) and the concept-drift "
        "window (labelled predictions).",
        targets((f"max by (window) ({sel('drift_window_samples')})", "{{window}}")), text_mode="value_and_name"))
    yield ("last-check", 4, 4, stat(
        "Since last drift check", "Seconds since the last drift check finished; it should stay below "
        "the monitor's --check-interval (60 s by default).",
        targets((f"time() - max({sel('drift_last_check_timestamp_seconds')})", "")), unit="s",
        decimals=0, steps=thresholds(("green", None), ("orange", 180), ("red", 600))))

    yield ("data-drift", 12, 9, timeseries(
        "Data drift: largest per-feature distance",
        "data_drift: the largest per-feature distance between the recent inputs and the training data "
        "(KS D for numeric features, total variation for grades), in [0, 1], over the whole window. "
        "Dashed: the whole-window KS distance a numeric feature needs for the first Holm step to reject, "
        "c(alpha/k) * sqrt(1/window) with c(a) = sqrt(-ln(a/2)/2) (asymptotic KS, ignoring the large "
        "reference) and k = data_drift_tests, the hypotheses of a check (every feature's tests on the "
        "whole window and on its newest 50/100/250 inputs, and the joint test): a change can be flagged "
        "below the line by a test on the newest inputs or by another test. Red band: "
        "data_drift_detected, the alert's condition (it fires when the band lasts 2 minutes).",
        targets(
            (f"max by (group) ({sel('data_drift')})", "data drift {{group}}"),
            (f"sqrt(-ln({alpha} / (2 * {n_tests})) / 2) * sqrt(1 / {input_window})",
             "KS detection boundary {{group}}"),
            (f"max by (group) ({sel('data_drift_detected')})", "detected {{group}}"),
        ),
        minimum=0, maximum=1, links=[report_link("Drift report: each feature, training vs live", "#data")],
        overrides=[_override("KS detection boundary.*", DASHED_LINE), _override("detected.*", DETECTED_BAND)]))
    yield ("concept-drift", 12, 9, timeseries(
        "Concept drift: model error vs held-out reference",
        "concept_drift: relative increase of the labelled window's loss over the held-out loss (0.25 = 25% "
        "worse): MSE for a regression, log loss for a classifier; bias: how far actual values sit above "
        "predictions, relative to the reference (a regression with positive targets). Red band: "
        "concept_drift_detected, the alert's condition (a calibrated test on the errors; it fires when "
        "the band lasts 2 minutes). A covariate shift also moves the MSE; only the test decides.",
        targets(
            (f"max by (group) ({sel('concept_drift')})", "loss increase {{group}}"),
            (f"max by (group) ({sel('concept_drift_bias_percent')}) / 100", "bias {{group}}"),
            (f"max by (group) ({sel('concept_drift_detected')})", "detected {{group}}"),
        ),
        unit="percentunit", custom={"axisSoftMin": None},
        links=[report_link("Drift report: live errors vs held-out errors", "#concept")],
        overrides=[_override("detected.*", DETECTED_BAND)]))

    yield ("feature-distance", 12, 8, timeseries(
        "Per-feature drift distance",
        "data_drift_feature_distance per feature: KS D (carat, depth, table) or total-variation distance "
        "(cut, color, clarity) between the window and the training data, in [0, 1].",
        targets((f"max by (feature) ({sel('data_drift_feature_distance')})", "{{feature}}")),
        minimum=0, custom={"fillOpacity": 0}, data_links=[FEATURE_REPORT_LINK]))
    yield ("feature-p-value", 12, 8, timeseries(
        "Per-feature p-value (log scale) and the corrected significance",
        "data_drift_feature_p_value per feature: its main test (KS or chi-square) on the whole window, "
        "clamped at 1e-20 for the log axis. Holm's correction compares the smallest p-value of a check's "
        "k hypotheses (data_drift_tests: each feature's tests on the whole window and its newest inputs, "
        "and the joint test) with alpha/k (dashed), the next with alpha/(k-1), ... and the largest with "
        "alpha (dotted): a feature under the dashed line is drifted; one above it may still be flagged "
        "by another of its tests (see the table's scale column).",
        targets(
            (f"clamp_min(max by (feature) ({sel('data_drift_feature_p_value')}), 1e-20)", "{{feature}}"),
            (f"{alpha} / {n_tests}", "alpha / k (Holm, first step)"),
            (alpha, "alpha (family-wise)"),
        ),
        custom={"scaleDistribution": {"type": "log", "log": 10}, "fillOpacity": 0, "axisSoftMin": None},
        data_links=[FEATURE_REPORT_LINK],
        overrides=[_override("alpha / k.*", {**DASHED_LINE, "links": []}),
                   _override("alpha \\(family.*", {**DASHED_LINE, "custom.lineStyle": {"fill": "dot"},
                                                   "color": {"mode": "fixed", "fixedColor": "yellow"}, "links": []})]))

    yield ("feature-table", 12, 8, {
        "type": "table", "title": "Per-feature drift now",
        "description": "The latest check, per feature: its main test (ks or chi2) on the whole window, its "
                       "statistic and p-value, the distance in [0, 1], whether the feature drifted after the "
                       "Holm correction, and if so how many of the newest inputs the test that flagged it "
                       "looked at (scale) and when the change began (since, estimated from the window).",
        "targets": [
            target(f"max by (feature, test) ({sel('data_drift_feature_statistic')})", ref="A", instant=True, fmt="table"),
            target(f"max by (feature) ({sel('data_drift_feature_p_value')})", ref="B", instant=True, fmt="table"),
            target(f"max by (feature) ({sel('data_drift_feature_distance')})", ref="C", instant=True, fmt="table"),
            target(f"max by (feature) ({sel('data_drift_feature_detected')})", ref="D", instant=True, fmt="table"),
            target(f"max by (feature) ({sel('data_drift_feature_scale')})", ref="E", instant=True, fmt="table"),
            target(f"max by (feature) ({sel('data_drift_feature_since_timestamp_seconds')}) * 1000", ref="F",
                   instant=True, fmt="table"),
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "indexByName": {"feature": 0, "test": 1, "Value #A": 2, "Value #B": 3, "Value #C": 4, "Value #D": 5,
                                "Value #E": 6, "Value #F": 7},
                "renameByName": {"Value #A": "statistic", "Value #B": "p-value", "Value #C": "distance",
                                 "Value #D": "drifted", "Value #E": "scale", "Value #F": "since"}}},
        ],
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                                     "thresholds": thresholds(("green", None)),
                                     "links": [report_link("Drift report: ${__data.fields.feature}",
                                                           "#feature-${__data.fields.feature}")]},
                        "overrides": [
                            {"matcher": {"id": "byName", "options": "drifted"},
                             "properties": [{"id": "mappings", "value": OK_DRIFT},
                                            {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
                            {"matcher": {"id": "byName", "options": "p-value"},
                             "properties": [{"id": "decimals", "value": 4}]},
                            {"matcher": {"id": "byName", "options": "scale"},
                             "properties": [{"id": "decimals", "value": 0}, {"id": "unit", "value": "none"}]},
                            {"matcher": {"id": "byName", "options": "since"},
                             "properties": [{"id": "unit", "value": "dateTimeFromNow"}]},
                            {"matcher": {"id": "byName", "options": "distance"},
                             "properties": [{"id": "decimals", "value": 3},
                                            {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}},
                                            {"id": "min", "value": 0}, {"id": "max", "value": 1}]}]},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    })
    yield ("detected-timeline", 12, 8, {
        "type": "state-timeline", "title": "Drift detected, per feature and for the labels",
        "description": "data_drift_feature_detected per feature and concept_drift_detected over time.",
        "targets": targets(
            (f"max by (feature) ({sel('data_drift_feature_detected')})", "{{feature}}"),
            (f"max({sel('concept_drift_detected')})", "concept (labels)"),
        ),
        "fieldConfig": {"defaults": {"mappings": OK_DRIFT, "thresholds": thresholds(("green", None), ("red", 1)),
                                     "color": {"mode": "thresholds"},
                                     "custom": {"fillOpacity": 80, "lineWidth": 0},
                                     "links": [FEATURE_REPORT_LINK]},
                        "overrides": [_override("concept \\(labels\\)", {"links": [
                            report_link("Drift report: live errors vs held-out errors", "#concept")]})]},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left",
                    "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "single", "sort": "none"}},
    })

    yield ("windows", 8, 8, timeseries(
        "Drift windows",
        "Samples in the data-drift window (served inputs) and the concept-drift window (labelled "
        "predictions): a window that stays small makes the tests weak.",
        targets((f"max by (window) ({sel('drift_window_samples')})", "{{window}} window"))))
    yield ("labels", 8, 8, timeseries(
        "Labels received",
        "Ground-truth values joined to their prediction (/feedback), and labels whose prediction id is "
        "unknown (expired or never served).",
        targets((f"sum(rate({sel('labels_received_total')}[$__rate_interval]))", "accepted"),
                (f"sum(rate({sel('labels_unknown_total')}[$__rate_interval]))", "unknown id")),
        unit="reqps"))
    yield ("model-error", 8, 8, timeseries(
        "Model error: labelled window, estimate before labels, held-out",
        "Root of the labelled window's MSE (realised: needs the labels), of the MSE estimated from the "
        "served predictions alone (performance_estimated_mse, direct loss estimation: the held-out "
        "squared error by predicted-value band; it sees inputs the model errs more on, not changed "
        "targets; a regression with positive targets only), the band that estimate keeps on clean traffic "
        "(dotted), and the held-out MSE, in the target's units (dollars for the diamond model). Red "
        "band: the estimate left its band (the PerformanceEstimate alert's condition). Empty for a classifier.",
        targets((f"sqrt(max by (group) ({sel('concept_drift_window_mse')}))", "window RMSE {{group}}"),
                (f"sqrt(max by (group) ({sel('performance_estimated_mse')}))", "estimated RMSE {{group}}"),
                (f"sqrt(max by (group, bound) ({sel('performance_estimate_band_mse')}))",
                 "estimate band {{bound}} {{group}}"),
                (f"sqrt(max by (group) ({sel('concept_drift_reference_mse')}))", "held-out RMSE {{group}}"),
                (f"max by (group) ({sel('performance_estimate_detected')})", "estimate out of band {{group}}")),
        unit="short", overrides=[_override("held-out.*", DASHED_LINE),
                                       _override("estimate band.*", {**DASHED_LINE, "custom.lineStyle": {"fill": "dot"},
                                                                     "custom.lineWidth": 1,
                                                                     "color": {"mode": "fixed", "fixedColor": "purple"}}),
                                       _override("estimate out of band.*", DETECTED_BAND)]))

    yield ("row", 24, 1, {"type": "row", "title": "Traffic", "collapsed": False, "panels": []})
    yield ("prediction-rate", 8, 8, timeseries(
        "Prediction rate",
        "Rows predicted per second and /predict requests per second (a list request predicts many rows).",
        targets((f"sum(rate({sel('predictions_total')}[$__rate_interval]))", "rows / s"),
                (f"sum(rate({sel('prediction_requests_total')}[$__rate_interval]))", "requests / s")),
        unit="reqps"))
    latency = f"sum by (le) (rate({sel('prediction_latency_seconds_bucket')}[$__rate_interval]))"
    yield ("latency", 8, 8, timeseries(
        "Prediction latency",
        "Time to answer one /predict request (parsing to response), p50 and p99 from the histogram.",
        targets((f"histogram_quantile(0.5, {latency})", "p50"), (f"histogram_quantile(0.99, {latency})", "p99")),
        unit="s"))
    yield ("predicted-value", 8, 8, {
        "type": "heatmap", "title": "Predicted value distribution",
        "description": "Predictions per bucket over time (predicted_value histogram, buckets at the held-out "
                       "predictions' quantiles): a change in the mix of inputs shows up here before any label "
                       "arrives. A classifier's predictions are counted by class in the Classifier row.",
        "targets": [target(f"sum by (le) (increase({sel('predicted_value_bucket')}[$__rate_interval]))",
                           "{{le}}", fmt="heatmap")],
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                                "scaleDistribution": {"type": "linear"}}},
                        "overrides": []},
        "options": {"calculate": False, "cellGap": 1, "yAxis": {"axisPlacement": "left", "unit": "short"},
                    "rowsFrame": {"layout": "le"},
                    "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange", "scale": "exponential",
                              "exponent": 0.5, "steps": 64, "reverse": False},
                    "cellValues": {"unit": "short"}, "filterValues": {"le": 1e-9},
                    "legend": {"show": True}, "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
                    "exemplars": {"color": "rgba(255,0,255,0.7)"}},
    })
    yield ("invalid-requests", 12, 8, timeseries(
        "Invalid and refused requests by reason",
        "Requests refused with a 4xx, per endpoint and reason (invalid_json, missing_field, "
        "unknown_category, not_a_number, ...): a broken client shows up here. 503s (the store cannot "
        "record labels, every connection busy) are the server's, listed as 'refused'.",
        targets((f"sum by (endpoint, reason) (rate({sel('invalid_requests_total')}[$__rate_interval]))",
                 "{{endpoint}} {{reason}}"),
                (f"sum by (endpoint, reason) (rate({sel('refused_requests_total')}[$__rate_interval]))",
                 "refused: {{endpoint}} {{reason}}")),
        unit="reqps", custom={"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal", "group": "A"}}))
    check = f"sum by (le) (rate({sel('drift_check_duration_seconds_bucket')}[$__rate_interval]))"
    yield ("drift-checks", 12, 8, timeseries(
        "Drift checks: duration and failures",
        "Time one drift check takes (p50, p99) and checks that raised (bars, right axis). A failing "
        "check means drift is not being measured.",
        targets((f"histogram_quantile(0.5, {check})", "duration p50"),
                (f"histogram_quantile(0.99, {check})", "duration p99"),
                (f"sum(increase({sel('drift_check_failures_total')}[$__rate_interval]))", "failed checks")),
        unit="s",
        overrides=[_override("failed checks", {"custom.drawStyle": "bars", "custom.fillOpacity": 80,
                                               "custom.axisPlacement": "right", "unit": "none", "decimals": 0,
                                               "color": {"mode": "fixed", "fixedColor": "red"}})]))

    yield ("row", 24, 1, {"type": "row", "title": "Model", "collapsed": False, "panels": []})
    yield ("model-info", 12, 5, {
        "type": "table", "title": "Served model",
        "description": "model_info: the model's name and task (regression or classification), the artifact's "
                       "version, training date and scikit-learn version.",
        "targets": [target(f"max by (instance, name, task, version, trained_at, sklearn_version) ({sel('model_info')})",
                           instant=True, fmt="table")],
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True},
            "indexByName": {"instance": 0, "name": 1, "task": 2, "version": 3, "trained_at": 4, "sklearn_version": 5},
            "renameByName": {"trained_at": "trained at", "sklearn_version": "scikit-learn"}}}],
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                                     "thresholds": thresholds(("green", None))}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    })
    yield ("heldout-rmse", 4, 5, stat(
        "Held-out RMSE / accuracy", "A regression: the square root of model_heldout_mse, the MSE on the 20% "
        "held-out split at training, in the target's units; a classifier: model_heldout_accuracy.",
        targets((f"sqrt(max({sel('model_heldout_mse')}))", "RMSE"), (f"max({sel('model_heldout_accuracy')})", "accuracy")),
        unit="short", decimals=3, text_mode="value_and_name",
        steps=thresholds(("blue", None))))
    yield ("model-age", 4, 5, stat(
        "Model trained", "model_trained_timestamp_seconds: when the served model was trained.",
        targets((f"max({sel('model_trained_timestamp_seconds')}) * 1000", "")), unit="dateTimeFromNow",
        steps=thresholds(("blue", None))))
    yield ("checks-run", 4, 5, stat(
        "Drift checks in range", "Drift checks run over the dashboard's time range (drift_checks_total).",
        targets((f"sum(increase({sel('drift_checks_total')}[$__range]))", "")), decimals=0,
        steps=thresholds(("blue", None))))

    yield ("row", 24, 1, {"type": "row", "title": "Detection: joint drift, concept segments, when it began",
                          "collapsed": False, "panels": []})
    yield ("joint-drift", 12, 8, timeseries(
        "Joint drift: PCA reconstruction error",
        "data_drift_multivariate_statistic: the window's mean reconstruction error of the features' "
        "normal scores on the reference's main principal components, over the reference's own (1 = as "
        "in training). It rises when features stop going together as they did (better clarity on larger "
        "stones) even if no feature's own distribution moved. Red band: data_drift_multivariate_detected "
        "(the joint test rejected at some scale, in the same Holm family as the per-feature tests).",
        targets(
            (f"max by (group) ({sel('data_drift_multivariate_statistic')})", "reconstruction error ratio {{group}}"),
            (f"max by (group) ({sel('data_drift_multivariate_detected')})", "detected {{group}}"),
        ),
        overrides=[_override("detected.*", DETECTED_BAND)]))
    yield ("concept-segments", 12, 8, {
        "type": "state-timeline", "title": "Concept drift by segment",
        "description": "concept_drift_segment_detected: the labelled errors of each predicted-value band and "
                       "each category tested on their own (bias and spread of the PIT values, in concept drift's "
                       "Holm family): where the model went wrong. The ConceptDriftSegment alert names them.",
        "targets": targets((f"max by (segment) ({sel('concept_drift_segment_detected')})", "{{segment}}")),
        "fieldConfig": {"defaults": {"mappings": OK_DRIFT, "thresholds": thresholds(("green", None), ("red", 1)),
                                     "color": {"mode": "thresholds"},
                                     "custom": {"fillOpacity": 80, "lineWidth": 0}},
                        "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left",
                    "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "single", "sort": "none"}},
    })
    yield ("segment-bias", 12, 8, timeseries(
        "Concept drift: bias by segment",
        "concept_drift_segment_bias_percent: how far actual values sit above predictions within each "
        "segment, against the held-out reference at the same predicted value, in percent (a regression "
        "with positive targets).",
        targets((f"max by (segment) ({sel('concept_drift_segment_bias_percent')}) / 100", "{{segment}}")),
        unit="percentunit", custom={"axisSoftMin": None, "fillOpacity": 0}))
    yield ("concept-detection", 12, 8, stat(
        "Concept drift: scale and start",
        "concept_drift_scale: how many of the newest labels the test that flagged concept drift looked "
        "at; concept_drift_since_timestamp_seconds: when the change began, estimated from the labelled "
        "window. Empty while nothing is flagged.",
        # instant: the latest check's values (NaN while nothing is flagged, so a range has no point)
        [target(f"max({sel('concept_drift_scale')})", "scale (labels)", "A", instant=True),
         target(f"max({sel('concept_drift_since_timestamp_seconds')}) * 1000", "began", "B", instant=True)],
        text_mode="value_and_name") | {"fieldConfig": {"defaults": {
            "unit": "none", "mappings": [], "thresholds": thresholds(("blue", None)), "color": {"mode": "thresholds"},
            "decimals": 0}, "overrides": [_override("began", {"unit": "dateTimeFromNow"})]}})

    # "Since when" and the CUSUMs between checks (monitoring/sequential.py). drift_since_timestamp_seconds
    # is NaN while nothing drifts (and when a drift's start is unknown: a classifier's concept drift),
    # never absent: the series is there from the first scrape, so "no data" only ever means "not
    # scraped", and a comparison drops NaN (`drift_since_timestamp_seconds > 0` lists what drifts).
    # The stat reads it only while the kind is detected, and -1 ("no drift") while it is not, so that
    # it tells "no drift" from "drifting, start unknown" (NaN) and from "not scraped" (no data).
    for kind, title in (("data", "Data drift since"), ("concept", "Concept drift since")):
        since = sel("drift_since_timestamp_seconds", f'kind="{kind}"')
        detected = sel(f"{kind}_drift_detected")
        yield (f"{kind}-since", 12, 4, stat(
            title,
            f'drift_since_timestamp_seconds{{kind="{kind}"}}: when the {kind} drift the latest check flags '
            "began, the earliest start among its windowed detections (estimated from the window, so at most "
            "a window ago) and the CUSUM alarms since the previous check. 'no drift' while "
            f"{kind}_drift_detected is 0; 'start unknown' when it is 1 without a start (a classifier's "
            "concept drift); no data when no monitor is scraped.",
            # instant: the latest check's (a range would show the last start of a drift that ended)
            [target(f"min({since}) * 1000 and on () max({detected}) == 1 or on () max({detected}) - 1", "", "A",
                    instant=True)]) | {"fieldConfig": {
                "defaults": {"unit": "dateTimeFromNow", "mappings": SINCE_MAPPINGS,
                             "thresholds": thresholds(("red", None)), "color": {"mode": "thresholds"}},
                "overrides": []}})
    for kind, label, what in (("data", "feature", "each numeric feature's normal score (up: larger values, down: "
                                                  "smaller)"),
                              ("concept", "segment", "the labels' errors (PIT normal scores) over every label "
                                                     "(all) and within each third of the predicted-value bands (up: "
                                                     "actual values above predictions, down: below)")):
        panel = timeseries(
            f"{'Inputs' if kind == 'data' else 'Labels'}: CUSUMs between checks, statistic / threshold",
            f"{kind}_drift_cusum_ratio per {label}: the CUSUM of {what} nearest its alarm, as a fraction of its "
            "threshold, at each check. It alarms at 1 (dashed): the CUSUM restarts from 0 and the check that "
            "follows flags the drift; a point above 1 is the value it alarmed at since the previous check. "
            f"/drift's {kind}_drift.sequential (and the drift report page) says which way and since when. "
            "Thresholds are calibrated at start so that all the CUSUMs of a kind together alarm in at most "
            "0.3% of clean 50-row intervals."
            + (" A classifier's labels have none." if kind == "concept" else
               " A model without numeric features has none."),
            targets((f"max by ({label}) ({sel(f'{kind}_drift_cusum_ratio')})", f"{{{{{label}}}}}")),
            minimum=0, custom={"fillOpacity": 0, "axisSoftMax": 1.2, "thresholdsStyle": {"mode": "dashed"}},
            steps=thresholds(("green", None), ("red", 1)),
            links=[report_link("Drift report: the CUSUMs", f"#{kind}-cusums")])
        panel["fieldConfig"]["defaults"]["noValue"] = "no CUSUM for this model"  # its subject set is empty
        yield (f"{kind}-cusums", 12, 8, panel)

    # A classifier's own panels: their series are NaN or absent for a regression model.
    classifier = sel("model_info", 'task="classification"')
    yield ("row", 24, 1, {"type": "row", "title": "Classifier (a model whose model_info task is classification)",
                          "collapsed": False, "panels": []})
    yield ("class-accuracy", 8, 8, timeseries(
        "Classifier: accuracy, labelled window vs held-out",
        "concept_drift_window_accuracy: the share of the labelled window's predictions that were the true "
        "class; concept_drift_reference_accuracy: the same on the held-out split (dashed). Red band: "
        "concept_drift_detected (the window's log losses or its accuracy departed from held-out).",
        targets((f"max by (group) ({sel('concept_drift_window_accuracy')})", "window {{group}}"),
                (f"max by (group) ({sel('concept_drift_reference_accuracy')})", "held-out {{group}}"),
                (f"max by (group) ({sel('concept_drift_detected')}) and on (group) max by (group) ({classifier})",
                 "detected {{group}}")),
        unit="percentunit", minimum=0, maximum=1,
        overrides=[_override("held-out.*", DASHED_LINE), _override("detected.*", DETECTED_BAND)]))
    yield ("class-log-loss", 8, 8, timeseries(
        "Classifier: log loss, labelled window vs held-out",
        "concept_drift_window_log_loss: the mean of -log p(true class) over the labelled window, with the "
        "probabilities the model served; concept_drift_reference_log_loss: on the held-out split (dashed).",
        targets((f"max by (group) ({sel('concept_drift_window_log_loss')})", "window {{group}}"),
                (f"max by (group) ({sel('concept_drift_reference_log_loss')})", "held-out {{group}}")),
        overrides=[_override("held-out.*", DASHED_LINE)]))
    yield ("class-predictions", 8, 8, timeseries(
        "Classifier: predictions by class",
        "predictions_by_class_total: rows predicted as each class per second; a change in the mix of "
        "predicted classes shows up here before any label arrives.",
        targets((f"sum by (class) (rate({sel('predictions_by_class_total')}[$__rate_interval]))", "{{class}}")),
        unit="reqps", custom={"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal", "group": "A"}}))


def build() -> tuple[dict, dict[str, int]]:
    """The dashboard model and the ids of its keyed panels."""
    panels, ids = [], {}
    x = y = row_height = 0
    for panel_id, (key, width, height, panel) in enumerate(_panels(), start=1):
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        panel = {"id": panel_id, "gridPos": {"x": x, "y": y, "w": width, "h": height}, **panel}
        if panel["type"] != "row":
            panel["datasource"] = DATASOURCE
        panels.append(panel)
        if key != "row":
            ids[key] = panel_id
        x += width
        row_height = max(row_height, height)
    dashboard = {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Data drift, concept drift and serving health of the served model, a regressor or a "
                       "classifier (the diamond-price model by default; model_info names it) (provisioned from "
                       "grafana-provisioning/; generated by tools/gen_dashboard.py).",
        "tags": ["ml", "drift"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "15s",
        "time": {"from": "now-30m", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "links": [{"title": "Drift report", "type": "link", "url": REPORT_URL, "icon": "doc", "targetBlank": True,
                   "tooltip": "The latest drift check drawn by the monitor: training vs live per feature, "
                              "labelled errors vs held-out", "asDropdown": False, "includeVars": False,
                   "keepTime": False, "tags": []}],
        "annotations": {"list": [{
            "builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard", "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "datasource": {"type": "grafana", "uid": "-- Grafana --"}}]},
        "templating": {"list": [{
            "name": "instance", "label": "Monitor", "type": "query", "datasource": DATASOURCE,
            "definition": f'label_values(up{{job="{JOB}"}}, instance)',
            "query": {"qryType": 1, "query": f'label_values(up{{job="{JOB}"}}, instance)',
                      "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".+", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0}, {
            "name": MONITOR_URL_VARIABLE, "label": "Monitor URL", "type": "textbox",
            "description": "Where your browser reaches the monitor (its --public-url, MONITOR_PUBLIC_URL); the "
                           "drift report links use it.",
            "query": DEFAULT_MONITOR_URL, "current": {"text": DEFAULT_MONITOR_URL, "value": DEFAULT_MONITOR_URL},
            "options": [{"selected": True, "text": DEFAULT_MONITOR_URL, "value": DEFAULT_MONITOR_URL}], "hide": 0}]},
        "panels": panels,
    }
    return dashboard, ids


DASHBOARD, PANEL_IDS = build()


def render() -> str:
    return json.dumps(DASHBOARD, indent=2) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DASHBOARD_PATH.read_text() if DASHBOARD_PATH.exists() else ""
        if current != text:
            print(f"{DASHBOARD_PATH.relative_to(ROOT)} is out of date: run `python -m tools.gen_dashboard`")
            return 1
        return 0
    DASHBOARD_PATH.write_text(text)
    print(f"wrote {DASHBOARD_PATH.relative_to(ROOT)} ({len(DASHBOARD['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
