"""GET /drift/report on a real monitor (port 0): the page before and after checks, its HTML, its links,
its numbers against /drift, and what a view costs; plus the words and helpers that build it.
The same page in a real browser: tests/test_report_browser.py."""
from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import http.client
import re
import threading
from html import escape as _escape
from urllib.parse import urlsplit

import html5lib
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import monitor as monitor_module
from monitor import MonitorConfig, start_monitor
from monitoring import charts, report
from tests.helpers import heldout_frame, request
from tests.report_support import (CATEGORICAL, NUMERIC, PageOutline, check, clean_rows, drifted_rows, external_urls,
                                  send)

WINDOW, LABELS = 400, 300
PUBLIC = "https://monitor.example.com"


@pytest.fixture(scope="module")
def heldout():
    return heldout_frame()


def _start(small_artifact_path, small_artifact, **options):
    options = {"port": 0, "check_interval": 0, "window": WINDOW, "label_window": LABELS, "db_path": None, **options}
    config = MonitorConfig(model_path=small_artifact_path, **options)
    return start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())


@pytest.fixture
def server(small_artifact_path, small_artifact):
    handle = _start(small_artifact_path, small_artifact)
    yield handle
    handle.stop()


def _get(url: str, path: str = "/drift/report", headers: dict | None = None) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _page(url: str) -> tuple[dict, str]:
    status, headers, body = _get(url)
    assert status == 200, body[:500]
    assert headers["content-type"] == "text/html; charset=utf-8"
    return headers, body.decode()


@pytest.fixture(scope="module")
def drifted(small_artifact_path, small_artifact, heldout):
    """A monitor after drifted traffic (larger stones, more Fair cuts) and one check: (report, headers, html)."""
    handle = _start(small_artifact_path, small_artifact)
    try:
        send(handle.url, drifted_rows(heldout, WINDOW))
        result = check(handle.url)
        headers, html = _page(handle.url)
        _, _, as_json = request(handle.url, "GET", "/drift/report?format=json")
        _, _, drift = request(handle.url, "GET", "/drift")
        yield {"report": result, "headers": headers, "html": html, "json": as_json, "drift": drift}
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def clean(small_artifact_path, small_artifact, heldout):
    handle = _start(small_artifact_path, small_artifact)
    try:
        send(handle.url, clean_rows(heldout, WINDOW))
        result = check(handle.url)
        headers, html = _page(handle.url)
        _, _, as_json = request(handle.url, "GET", "/drift/report?format=json")
        _, _, drift = request(handle.url, "GET", "/drift")
        yield {"report": result, "headers": headers, "html": html, "json": as_json, "drift": drift}
    finally:
        handle.stop()


def _valid_html5(html: str) -> PageOutline:
    """Parses as HTML5 without a single parse error, ids are unique and every aria reference resolves."""
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)
    outline = PageOutline(html)
    duplicates = {i for i in outline.ids if outline.ids.count(i) > 1}
    assert not duplicates, f"duplicate ids: {sorted(duplicates)[:5]}"
    assert set(outline.labelledby) <= set(outline.ids)
    return outline


# ----------------------------------------------------------------------------------- before any check

def test_before_any_check_the_page_says_so_and_how_to_run_one(server):
    _, html = _page(server.url)
    _valid_html5(html)
    assert "No drift check has run yet" in html
    host = urlsplit(server.url).netloc
    assert f"curl -X POST http://{host}/drift/check" in html
    assert "--check-interval 0" in html  # this server checks only when asked
    status, _, as_json = request(server.url, "GET", "/drift/report?format=json")
    assert status == 200 and as_json == request(server.url, "GET", "/drift")[2]
    assert as_json["checked_at"] is None


def test_the_waiting_page_shows_where_the_token_goes_but_never_the_token(small_artifact_path, small_artifact):
    handle = _start(small_artifact_path, small_artifact, token="s3cret-token", check_interval=30)
    try:
        _, html = _page(handle.url)
    finally:
        handle.stop()
    assert 'Authorization: Bearer $MONITOR_TOKEN' in html.replace("&quot;", '"')
    assert "s3cret-token" not in html
    assert "every 30 s" in html and 'http-equiv="refresh" content="30"' in html


# ----------------------------------------------------------------------------------- the page

def test_the_page_is_valid_html5_and_loads_nothing_from_anywhere(drifted):
    html, headers = drifted["html"], drifted["headers"]
    outline = _valid_html5(html)
    assert html.startswith("<!DOCTYPE html>")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert not outline.tags & {"script", "link", "iframe", "img", "object", "embed", "frame", "base"}
    assert external_urls(outline) == []
    # the browser is told the same: nothing but this page's own stylesheet, which the header pins by hash
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    (style,) = outline.styles
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp
    assert not outline.style_attributes, "style attributes would be blocked by the policy"


def test_every_feature_has_its_charts_and_the_drifted_ones_come_first(drifted):
    outline = PageOutline(drifted["html"])
    features = drifted["report"]["data_drift"]["features"]
    assert [c["feature"] for c in outline.cards] and {c["feature"] for c in outline.cards} == set(features)
    flags = [c["drifted"] for c in outline.cards]
    assert flags == sorted(flags, reverse=True), f"drifted features must come first: {flags}"
    assert {c["feature"] for c in outline.cards if c["drifted"]} == {n for n, f in features.items() if f["detected"]}
    assert {"carat", "cut"} <= {c["feature"] for c in outline.cards if c["drifted"]}
    for card in outline.cards:
        name = card["feature"]
        expected = [f"chart-{name}-hist", f"chart-{name}-ecdf"] if name in NUMERIC else [f"chart-{name}-bars"]
        assert card["charts"] == expected, card
        assert card["id"] == f"feature-{name}"
        assert card["shapes"] > (20 if name in NUMERIC else 10), f"{name}: the charts hold almost nothing"
    assert {"chart-concept-pit", "chart-concept-errors"} <= set(outline.ids)
    assert set(NUMERIC + CATEGORICAL) == set(features)


def test_titles_say_in_words_what_changed(drifted):
    titles = {c["feature"]: c["title"] for c in PageOutline(drifted["html"]).cards}
    assert titles["carat"] == "carat: live stones are larger"
    assert titles["cut"] == "cut: more Fair in live traffic"
    html = drifted["html"]
    assert re.search(r"median [\d.]+ ct live vs [\d.]+ ct in training", html)
    assert re.search(r"Fair [\d.]+% of live vs [\d.]+% of training", html)
    for unit in ("% of rows", "ct", "$"):
        assert unit in html


def test_the_page_shows_the_checks_numbers_and_the_json_is_drifts(drifted, clean):
    for run in (drifted, clean):
        assert run["json"] == run["drift"] == run["report"]  # (no check ran in between)
        html = run["html"]
        for name, f in run["report"]["data_drift"]["features"].items():
            row = re.search(rf'<tr><th scope="row"><a href="#feature-{name}">{name}</a></th>(.*?)</tr>', html).group(1)
            assert f"<td>{f['test']}</td>" in row and f"<td>{f['distance']:.3f}</td>" in row
            assert report.format_p(f["p_value"]) in row
            assert ("drifted" if f["detected"] else "no drift") in row
        concept = run["report"]["concept_drift"]
        assert f"{100 * concept['score']:+.1f}%" in html and f"{concept['bias_pct']:+.1f}%" in html
        assert 'href="/drift/report?format=json"' in html


def test_clean_traffic_reads_as_no_drift(clean):
    outline = PageOutline(clean["html"])
    assert not any(c["drifted"] for c in outline.cards)
    assert {c["title"] for c in outline.cards} == {f"{n}: no significant change" for n in NUMERIC + CATEGORICAL}
    assert "No data drift" in clean["html"] and "No concept drift" in clean["html"]


def _cusum_block(html: str, kind: str) -> str:
    start = html.index(f'<div class="cusums" id="{kind}-cusums">')
    return html[start:html.index("</section>", start)]


def _utc(unix_seconds: float) -> str:
    return dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_the_cusums_show_the_reports_statistics_thresholds_directions_and_starts(drifted, clean):
    # larger stones at their old prices: carat's CUSUM alarms, and the labels' (prices below predictions)
    alarmed = drifted["report"]["data_drift"]["sequential"]["subjects"]["carat"]
    assert alarmed["alarm"] and alarmed["direction"] == "up" and alarmed["statistic"] > alarmed["threshold"]
    for run in (drifted, clean):
        for kind in ("data", "concept"):
            sequential = run["report"][f"{kind}_drift"]["sequential"]
            block = _cusum_block(run["html"], kind)
            rows = dict(re.findall(r'<tr data-subject="([^"]+)">(.*?)</tr>', block))
            # every subject the report names, and no other (read from the report, not a list of features)
            assert list(rows) == [_escape(s) for s in sequential["subjects"]] and rows
            for subject, entry in sequential["subjects"].items():
                cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", rows[_escape(subject)])
                ratio = entry["statistic"] / entry["threshold"]
                assert cells[:6] == [_escape(subject), entry["direction"], f"{entry['statistic']:.2f}",
                                     f"{entry['threshold']:.2f}", f"{ratio:.2f}",
                                     "alarmed" if entry["alarm"] else "no"], (kind, subject, cells)
                if entry["alarm"]:
                    assert cells[6] == f"{entry['since_row']:,}"
                    assert cells[7].endswith(f">{_utc(entry['since'])}</time>")
                else:
                    assert cells[6:] == ["–", "–"]
                assert f"{_escape(subject)} {ratio:.2f}" in block  # the chart's description
            # the newest alarms, newest first, with the row each change began at
            shown = [int(r) for r in re.findall(r'<li data-row="(\d+)">', block)]
            assert shown == [a["row"] for a in reversed(sequential["alarms"])][:report.RECENT_ALARMS]
            for alarm in list(reversed(sequential["alarms"]))[:report.RECENT_ALARMS]:
                assert f"change began at row {alarm['since']:,}" in block


def test_drifting_since_is_the_earliest_start_of_the_checks_detections_and_alarms(drifted, clean):
    for run in (drifted, clean):
        for kind in ("data", "concept"):
            result = run["report"][f"{kind}_drift"]
            detections = (result.get("detections") or {}).values() if kind == "data" else [result["detection"] or {}]
            starts = [d["since"] for d in detections if d.get("since") is not None]
            starts += [e["since"] for e in result["sequential"]["subjects"].values() if e["alarm"]]
            shown = re.search(rf'<p class="since" id="{kind}-since" data-since="([^"]+)">(.*?)</p>', run["html"])
            if not starts:
                assert shown is None and not result["detected"]
                continue
            assert float(shown.group(1)) == min(starts)
            assert f">{_utc(min(starts))}</time>" in shown.group(2)
    assert 'id="data-since"' in drifted["html"] and 'id="concept-since"' in drifted["html"]


def test_a_model_without_cusums_says_so():
    for kind, words in (("data", "the inputs"), ("concept", "the labels")):
        for sequential in (None, {"test": "cusum", "rows": 0, "alarm": False, "subjects": {}, "alarms": []}):
            block = report._cusum_block(kind, sequential)
            assert f"No CUSUM watches {words} of this model" in block and "<table" not in block


def test_the_page_is_sent_gzipped_to_clients_that_take_it(drifted, server, heldout):
    send(server.url, clean_rows(heldout, 120))
    check(server.url)
    _, plain_headers, plain = _get(server.url)
    status, headers, zipped = _get(server.url, headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers["content-encoding"] == "gzip" and "content-encoding" not in plain_headers
    assert gzip.decompress(zipped) == plain and len(zipped) < len(plain) / 3
    assert headers["vary"] == "Accept-Encoding"
    _, refused, body = _get(server.url, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused and body == plain


def test_empty_and_tiny_windows_are_drawn_with_what_they_hold(server, heldout):
    check(server.url)  # nothing served yet
    _, html = _page(server.url)
    outline = _valid_html5(html)
    assert len(outline.cards) == 6 and all(c["charts"] == [] for c in outline.cards)
    assert html.count("no live values yet") == 6 and "chart-concept-pit" not in outline.ids
    rows = clean_rows(heldout, 5)
    send(server.url, rows.iloc[:3])
    send(server.url, rows.iloc[3:], label=False)
    check(server.url)
    _, html = _page(server.url)
    outline = _valid_html5(html)
    assert all(c["charts"] for c in outline.cards) and "chart-concept-pit" in outline.ids
    assert "Not tested: not enough data: 5 inputs in the window" in html
    assert "Not tested: not enough data: 3 labelled predictions in the window" in html


def test_an_unknown_format_is_refused(server):
    status, _, body = request(server.url, "GET", "/drift/report?format=pdf")
    assert status == 400 and "html, json" in body["error"]


def test_the_index_links_the_page(server):
    _, _, index = request(server.url, "GET", "/")
    assert index["drift_report"] == "/drift/report"
    assert index["endpoints"]["/drift/report"] == ["GET"]


# ----------------------------------------------------------------------------------- cost of a view

def test_a_check_is_drawn_once_and_views_do_no_model_work(server, heldout, monkeypatch):
    send(server.url, clean_rows(heldout, 200))
    monitor = server.monitor
    calls = {"predict": 0, "score": 0, "pit": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    check(server.url)
    monkeypatch.setattr(monitor.predictor, "predict", counting("predict", monitor.predictor.predict))
    monkeypatch.setattr(monitor.data_detector, "score", counting("score", monitor.data_detector.score))
    monkeypatch.setattr(monitor.concept_detector, "pit", counting("pit", monitor.concept_detector.pit))
    assert monitor.report_page.renders == 0  # a check does not draw: the first view does

    bodies, errors = [], []

    def view():
        try:
            status, _, body = _get(server.url)
            assert status == 200
            bodies.append(body)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=view) for _ in range(8)]  # first views at once: one render
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(bodies) == 8 and len(set(bodies)) == 1
    assert monitor.report_page.renders == 1
    for _ in range(20):
        view()
    assert monitor.report_page.renders == 1 and len(set(bodies)) == 1
    assert calls == {"predict": 0, "score": 0, "pit": 1}, "a view must not predict or score; one render ranks"

    check(server.url)  # a new check: the next view draws it
    assert monitor.report_page.renders == 1
    view()
    assert monitor.report_page.renders == 2 and len(set(bodies)) == 2
    _, headers, _ = _get(server.url)
    assert re.fullmatch(r'render;dur=\d+\.\d;desc="once per check", render-cpu;dur=\d+\.\d',
                        headers["server-timing"])


def test_a_page_that_fails_to_render_is_a_500_and_the_next_check_renders_again(server, heldout, monkeypatch):
    send(server.url, clean_rows(heldout, 100))
    check(server.url)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "render_report", broken)
    status, headers, body = _get(server.url)
    assert status == 500 and b"boom" in body and headers["content-type"] == "application/json"
    monkeypatch.undo()
    _, html = _page(server.url)
    assert "Drift report" in html


# ----------------------------------------------------------------------------------- links

def test_a_public_url_makes_the_links_absolute(small_artifact_path, small_artifact, heldout):
    handle = _start(small_artifact_path, small_artifact, public_url=PUBLIC + "/")
    try:
        _, _, index = request(handle.url, "GET", "/")
        assert index["drift_report"] == PUBLIC + "/drift/report"
        send(handle.url, clean_rows(heldout, 100))
        check(handle.url)
        _, html = _page(handle.url)
    finally:
        handle.stop()
    outline = PageOutline(html)
    assert ("a", "href", PUBLIC + "/drift/report?format=json") in outline.urls
    assert external_urls(outline, allowed_prefixes=(PUBLIC + "/",)) == []
    assert external_urls(outline) != [], "the check above must see absolute links"


def test_public_url_option_and_environment(monkeypatch):
    monkeypatch.delenv("MONITOR_PUBLIC_URL", raising=False)
    assert monitor_module._parse_args([])[0].public_url is None
    assert monitor_module._parse_args(["--public-url", "https://m.example.com/"])[0].public_url == "https://m.example.com"
    monkeypatch.setenv("MONITOR_PUBLIC_URL", "http://10.0.0.5:5000")
    assert monitor_module._parse_args([])[0].public_url == "http://10.0.0.5:5000"
    for bad in ("ftp://m.example.com", "monitor.example.com", 'http://x"><script>'):
        with pytest.raises(SystemExit):
            monitor_module._parse_args(["--public-url", bad])


# ----------------------------------------------------------------------------------- words and helpers

def test_numeric_titles_follow_the_data():
    rng = np.random.default_rng(0)
    ref = np.sort(rng.lognormal(-0.4, 0.5, 5000))
    assert report.describe_numeric("carat", ref, np.sort(ref * 1.3), True, 2)[0] == "carat: live stones are larger"
    assert report.describe_numeric("carat", ref, np.sort(ref * 0.7), True, 2)[0] == "carat: live stones are smaller"
    depth = np.sort(rng.normal(61.7, 1.4, 5000))
    assert report.describe_numeric("depth", depth, depth + 0.7, True, 1)[0] == "depth: live stones are deeper"
    assert report.describe_numeric("table", depth, depth - 1, True, 1)[0] == "table: live tables are narrower"
    assert report.describe_numeric("width", depth, depth + 1, True, 1)[0] == "width: live width is higher"
    wide = np.sort((depth - 61.7) * 2 + 61.7)
    assert report.describe_numeric("depth", depth, wide, True, 1)[0] == "depth: live values are more spread out"
    title, subtitle = report.describe_numeric("carat", ref, ref, False, 2)
    assert title == "carat: no significant change" and subtitle.startswith("median ") and " ct " in subtitle


def test_categorical_and_concept_titles_follow_the_data():
    cats = ["Fair", "Good", "Very Good", "Premium", "Ideal"]
    ref = np.array([0.03, 0.09, 0.22, 0.26, 0.40])
    more_fair = np.array([0.15, 0.09, 0.20, 0.22, 0.34])
    assert report.describe_categorical("cut", cats, ref, more_fair, True)[0] == "cut: more Fair in live traffic"
    fewer_ideal = np.array([0.05, 0.15, 0.27, 0.33, 0.20])
    title, subtitle = report.describe_categorical("cut", cats, ref, fewer_ideal, True)
    assert title == "cut: fewer Ideal in live traffic" and subtitle.startswith("Ideal 20.0% of live vs 40.0% of training")
    u_mid = np.linspace(0.2, 0.8, 100)
    assert report.describe_concept({"detected": True, "bias_pct": 24.6}, u_mid) == \
        "live prices are 25% above what the model predicts"
    assert report.describe_concept({"detected": True, "bias_pct": -19.8}, u_mid) == \
        "live prices are 20% below what the model predicts"
    tails = np.concatenate([np.full(40, 0.02), np.full(40, 0.98), np.linspace(0.1, 0.9, 20)])
    assert report.describe_concept({"detected": True, "bias_pct": 0.5}, tails) == "errors are wider than at training"
    assert report.describe_concept({"detected": False, "bias_pct": 30}, tails).startswith("errors are in line")


def test_p_values_and_bins_are_written_for_people():
    assert report.format_p(0.523) == "0.523" and report.format_p(0.0042) == "0.0042"
    assert report.format_p(3.2e-12) == "3.2 × 10⁻¹²" and report.format_p(0.0) == "< 10⁻³⁰⁰"
    assert report.format_p(None) == "–"
    # whole-number data (table): every value sits in the middle of its bin
    edges = report._edges(53.0, 65.0, 1.0)
    assert np.allclose(edges - np.floor(edges), 0.5) and edges[0] < 53 and edges[-1] > 65
    assert np.allclose(np.diff(edges), 1.0)
    carat = report._edges(0.23, 2.31, 0.01)
    assert np.allclose(np.diff(carat), 0.1) and abs((carat[0] * 1000) % 10 - 5) < 1e-6
    assert 20 <= len(carat) - 1 <= 40
    assert report._grid(np.array([55.0, 56, 57, 58, 55, 56, 57, 58, 59, 55.5])) == 1.0  # 90% whole
    assert report._grid(np.array([55.0, 56.0, 57.0, 58.0, 55.5])) == 0.1
    assert report._grid(np.array([0.23, 0.31, 1.01])) == 0.01
    assert charts.ticks(0, 23, 5) == [0, 5, 10, 15, 20] and charts.ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert charts.log_ticks(300, 20000) == [500, 1000, 2000, 5000, 10000, 20000]


def test_gzip_is_taken_only_when_accepted():
    assert report.accepts_gzip("gzip, deflate, br")
    assert report.accepts_gzip("br;q=1.0, gzip;q=0.8")
    assert report.accepts_gzip("*")
    assert not report.accepts_gzip("")
    assert not report.accepts_gzip("identity")
    assert not report.accepts_gzip("gzip;q=0")
