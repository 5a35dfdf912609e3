"""What the drift report tests share: traffic to send, a headless Chromium, and an HTML link check."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.diamonds import as_payload
from tests.helpers import request

# Debian's chromium, as `make test` installs it (Makefile, system-packages).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  # Offline, for real: every host name but the test server's fails to resolve.
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
NUMERIC = ("carat", "depth", "table")
CATEGORICAL = ("cut", "color", "clarity")


def clean_rows(heldout: pd.DataFrame, n: int, seed: int = 3) -> pd.DataFrame:
    """n held-out rows (stones the model never saw), as they are."""
    return heldout.sample(n, random_state=seed).reset_index(drop=True)


def drifted_rows(heldout: pd.DataFrame, n: int, seed: int = 4) -> pd.DataFrame:
    """n held-out rows with carat scaled by 1.3 and every third stone's cut turned Fair (prices kept)."""
    rows = clean_rows(heldout, n, seed).copy()
    rows["carat"] = rows["carat"].astype(np.float64) * 1.3
    cut = rows["cut"].astype(str).to_numpy()
    cut[::3] = "Fair"
    rows["cut"] = cut
    return rows


def send(url: str, rows: pd.DataFrame, label: bool = True, chunk: int = 200) -> None:
    """Rows to /predict in lists of `chunk`, then (if `label`) their prices to /feedback."""
    for start in range(0, len(rows), chunk):
        part = rows.iloc[start:start + chunk]
        status, _, body = request(url, "POST", "/predict", as_payload(part))
        assert status == 200, body
        if label:
            labels = [{"id": i, "actual": float(p)} for i, p in zip(body["ids"], part["price"])]
            status, _, reply = request(url, "POST", "/feedback", labels)
            assert status == 200 and reply["accepted"] == len(labels), reply


def check(url: str) -> dict:
    status, _, report = request(url, "POST", "/drift/check")
    assert status == 200, report
    return report


def chromium() -> str:
    exe = shutil.which("chromium")
    # Not a skip: the page must be checked in a real browser, and `make test` installs one.
    assert exe, "chromium is missing: `make test` installs it (apt-get install chromium)"
    return exe


def run_chromium(args: list[str], timeout: float = 90.0) -> subprocess.CompletedProcess:
    """Chromium with a fresh profile in a temporary directory, removed afterwards."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("http_proxy", "https_proxy", "HTTP_PROXY",
                                                                  "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(url: str) -> str:
    result = run_chromium(["--dump-dom", url])
    assert result.returncode == 0 and "<html" in result.stdout, \
        f"chromium --dump-dom failed ({result.returncode}):\n{result.stderr[-2000:]}"
    return result.stdout


def screenshot(url: str, target: Path, width: int, height: int) -> Path:
    result = run_chromium([f"--screenshot={target}", f"--window-size={width},{height}", url])
    assert result.returncode == 0 and target.is_file(), \
        f"chromium --screenshot failed ({result.returncode}):\n{result.stderr[-2000:]}"
    return target


class PageOutline(HTMLParser):
    """What the tests read from a page: the feature cards in order (name, drifted), the charts in
    each, every id, every URL-bearing attribute, the text of <style> and of headings."""

    URL_ATTRIBUTES = {"href", "src", "srcset", "action", "formaction", "poster", "data", "xlink:href", "background",
                      "cite", "manifest", "ping"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.cards: list[dict] = []
        self.ids: list[str] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self.styles: list[str] = []
        self.style_attributes: list[str] = []
        self.labelledby: list[str] = []
        self._in_style = False
        self._heading: dict | None = None
        self._card_depth = 0
        self._depth = 0
        self.feed(html)
        self.close()

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if tag not in self.VOID:
            self._depth += 1
        if "id" in a:
            self.ids.append(a["id"])
        if "aria-labelledby" in a:
            self.labelledby.extend(a["aria-labelledby"].split())
        if "style" in a:
            self.style_attributes.append(a["style"] or "")
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value))
        if tag == "style":
            self._in_style = True
        if tag == "article" and a.get("data-feature"):
            self.cards.append({"feature": a["data-feature"], "drifted": a.get("data-drifted") == "true",
                               "id": a.get("id"), "charts": [], "title": "", "shapes": 0})
            self._card_depth = self._depth
        elif self._card_depth and self.cards:
            card = self.cards[-1]
            if tag == "svg":
                card["charts"].append(a.get("id"))
            elif tag in ("rect", "path", "circle", "polyline", "polygon"):
                card["shapes"] += 1
            elif tag == "h3":
                self._heading = card

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        if tag == "h3":
            self._heading = None
        if tag == "article" and self._card_depth == self._depth:
            self._card_depth = 0
        self._depth -= 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
        if self._heading is not None:
            self._heading["title"] += data


def external_urls(outline: PageOutline, allowed_prefixes: tuple[str, ...] = ()) -> list[str]:
    """URLs the page would fetch or link to outside itself: absolute http(s) or protocol-relative
    URLs in any URL attribute, except under `allowed_prefixes`, and any url() or @import in CSS."""
    found = []
    for tag, attribute, value in outline.urls:
        v = value.strip().lower()
        if (v.startswith(("http:", "https:", "//", "ftp:", "javascript:"))
                and not any(value.startswith(p) for p in allowed_prefixes)):
            found.append(f"<{tag} {attribute}={value!r}>")
    for css in outline.styles + outline.style_attributes:
        lowered = css.lower()
        if "url(" in lowered or "@import" in lowered or "http" in lowered:
            found.append(f"CSS: {css[:80]!r}")
    return found
