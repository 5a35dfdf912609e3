"""Small HTTP client and data helpers shared by the test files."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from monitoring.diamonds import as_payload  # noqa: F401  (re-exported for the tests)


def request(url: str, method: str = "GET", path: str = "/", body=None, *, raw: bytes | None = None,
            headers: dict | None = None, timeout: float = 30.0):
    """One HTTP request on a fresh connection; returns (status, headers, parsed JSON or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json"} if payload is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=payload, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        content_type = response.getheader("Content-Type", "")
        parsed = json.loads(data) if data and content_type.startswith("application/json") else data.decode()
        return response.status, dict(response.getheaders()), parsed
    finally:
        conn.close()


def frame_payload(frame) -> list[dict]:
    """Rows of a DataFrame as /predict JSON: numbers as floats, everything else as text (any model's)."""
    return [{k: (v if isinstance(v, str) else float(v)) for k, v in row.items()} for row in frame.to_dict("records")]


def heldout_frame():
    """The held-out rows (features and price) exactly as train.py splits them."""
    from evaluation import scenarios

    return scenarios.heldout_rows()


def heldout_predicted(artifact: dict):
    """heldout_frame() with the artifact's predictions in a `predicted` column."""
    import train

    rows = heldout_frame()
    rows["predicted"] = artifact["pipeline"].predict(rows[train.FEATURES])
    return rows


def split_halves(rows):
    """Rows split in two at random (seed 0): reference half A, streamed half B (as evaluate_drift.py
    does with the held-out rows)."""
    import numpy as np

    order = np.random.default_rng(0).permutation(len(rows))
    half = len(order) // 2
    return rows.iloc[order[:half]].reset_index(drop=True), rows.iloc[order[half:]].reset_index(drop=True)


def metric_value(text: str, name: str, labels: dict | None = None) -> float:
    """The value of one sample in Prometheus text exposition, or raise KeyError."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    raise KeyError(f"{name}{labels or ''} not in the exposition")
