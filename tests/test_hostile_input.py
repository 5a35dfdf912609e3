"""Property-based: whatever JSON arrives, the API answers 2xx/4xx JSON, never 5xx, and valid rows
are always predicted."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from tests.helpers import request

GRADES = {
    "cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
    "color": ["J", "I", "H", "G", "F", "E", "D"],
    "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=6),
    max_leaves=30,
)
positive = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False) | st.integers(1, 10_000)
valid_rows = st.fixed_dictionaries({
    "carat": positive, "depth": positive, "table": positive,
    **{name: st.sampled_from(values) for name, values in GRADES.items()},
})
# Valid rows with one field replaced by anything at all.
mutated_rows = st.tuples(valid_rows, st.sampled_from(["carat", "cut", "color", "clarity", "depth", "table"]),
                         json_values).map(lambda t: {**t[0], t[1]: t[2]})


@pytest.fixture(scope="module")
def server(small_artifact_path, small_artifact, tmp_path_factory):
    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0,
                           db_path=tmp_path_factory.mktemp("hostile") / "monitor.db")
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    yield handle
    handle.stop()


def _post(server, path, body):
    # allow_nan: send NaN/Infinity literals as real clients (and Python's json) can.
    return request(server.url, "POST", path, raw=json.dumps(body, allow_nan=True).encode())


def _assert_json_4xx_or_ok(status, reply):
    assert status < 500, reply
    assert isinstance(reply, dict)
    if status >= 400:
        assert isinstance(reply["error"], str) and reply["error"]


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(body=json_values | mutated_rows | st.lists(mutated_rows | valid_rows, min_size=1, max_size=4))
def test_predict_never_fails_on_arbitrary_json(server, body):
    status, _, reply = _post(server, "/predict", body)
    _assert_json_4xx_or_ok(status, reply)


@SETTINGS
@given(body=json_values | st.lists(st.fixed_dictionaries({"id": json_values, "actual": json_values}), max_size=4)
       | st.fixed_dictionaries({"id": st.text(max_size=40), "actual": json_values}))
def test_feedback_never_fails_on_arbitrary_json(server, body):
    status, _, reply = _post(server, "/feedback", body)
    _assert_json_4xx_or_ok(status, reply)


@SETTINGS
@given(rows=st.lists(valid_rows, min_size=1, max_size=5))
def test_valid_rows_are_always_predicted(server, rows):
    status, _, reply = _post(server, "/predict", rows)
    assert status == 200, reply
    assert len(reply["predictions"]) == len(rows) == len(set(reply["ids"]))
    assert all(math.isfinite(p) and p > 0 for p in reply["predictions"])


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_get_a_json_answer(server, raw):
    status, _, reply = request(server.url, "POST", "/predict", raw=raw)
    _assert_json_4xx_or_ok(status, reply)


# Valid JSON strings that no database stores: a lone surrogate (JSON's "\ud800"; a high one followed by
# a low one would be a valid pair) or a NUL, anywhere in otherwise ordinary text.
unstorable_text = st.tuples(st.text(max_size=8), st.characters(categories=["Cs"]) | st.just("\x00"),
                            st.text(max_size=8)).map("".join)


@SETTINGS
@given(label_id=unstorable_text, position=st.integers(0, 3))
def test_unstorable_ids_are_refused_and_never_reach_the_store(server, label_id, position):
    predicted = _post(server, "/predict", [{"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1",
                                            "depth": 61.5, "table": 55}] * 3)[2]["ids"]
    labels = [{"id": i, "actual": 1000.0} for i in predicted]
    labels.insert(position, {"id": label_id, "actual": 1000.0})
    status, _, reply = _post(server, "/feedback", labels)
    assert status == 400 and reply["error"].startswith(f"[{position}].id: not an id"), reply
    health = request(server.url, "GET", "/healthz")[2]
    assert health["status"] == "ok" and health["store"]["healthy"]
    status, _, reply = _post(server, "/feedback", [label for label in labels if label["id"] != label_id])
    assert status == 200 and reply == {"accepted": 3, "unknown": []}


@SETTINGS
@given(text=unstorable_text, field=st.sampled_from(["cut", "color", "clarity"]), as_key=st.booleans())
def test_unstorable_strings_in_rows_are_a_400(server, text, field, as_key):
    row = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}
    body = {**row, text: 1} if as_key else {**row, field: text}
    status, _, reply = _post(server, "/predict", body)
    assert status == 400, reply
    assert request(server.url, "GET", "/healthz")[2]["store"]["healthy"]
