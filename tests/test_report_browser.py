"""The drift report in a real browser: Debian's Chromium, headless, loads the page from a real monitor
(port 0) after clean traffic and after drifted traffic, with every host but 127.0.0.1 unresolvable.
Read from the DOM Chromium built: every feature's charts are there and the drifted features come
first; from a screenshot at phone width: the page's stylesheet applied (the CSP lets it through)
and the charts painted in the Okabe-Ito colours."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from monitoring.charts import BLUE, ORANGE
from tests.helpers import heldout_frame
from tests.report_support import (CATEGORICAL, NUMERIC, PageOutline, check, chromium, clean_rows, drifted_rows,
                                  dump_dom, screenshot, send)

WINDOW, LABELS = 400, 300
PHONE = (390, 2000)


def test_chromium_is_installed():
    assert chromium()


@pytest.fixture(scope="module")
def browsed(small_artifact, tmp_path_factory):
    heldout = heldout_frame()
    tmp = tmp_path_factory.mktemp("report-browser")
    handle = start_monitor(MonitorConfig(port=0, check_interval=0, window=WINDOW, label_window=LABELS, db_path=None),
                           artifact=small_artifact, registry=CollectorRegistry())
    url = handle.url + "/drift/report"
    try:
        waiting = dump_dom(url)
        send(handle.url, clean_rows(heldout, WINDOW))
        clean_report = check(handle.url)
        clean_dom = dump_dom(url)
        send(handle.url, drifted_rows(heldout, WINDOW))  # replaces both windows
        drifted_report = check(handle.url)
        drifted_dom = dump_dom(url)
        png = screenshot(url, tmp / "drifted-phone.png", *PHONE)
        yield {"waiting": waiting, "clean": (clean_report, PageOutline(clean_dom)),
               "drifted": (drifted_report, PageOutline(drifted_dom)), "png": png}
    finally:
        handle.stop()


def _charts_complete(outline: PageOutline) -> None:
    assert {c["feature"] for c in outline.cards} == set(NUMERIC + CATEGORICAL)
    for card in outline.cards:
        name = card["feature"]
        expected = [f"chart-{name}-hist", f"chart-{name}-ecdf"] if name in NUMERIC else [f"chart-{name}-bars"]
        assert card["charts"] == expected, card
        assert card["shapes"] > (20 if name in NUMERIC else 10), f"{name}: empty charts"
    assert {"chart-concept-pit", "chart-concept-errors"} <= set(outline.ids)


def test_before_a_check_the_browser_shows_how_to_run_one(browsed):
    assert "No drift check has run yet" in browsed["waiting"]
    assert "/drift/check" in browsed["waiting"]


def test_clean_traffic_every_chart_and_no_drift(browsed):
    report, outline = browsed["clean"]
    _charts_complete(outline)
    assert not any(f["detected"] for f in report["data_drift"]["features"].values())
    assert not any(c["drifted"] for c in outline.cards)


def test_drifted_traffic_every_chart_and_the_drifted_features_first(browsed):
    report, outline = browsed["drifted"]
    _charts_complete(outline)
    features = report["data_drift"]["features"]
    drifted = {n for n, f in features.items() if f["detected"]}
    assert {"carat", "cut"} <= drifted
    order = [c["feature"] for c in outline.cards]
    assert set(order[:len(drifted)]) == drifted, f"drifted {sorted(drifted)} must come first: {order}"
    assert all(c["drifted"] == (c["feature"] in drifted) for c in outline.cards)
    assert order[0] == max(drifted, key=lambda n: features[n]["distance"])  # the largest change on top
    titles = {c["feature"]: c["title"] for c in outline.cards}
    assert titles["carat"] == "carat: live stones are larger"
    assert titles["cut"] == "cut: more Fair in live traffic"


def test_at_phone_width_the_stylesheet_applies_and_the_charts_are_painted(browsed):
    from PIL import Image

    with Image.open(browsed["png"]) as image:
        assert image.size == PHONE
        rgb = image.convert("RGB")
        # the page background comes from the inline stylesheet: a blocked or broken one leaves white
        assert rgb.getpixel((2, 2)) == (0xF4, 0xF4, 0xF2)
        colours = {colour for _, colour in rgb.getcolors(maxcolors=1 << 20)}

    def near(target: str) -> bool:
        r, g, b = (int(target[i:i + 2], 16) for i in (1, 3, 5))
        return any(abs(c[0] - r) <= 3 and abs(c[1] - g) <= 3 and abs(c[2] - b) <= 3 for c in colours)

    assert near(ORANGE) and near(BLUE), "the live (orange) and reference (blue) series are not painted"
    assert len(colours) > 50  # text, charts and tints, not a blank page
