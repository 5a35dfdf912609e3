"""HTTP framing and input below validation, sent as raw bytes over real sockets to a real server.

A body that the server and a proxy in front of it could frame differently must never be run as a
request (request smuggling); a refusal must leave the connection in sync or close it; a valid JSON
value that is no float or cannot be stored must be a 400 naming its field, never a dropped connection.
"""
from __future__ import annotations

import json
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from tests.helpers import metric_value, request

ROW = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}
ROW_JSON = json.dumps(ROW).encode()
# A complete request, smuggled inside another request's body: it must never be executed.
SMUGGLED = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(ROW_JSON), ROW_JSON)


@pytest.fixture(scope="module")
def server(small_artifact):
    config = MonitorConfig(port=0, check_interval=0, db_path=None, socket_timeout=2.0)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    yield handle
    handle.stop()


def _exchange(server, data: bytes, timeout: float = 5.0) -> tuple[list[tuple[int, dict]], bool]:
    """Send raw bytes; return the (status, JSON body) responses read and whether the server closed."""
    host, port = server.server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        buffer, closed = b"", False
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                buffer += chunk
        except socket.timeout:  # kept open: everything that was going to come has come
            pass
    responses = []
    while buffer:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        assert sep, f"a response without a complete head: {buffer[:200]!r}"
        status = int(head.split()[1])
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        body, buffer = rest[:length], rest[length:]
        assert re.search(rb"Content-Type: application/json", head), head
        responses.append((status, json.loads(body)))
    return responses, closed


def _predictions(server) -> float:
    return metric_value(request(server.url, "GET", "/metrics")[2], "predictions_total")


@pytest.mark.parametrize("headers", [
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n",
    b"Content-Length: %d\r\nContent-Length: %d\r\n",
    b"Content-Length: %d\r\nContent-Length: 5\r\n",
], ids=["cl-then-te", "te-then-cl", "two-equal-lengths", "two-different-lengths"])
def test_ambiguous_framing_is_refused_and_the_connection_closed(server, headers):
    before = _predictions(server)
    body = b"0\r\n\r\n" + SMUGGLED
    n = headers.count(b"%d")
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + (headers % ((len(body),) * n))
    responses, closed = _exchange(server, head + b"\r\n" + body)
    assert len(responses) == 1 and closed
    status, reply = responses[0]
    assert status == 400 and ("Content-Length" in reply["error"] or "Transfer-Encoding" in reply["error"])
    assert _predictions(server) == before, "the smuggled request was executed"


@pytest.mark.parametrize("length", [b"+93", b"1_0", b"10 ", b"0x10", b"\xd9\xa1\xd9\xa0", b"-1", b"1e2"])
def test_a_content_length_that_is_not_plain_digits_is_refused(server, length):
    raw = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n" + ROW_JSON
    responses, closed = _exchange(server, raw)
    assert closed and [s for s, _ in responses] == [400]
    assert "is not a byte count" in responses[0][1]["error"]


@pytest.mark.parametrize("first_line,headers,status", [
    (b"POST /unknown HTTP/1.1", b"", 404),
    (b"PUT /predict HTTP/1.1", b"", 405),
    (b"POST /predict HTTP/1.1", b"Content-Type: text/plain\r\n", 415),
    (b"POST /drift HTTP/1.1", b"", 405),
], ids=["404", "405", "415", "405-get-route"])
def test_a_refused_body_is_never_run_as_the_next_request(server, first_line, headers, status):
    before = _predictions(server)
    raw = first_line + b"\r\nHost: x\r\n" + headers + b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
    responses, _ = _exchange(server, raw)
    assert [s for s, _ in responses] == [status]
    assert _predictions(server) == before, "the body was executed as a request"


def test_pipelined_requests_stay_in_sync_after_a_refusal(server):
    good = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(ROW_JSON), ROW_JSON)
    bad_json = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope"
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    # a refusal that read its whole body keeps the connection: the next requests are answered as themselves
    responses, _ = _exchange(server, good + bad_json + health + good)
    assert [s for s, _ in responses] == [200, 400, 200, 200]
    assert "prediction" in responses[0][1] and "not valid JSON" in responses[1][1]["error"]
    assert responses[2][1]["status"] == "ok" and "prediction" in responses[3][1]
    # one that did not read it ends the connection: nothing after it is answered as something else
    unread = b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(health), health)
    responses, closed = _exchange(server, good + unread + health)
    assert [s for s, _ in responses] == [200, 404] and closed


@pytest.mark.parametrize("field", ["carat", "depth", "table"])
def test_an_integer_too_large_for_a_float_is_a_400_naming_the_field(server, field):
    text = json.dumps({**ROW, field: 0}).replace('"%s": 0' % field, '"%s": %s' % (field, "9" * 400))
    before = _refusals(server, "non_finite")
    status, _, reply = request(server.url, "POST", "/predict", raw=text.encode())
    assert status == 400 and reply["error"].startswith(f"{field}: expected a finite number, got an integer too large for a float")
    assert _refusals(server, "non_finite") == before + 1


def _refusals(server, reason: str) -> float:
    text = request(server.url, "GET", "/metrics")[2]
    try:
        return metric_value(text, "invalid_requests_total", {"endpoint": "/predict", "reason": reason})
    except KeyError:  # none counted yet
        return 0.0


def test_an_integer_past_pythons_digit_limit_is_named_as_such(server):
    raw = b'{"id": "x", "actual": ' + b"9" * 5000 + b"}"
    status, _, reply = request(server.url, "POST", "/feedback", raw=raw)
    assert status == 400 and "more digits than a number can have" in reply["error"]
    status, _, reply = request(server.url, "POST", "/feedback", raw=b'{"id": "x", "actual": ' + b"9" * 400 + b"}")
    assert status == 400 and reply["error"].startswith("actual: expected a finite number")


@pytest.mark.parametrize("label_id", ["\ud800", "abc\udfff", "a\x00b", "x" * 129])
def test_an_id_that_cannot_be_stored_is_a_400_naming_it(server, label_id):
    raw = json.dumps({"id": label_id, "actual": 100.0}).encode()  # ensure_ascii: valid JSON, \ud800 escapes
    status, _, reply = request(server.url, "POST", "/feedback", raw=raw)
    assert status == 400 and reply["error"].startswith("id: not an id that /predict returns")
    listed = json.dumps([{"id": "ok", "actual": 1.0}, {"id": label_id, "actual": 1.0}]).encode()
    status, _, reply = request(server.url, "POST", "/feedback", raw=listed)
    assert status == 400 and reply["error"].startswith("[1].id: not an id")


def test_an_unstorable_category_or_field_name_is_a_400(server):
    for row in ({**ROW, "cut": "Ideal\x00"}, {**ROW, "cut": "\ud800"}, {**ROW, "\ud800": 1}):
        status, _, reply = request(server.url, "POST", "/predict", raw=json.dumps(row).encode())
        assert status == 400, reply
    assert request(server.url, "GET", "/healthz")[2]["status"] == "ok"


# ----------------------------------------------------------------------------- fuzzed framing

# Ways of writing a body's true length n: plain (the only one accepted), and the ones int() or a
# lenient proxy would also read as n.
_LENGTH_SPELLINGS = [b"%d", b"0%d", b"+%d", b"%d ", b"%d_", b"\t%d", b"%d.0"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spellings=st.lists(st.sampled_from(_LENGTH_SPELLINGS), max_size=3), chunked=st.booleans(),
       method=st.sampled_from([b"POST", b"GET", b"PUT"]), path=st.sampled_from([b"/predict", b"/feedback", b"/x"]),
       body=st.sampled_from([ROW_JSON, b"", SMUGGLED, b"{\"id\": \"\\ud800\", \"actual\": 1}", b"[" + b"9" * 400 + b"]"]))
def test_fuzzed_framing_never_desyncs_or_smuggles(server, spellings, chunked, method, path, body):
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    lengths = [spelling.replace(b"%d", str(len(body)).encode()) for spelling in spellings]
    head = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(b"Content-Length: " + n + b"\r\n" for n in lengths)
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n"
    before = _predictions(server)
    responses, closed = _exchange(server, head + b"\r\n" + body + health, timeout=1.5)
    assert responses and all(200 <= s < 500 for s, _ in responses), responses
    assert all("error" in r for s, r in responses if s >= 400)
    assert request(server.url, "GET", "/healthz")[0] == 200
    if not lengths and not chunked:
        return  # no framing: by HTTP the bytes after the head are the next request, for a proxy too
    assert len(responses) == 2 or (len(responses) == 1 and closed), "neither in sync nor closed"
    if len(responses) == 2:  # in sync: the second answer is the health check's, nothing in between
        assert responses[1][1].get("status") == "ok", responses
    ran = _predictions(server) - before
    executed_first = responses[0][0] == 200 and method == b"POST" and path == b"/predict"
    assert ran == (1 if executed_first else 0), "a request ran that was not sent as one"


def test_a_bug_in_a_handler_is_a_json_500_and_the_server_goes_on(server, monkeypatch, caplog):
    """An unexpected exception (a bug, not bad input) answers JSON 500, is counted and logged with
    its traceback, and neither drops the connection unanswered nor stops the server."""
    import monitor

    def broken(_monitor, _body):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(monitor.ROUTES["/drift"], "GET", monitor._Route(broken))
    def internal_errors() -> float:
        text = request(server.url, "GET", "/metrics")[2]
        try:
            return metric_value(text, "refused_requests_total", {"endpoint": "/drift", "reason": "internal_error"})
        except KeyError:  # the labelled counter exists from its first increment
            return 0.0

    before = internal_errors()
    responses, closed = _exchange(server, b"GET /drift HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses == [(500, {"error": "internal error (ZeroDivisionError); the monitor's log has the details"})]
    assert closed
    assert internal_errors() == before + 1
    assert any("GET /drift failed" in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    status, _, reply = request(server.url, "GET", "/healthz")
    assert status == 200, reply
