"""Serve the diamond-price model and watch it drift, in one process on the standard library's HTTP server.

One request:  POST /predict -> _Handler._dispatch -> _route -> _predict (Schema.parse_row validates
              each row; an InvalidInput becomes a 400 in _dispatch) -> Monitor.predict -> _Batcher (concurrent requests share one model call) ->
              Monitor._serve_batch: predict, record, join the input window -> {"prediction", "id"}.
One label:    POST /feedback -> _feedback (parse_label) -> Monitor.record_labels: join each label to
              its prediction by id, add (actual, predicted) to the labelled window.
One check:    _Every (a threading.Timer, every --check-interval s) or POST /drift/check ->
              Monitor.check_drift: copy both windows, score them with drift.DataDriftDetector and
              drift.ConceptDriftDetector, keep the DriftCheck for /drift, set the Prometheus gauges.
Options:      MonitorConfig: each field is a flag and a MONITOR_ variable (monitoring/options.py).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hmac
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

try:
    import numpy as np
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from monitoring.drift import (DEFAULT_ALPHA, DEFAULT_SCALES, ConceptDriftDetector, ConceptDriftReport,
                                  DataDriftDetector, DataDriftReport, Detection)
    from monitoring.metrics import MonitorMetrics
    from monitoring.performance import ErrorModel, PerformanceEstimate, PerformanceEstimator
    from monitoring.model import (DEFAULT_MODEL_PATH, FastPredictor, InvalidInput, ModelLoadError, Schema,
                                  describe_json, load_artifact, parse_label, release_freed_memory)
    from monitoring.store import PredictionRecord, Store, StoreError
    from monitoring.windows import InputWindow, LabelledWindow
except ModuleNotFoundError as missing:  # e.g. the system Python, with the libraries in .venv
    from monitoring.environment import run_in_project_environment

    run_in_project_environment(missing)
from monitoring.options import add_options, config_from, option, optional_path, optional_text, scale_list

log = logging.getLogger("monitor")

HERE = Path(__file__).resolve().parent


@dataclass
class MonitorConfig:
    """Every setting of the monitor. Each field is also a command-line option and an environment
    variable (MONITOR_ and the flag's name: --check-interval is MONITOR_CHECK_INTERVAL)."""
    model_path: Path = option(DEFAULT_MODEL_PATH, "model artifact written by train.py; trained here if missing",
                              flag="--model")
    host: str = option("127.0.0.1", "address to listen on; 0.0.0.0 for all interfaces")
    port: int = option(5000, "port to listen on; 0 picks a free one")
    check_interval: float = option(60.0, "seconds between drift checks; 0 for on-demand only (POST /drift/check)")
    window: int = option(1000, "recent served inputs compared with the training data")
    label_window: int = option(500, "recent labelled predictions compared with held-out errors")
    alpha: float = option(DEFAULT_ALPHA, "false-alarm probability of one drift check (data and concept each)")
    scales: tuple = option(DEFAULT_SCALES, "newest-sample counts tested besides the whole window, comma-separated; "
                                           "'' for the whole window only", parse=scale_list,
                           shown=",".join(map(str, DEFAULT_SCALES)))
    max_body_bytes: int = option(4 * 1024 * 1024, "larger request bodies get 413")
    max_rows: int = option(10_000, "most rows in one /predict list or labels in one /feedback list; more get 413")
    max_tracked_predictions: int = option(200_000, "without a store (--db ''): predictions kept in memory "
                                                   "to join late labels")
    socket_timeout: float = option(15.0, "seconds a connection may stay idle or silent mid-request")
    max_connections: int = option(256, "open connections served at once; more get 503")
    drain_seconds: float = option(10.0, "at shutdown, seconds that requests in flight may take to finish")
    db_path: Path | None = option(HERE / "monitor.db", "SQLite file recording every prediction and label; "
                                                       "'' keeps nothing", flag="--db", parse=optional_path)
    retention_days: float = option(30.0, "stored records older than this are pruned")
    max_stored_rows: int = option(5_000_000, "the oldest stored records beyond this count are pruned")
    maintenance_interval: float = option(5.0, "seconds between retries of unwritten records")
    prune_interval: float = option(600.0, "seconds between retention runs")
    token: str | None = option(None, "bearer token required on /feedback and /drift/check; unset: open",
                               parse=optional_text)
    verify_hash: bool = option(True, "check the model file against its .sha256 before loading it "
                                     "(turn off only for a file you trust)")
    access_log: bool = option(False, "log every request")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR")


# --------------------------------------------------------------------------------------------------
# The monitor: model, windows, detectors, metrics. No HTTP in here.


class Monitor:
    def __init__(self, config: MonitorConfig, artifact: dict, registry: CollectorRegistry | None = None):
        self.config = config
        self.info = artifact["info"]
        self.model_metrics = artifact["metrics"]
        self.schema = Schema(artifact["schema"])
        reference = artifact["reference_features"]
        self.predictor = FastPredictor(artifact["pipeline"], self.schema, check_rows=reference.iloc[:256])
        self.data_detector = DataDriftDetector(reference, artifact["schema"], alpha=config.alpha, scales=config.scales)
        errors = artifact["reference_errors"]
        grades = {f.name: f.categories for f in self.schema.features if f.kind == "categorical"}
        # grade segments need the held-out rows' grades: artifacts from before they were saved have none
        self.concept_detector = ConceptDriftDetector(errors["actual"], errors["predicted"], alpha=config.alpha,
                                                     scales=config.scales, grades=grades,
                                                     reference_grades=errors.get("grades"))
        # Direct loss estimation: the model's error on served traffic before labels arrive
        self.performance = (PerformanceEstimator(ErrorModel.from_dict(artifact["error_model"]), errors["predicted"],
                                                 alpha=config.alpha) if "error_model" in artifact else None)
        self.inputs = InputWindow(self.schema, config.window)
        self.labelled = LabelledWindow(config.label_window, grades=tuple(grades))
        self._grade_columns = [(self.schema.names.index(name), name) for name in grades]
        self.store = self._open_store(config)
        # Without a store, late labels are joined to predictions kept in memory.
        self._predictions = _RecentPredictions(config.max_tracked_predictions) if self.store is None else None

        self.metrics = MonitorMetrics(registry, {name: d.test for name, d in self.data_detector.detectors.items()},
                                      self.concept_detector.segment_names())
        self.metrics.watch_windows(self.inputs, self.labelled)
        self.metrics.describe_model(self.info, self.model_metrics)
        self.metrics.data_drift_alpha.set(config.alpha)
        if self.store is not None:
            self.metrics.watch_store(self.store)

        self._batcher = _Batcher(self._serve_batch)
        self._check_lock = threading.Lock()
        self._latest_check: DriftCheck | None = None
        self._loops = [_Every(config.check_interval, self._scheduled_check, "drift-check")]
        if self.store is not None:
            self._loops += [_Every(config.maintenance_interval, self._retry_unwritten, "store-retry"),
                            _Every(config.prune_interval, self.store.prune, "store-prune")]

    def _open_store(self, config: MonitorConfig) -> Store | None:
        """Open the prediction log and refill both windows from it, so that a restart (a deploy,
        a crash) neither forgets the traffic drift is measured on nor loses late labels' joins."""
        if config.db_path is None:
            return None
        store = Store(config.db_path, retention_seconds=config.retention_days * 86400,
                      max_rows=config.max_stored_rows)
        recent = store.recent_inputs(config.window)
        self.inputs.extend(recent, predictions=self.predictor.predict(recent) if recent else None)
        self.labelled.extend(store.recent_labelled(config.label_window))
        counts = store.counts()
        log.info("prediction store %s: %d predictions, %d labelled; windows refilled with %d inputs, %d labels",
                 config.db_path, counts["predictions"], counts["labelled"], len(self.inputs), len(self.labelled))
        return store

    # lifecycle
    def start(self) -> None:
        if len(self.inputs) or len(self.labelled):
            # Windows refilled from the store: report on them now, not a check interval from now.
            self.check_drift()
        self._batcher.start()
        for loop in self._loops:
            loop.start()

    def stop(self) -> None:
        """Stop the loops, answer what is queued, write what is buffered, close the store."""
        for loop in self._loops:
            loop.stop()
        self._batcher.stop()
        if self.store is not None:
            self.store.close()

    def _retry_unwritten(self) -> None:
        # A database that failed and recovered gets its buffered rows even if no traffic comes.
        pending = self.store.stats()["pending"]
        if pending or not self.store.healthy:
            try:
                self.store.flush()
            except StoreError as exc:
                log.warning("prediction store still failing, %d predictions kept for retry: %s", pending, exc)

    # serving
    def predict(self, rows: list[tuple]) -> tuple[np.ndarray, list[str]]:
        """Predict validated rows; returns (predictions, ids). Blocks until recorded."""
        return self._batcher.submit(rows)

    def _serve_batch(self, rows: list[tuple]) -> tuple[np.ndarray, list[str]]:
        predictions = self.predictor.predict(rows)
        ids = _new_ids(len(rows))
        if self.store is None:
            self._predictions.add(ids, predictions, [self._grade_codes(row) for row in rows])
        else:
            now, version = time.time(), self.info["model_version"]
            records = [PredictionRecord(i, now, row, p, version) for i, row, p in zip(ids, rows, predictions.tolist())]
            try:
                self.store.add_predictions(records)  # one transaction for the whole micro-batch
            except StoreError as exc:
                # The store keeps these rows and writes them when it can; the client still gets
                # its answer. /healthz and store_healthy show the failure.
                log.error("predictions answered but not yet recorded (kept for retry): %s", exc)
        self.inputs.extend(rows, predictions=predictions)
        self.metrics.predictions.inc(len(rows))
        self.metrics.predicted_price.observe_many(predictions)
        return predictions, ids

    def record_labels(self, labels: list[tuple[str, float]]) -> tuple[int, list[str]]:
        """Join (id, actual) labels to their predictions; returns (accepted, unknown ids).
        Raises StoreError if they could not be recorded: nothing is acknowledged then."""
        if self.store is None:
            known, unknown = self._predictions.join(labels)
        else:
            now = time.time()
            joined, unknown = self.store.add_labels([(label_id, actual, now) for label_id, actual in labels])
            known = [(actual, predicted, first, self._grade_codes(features))
                     for _, actual, predicted, features, first in joined]
        # A prediction enters the labelled window once: a corrected or resent label updates the
        # record, but counting it twice would make the window look more certain than it is.
        new = [k for k in known if k[2]]
        self.labelled.extend([(actual, predicted) for actual, predicted, _, _ in new],
                             grades=[codes for *_, codes in new])
        self.metrics.labels_received.inc(len(known))
        if unknown:
            self.metrics.labels_unknown.inc(len(unknown))
        return len(known), unknown

    def _grade_codes(self, row) -> tuple[float, ...]:
        """The schema codes of a row's grades (features in schema order, grades as strings); NaN
        for a grade that is missing or not in the schema."""
        codes = []
        for j, name in self._grade_columns:
            try:
                codes.append(self.schema.code(name, row[j]))
            except (KeyError, IndexError, TypeError):
                codes.append(float("nan"))
        return tuple(codes)

    # drift
    def check_drift(self) -> DriftCheck:
        """Score both windows now, publish the result, and return it."""
        with self._check_lock:
            started = time.perf_counter()
            self.metrics.checks.inc()
            try:
                # Copies of the windows: serving goes on while the statistics run.
                inputs, served_predictions, input_times = self.inputs.snapshot_all()
                actual, predicted, grades, label_times = self.labelled.snapshot_all()
                data = self.data_detector.score(inputs)
                concept = self.concept_detector.score(actual, predicted, grades=grades)
                performance = None if self.performance is None else self.performance.score(served_predictions)
                data.detections = {name: _dated(d, input_times) for name, d in data.detections.items()}
                concept.detection = _dated(concept.detection, label_times[np.isfinite(actual) & np.isfinite(predicted)])
            except Exception:
                self.metrics.check_failures.inc()
                raise
            duration = time.perf_counter() - started
            check = DriftCheck(dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               self.info["model_version"], data, concept, round(duration, 6), performance)
            self.metrics.check_duration.observe(duration)
            self.metrics.record_drift(data, concept, performance)
            self.metrics.last_check.set(time.time())
            self._latest_check = check
            return check

    def _scheduled_check(self) -> None:
        check = self.check_drift()
        data, concept = check.data, check.concept
        if data.detected:
            drifted = [name for name, feature in data.features.items() if feature.detected]
            log.warning("data drift detected in %s (largest distance %.3f, window %d)", ", ".join(drifted),
                        data.max_distance, data.window_size)
        if concept.detected:
            where = concept.detection.segment if concept.detection is not None else "all"
            log.warning("concept drift detected (%s): MSE %+.0f%% vs held-out, bias %+.1f%% (%d labels)", where,
                        100 * concept.mse_increase, concept.bias_pct or 0.0, concept.labelled_size)

    @property
    def latest_check(self) -> DriftCheck | None:
        return self._latest_check


@dataclass(frozen=True)
class DriftCheck:
    """One drift check: both reports, typed until the HTTP edge turns them into /drift's JSON."""
    checked_at: str  # ISO 8601, UTC
    model_version: str
    data: DataDriftReport
    concept: ConceptDriftReport
    duration_seconds: float
    performance: PerformanceEstimate | None = None  # None for an artifact without an error model

    def to_dict(self) -> dict:
        return {"checked_at": self.checked_at, "model_version": self.model_version,
                "data_drift": self.data.to_dict(), "concept_drift": self.concept.to_dict(),
                "performance_estimate": None if self.performance is None else self.performance.to_dict(),
                "duration_seconds": self.duration_seconds}


def _dated(detection: Detection | None, times: np.ndarray) -> Detection | None:
    """The detection with `since` set to the arrival time of the sample its change began at."""
    if detection is None or not 0 < detection.since_samples <= len(times):
        return detection
    return dataclasses.replace(detection, since=float(times[-detection.since_samples]))


def _new_ids(n: int) -> list[str]:
    """n random (version 4) UUIDs as 32 hex digits, like uuid4().hex, from one urandom call: making
    them one by one costs a big batch more than predicting it."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    digits = raw.tobytes().hex()
    return [digits[i:i + 32] for i in range(0, 32 * n, 32)]


class _RecentPredictions:
    """Predictions by id, the newest `capacity` of them, so that late labels can be joined when
    there is no store (--db '')."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        # (prediction, grade codes) by id; dicts keep insertion order: the first key is the oldest
        self._by_id: dict[str, tuple[float, tuple]] = {}
        self._labelled: set[str] = set()
        self._lock = threading.Lock()

    def add(self, ids: list[str], predictions: np.ndarray, grades: list[tuple]) -> None:
        with self._lock:
            self._by_id.update(zip(ids, zip(predictions.tolist(), grades)))
            excess = len(self._by_id) - self._capacity
            if excess > 0:
                for stale in list(self._by_id)[:excess]:
                    del self._by_id[stale]
                    self._labelled.discard(stale)

    def join(self, labels: list[tuple[str, float]]) -> tuple[list[tuple[float, float, bool, tuple]], list[str]]:
        """(actual, predicted, first label for this id?, grade codes) for known ids, and the unknown ids."""
        known, unknown = [], []
        with self._lock:
            for label_id, actual in labels:
                found = self._by_id.get(label_id)
                if found is None:
                    unknown.append(label_id)
                    continue
                known.append((actual, found[0], label_id not in self._labelled, found[1]))
                self._labelled.add(label_id)
        return known, unknown


class _Batcher:
    """Adaptive micro-batching: requests that arrive while the model is busy share its next call.

    There is no waiting for a batch to fill: the worker takes everything queued the moment it is free,
    so a lone request is served at once and batches grow only under load (as BentoML and Triton do).
    """

    def __init__(self, serve: Callable[[list[tuple]], tuple[np.ndarray, list[str]]], max_rows: int = 4096):
        self._serve = serve
        self._max_rows = max_rows
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="predict-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, rows: list[tuple]) -> tuple[np.ndarray, list[str]]:
        job = _PredictionJob(rows)
        self._queue.put(job)
        job.done.acquire()  # released by the worker once the job is answered
        if job.error is not None:
            raise job.error
        return job.predictions, job.ids

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, n_rows = [job], len(job.rows)
            while n_rows < self._max_rows:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
                n_rows += len(job.rows)
            self._serve_jobs(jobs)

    def _serve_jobs(self, jobs: list["_PredictionJob"]) -> None:
        try:
            rows = jobs[0].rows if len(jobs) == 1 else [row for job in jobs for row in job.rows]
            predictions, ids = self._serve(rows)
            start = 0
            for job in jobs:
                end = start + len(job.rows)
                job.predictions, job.ids = predictions[start:end], ids[start:end]
                start = end
        except Exception as exc:  # handed to every waiting request; the worker lives on
            log.exception("prediction batch failed")
            for job in jobs:
                job.error = exc
        finally:
            for job in jobs:
                job.done.release()


class _PredictionJob:
    __slots__ = ("rows", "done", "predictions", "ids", "error")

    def __init__(self, rows: list[tuple]):
        self.rows = rows
        # A lock taken at birth and released when answered: cheaper to hand over than an Event.
        self.done = threading.Lock()
        self.done.acquire()
        self.predictions: np.ndarray | None = None
        self.ids: list[str] | None = None
        self.error: Exception | None = None


class _Every:
    """Runs `task` every `interval` seconds on threading.Timer, on a fixed cadence: a slow run does
    not push later ones back, and a run that raises is logged and the schedule goes on."""

    def __init__(self, interval: float, task: Callable[[], object], name: str):
        self.interval = interval
        self.name = name
        self._task = task
        self._timer: threading.Timer | None = None
        self._next_due = 0.0
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._next_due = time.monotonic() + self.interval
        self._arm()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._timer is not None:
                self._timer.cancel()

    def _arm(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self._timer = threading.Timer(max(0.0, self._next_due - time.monotonic()), self._fire)
            self._timer.daemon = True
            self._timer.name = self.name
            self._timer.start()

    def _fire(self) -> None:
        try:
            self._task()
        except Exception:
            log.exception("%s failed; the next run is on schedule", self.name)
        finally:
            now = time.monotonic()
            self._next_due += self.interval
            if self._next_due <= now:  # a check overran whole periods: skip them rather than burst
                self._next_due = now + self.interval
            self._arm()


# --------------------------------------------------------------------------------------------------
# HTTP: each route is a function (monitor, request body) -> (status, payload).


class _HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or {}


def _predict(monitor: Monitor, body) -> tuple[int, dict]:
    single = isinstance(body, dict)
    items = [body] if single else _as_list(body, monitor.config.max_rows, "rows to predict")
    rows = [monitor.schema.parse_row(item, "" if single else f"[{i}].") for i, item in enumerate(items)]
    predictions, ids = monitor.predict(rows)
    monitor.metrics.prediction_requests.inc()
    if single:
        return 200, {"prediction": float(predictions[0]), "id": ids[0],
                     "model_version": monitor.info["model_version"]}
    return 200, {"predictions": predictions.tolist(), "ids": ids, "model_version": monitor.info["model_version"]}


def _feedback(monitor: Monitor, body) -> tuple[int, dict]:
    single = isinstance(body, dict)
    items = [body] if single else _as_list(body, monitor.config.max_rows, "labels")
    labels = [parse_label(item, "" if single else f"[{i}].") for i, item in enumerate(items)]
    try:
        accepted, unknown = monitor.record_labels(labels)
    except StoreError as exc:
        log.error("labels refused, not recorded: %s", exc)
        raise _HttpError(503, "store_unavailable", "the labels could not be recorded; nothing was "
                                                   "accepted, send them again later", {"Retry-After": "5"}) from None
    return 200, {"accepted": accepted, "unknown": unknown}


def _as_list(body, max_items: int, what: str) -> list:
    if not isinstance(body, list):
        raise InvalidInput("wrong_type", f"body: expected a JSON object or a list of objects, got "
                                         f"{describe_json(body)}")
    if not body:
        raise InvalidInput("empty_list", f"body: the list of {what} is empty")
    if len(body) > max_items:
        raise _HttpError(413, "too_many_rows", f"body: {len(body)} {what}; at most {max_items} per request")
    return body


def _get_drift(monitor: Monitor, _body) -> tuple[int, dict]:
    check = monitor.latest_check
    if check is None:
        return 200, {"checked_at": None, "message": "no drift check has run yet; POST /drift/check runs one now",
                     "next_check_in_seconds": monitor.config.check_interval or None}
    return 200, check.to_dict()


def _run_drift_check(monitor: Monitor, _body) -> tuple[int, dict]:
    try:
        return 200, monitor.check_drift().to_dict()
    except Exception as exc:
        log.exception("drift check on request failed")
        return 500, {"error": f"drift check failed: {type(exc).__name__}: {exc}"}


def _healthz(monitor: Monitor, _body) -> tuple[int, dict]:
    """200 while predictions can be served; "degraded" when the store cannot be written (predictions
    still answer and are kept for retry, so restarting the process would not help)."""
    health = {"status": "ok", "model_version": monitor.info["model_version"],
              "windows": {"inputs": len(monitor.inputs), "labelled": len(monitor.labelled)}}
    store = monitor.store
    if store is not None:
        health["store"] = {"path": str(store.path), "healthy": store.healthy, "error": store.last_error,
                           "pending": store.stats()["pending"], **store.counts()}
        if not store.healthy:
            health["status"] = "degraded"
    return 200, health


def _metrics(monitor: Monitor, _body) -> tuple[int, _Text]:
    return 200, _Text(generate_latest(monitor.metrics.registry), CONTENT_TYPE_LATEST)


def _index(monitor: Monitor, _body) -> tuple[int, dict]:
    return 200, {"service": "diamond-price model monitor", "model_version": monitor.info["model_version"],
                 "endpoints": {path: sorted(methods) for path, methods in ROUTES.items()}}


@dataclass(frozen=True)
class _Text:
    """A payload that is not JSON (the Prometheus exposition)."""
    body: bytes
    content_type: str


@dataclass(frozen=True)
class _Route:
    handler: Callable[[Monitor, object], tuple[int, "dict | _Text"]]
    reads_json: bool = False
    needs_token: bool = False  # write endpoints, when a token is configured


ROUTES: dict[str, dict[str, _Route]] = {
    "/": {"GET": _Route(_index)},
    "/predict": {"POST": _Route(_predict, reads_json=True)},
    "/feedback": {"POST": _Route(_feedback, reads_json=True, needs_token=True)},
    "/drift": {"GET": _Route(_get_drift)},
    "/drift/check": {"POST": _Route(_run_drift_check, needs_token=True)},
    "/healthz": {"GET": _Route(_healthz)},
    "/metrics": {"GET": _Route(_metrics)},
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: load balancers and clients reuse connections
    server_version = "diamond-monitor/1"
    monitor: Monitor  # set on the subclass that MonitorServer builds

    def setup(self) -> None:
        self.timeout = self.monitor.config.socket_timeout
        super().setup()
        # BaseHTTPRequestHandler sends headers and body separately; with Nagle's algorithm on, the
        # body waits for the client's delayed ACK (tens of ms a response).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __getattr__(self, name: str):
        # http.server looks up do_<METHOD>: every method goes through the one dispatch, so an unknown
        # method gets the same JSON 405 (or 404) as any other refusal.
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        endpoint = path if path in ROUTES else "other"
        with self.server.in_flight():
            if self.server.draining:
                self.close_connection = True  # shutting down: answer this one, take no more
            try:
                route = self._route(method, path)
                body = self._read_json() if route.reads_json else self._discard_body()
                status, payload = route.handler(self.monitor, body)
            except (_HttpError, InvalidInput) as exc:
                status = getattr(exc, "status", 400)  # InvalidInput: a request we understood but refuse
                self.monitor.metrics.invalid_requests.labels(endpoint, exc.reason).inc()
                self._send_json(status, {"error": exc.message}, getattr(exc, "headers", None))
                return
            if isinstance(payload, _Text):
                self._send(status, payload.body, payload.content_type)
            else:
                self._send_json(status, payload)
        if path == "/predict":
            self.monitor.metrics.prediction_latency.observe(time.perf_counter() - started)

    def _route(self, method: str, path: str) -> _Route:
        methods = ROUTES.get(path)
        if methods is None:
            raise _HttpError(404, "not_found", f"no endpoint {path[:100]!r}; endpoints: {', '.join(ROUTES)}")
        if method == "HEAD" and "GET" in methods:  # HEAD is GET without the body (_send leaves it out)
            method = "GET"
        if method not in methods:
            allowed = ", ".join(sorted(methods) + (["HEAD"] if "GET" in methods else []))
            self._discard_body()
            raise _HttpError(405, "method_not_allowed", f"{method[:20]} is not allowed on {path}; use {allowed}",
                             {"Allow": allowed})
        route = methods[method]
        token = self.monitor.config.token
        if route.needs_token and token:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                self._discard_body()
                raise _HttpError(401, "unauthorized", f"{path} needs the header 'Authorization: Bearer <token>' "
                                                      "(the MONITOR_TOKEN the monitor was started with)",
                                 {"WWW-Authenticate": "Bearer"})
        return route

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise _HttpError(411, "length_required", "chunked bodies are not accepted; send Content-Length")
            return 0
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise _HttpError(400, "bad_content_length", f"Content-Length {raw[:20]!r} is not a byte count") from None
        return length

    def _read_json(self):
        length = self._content_length()
        if length > self.monitor.config.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise _HttpError(413, "too_large", f"body of {length} bytes; at most "
                                               f"{self.monitor.config.max_body_bytes} bytes per request")
        content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", "") and not content_type.endswith("+json"):
            self.close_connection = True
            self._drain(length)
            raise _HttpError(415, "wrong_content_type", f"Content-Type {content_type!r}; send application/json "
                                                          "(with curl: -H 'Content-Type: application/json')")
        if length == 0:
            raise _HttpError(400, "empty_body", "empty body; send a JSON object such as "
                                                '{"carat": 0.5, "cut": "Ideal", ...}')
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, socket.timeout):
            self.close_connection = True
            raise _HttpError(408, "body_timeout", "the body did not arrive in time") from None
        if len(raw) < length:
            self.close_connection = True
            raise _HttpError(400, "short_body", f"body ended after {len(raw)} of {length} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and undecodable UTF-8; RecursionError deep nesting.
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise _HttpError(400, "invalid_json", f"body is not valid JSON ({detail})") from None

    def _discard_body(self):
        length = self._content_length()
        if length > self.monitor.config.max_body_bytes:
            self.close_connection = True
            raise _HttpError(413, "too_large", f"body of {length} bytes is not expected here")
        self._drain(length)
        return None

    def _drain(self, length: int) -> None:
        if length and not self.close_connection:
            self.rfile.read(length)

    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload, allow_nan=False, default=_json_default).encode()
        self._send(status, body, "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:  # the client went away; nothing to tell it
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by http.server itself (malformed request line, headers too long...) as JSON."""
        self.close_connection = True
        reason = {414: "uri_too_long", 431: "headers_too_large"}.get(code, "bad_request")
        try:
            self.monitor.metrics.invalid_requests.labels("other", reason).inc()
            if not getattr(self, "command", None):
                self.command = "GET"
            # A request line http.server could not parse leaves it assuming HTTP/0.9, which has no
            # status line or headers; answer in HTTP/1.0 so that the client sees a status.
            if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
                self.request_version = "HTTP/1.0"
            self._send_json(code, {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:
        if self.monitor.config.access_log:
            log.info("%s %s", self.address_string(), format % args)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_TOO_MANY_CONNECTIONS = json.dumps({"error": "too many open connections; retry shortly"}).encode()


class MonitorServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them: past that a new connection gets
    a 503 at once instead of a thread, so idle or slow clients cannot exhaust the process. Counts
    requests in flight so that shutdown can let them finish."""

    daemon_threads = True  # idle keep-alive connections must not hold the process at exit
    request_queue_size = 1024  # socketserver's default listen backlog of 5 resets bursts of clients

    def __init__(self, monitor: Monitor):
        handler = type("Handler", (_Handler,), {"monitor": monitor})
        self.monitor = monitor
        self.draining = False
        self._slots = threading.BoundedSemaphore(monitor.config.max_connections)
        self._in_flight = 0
        self._idle = threading.Condition()
        super().__init__((monitor.config.host, monitor.config.port), handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.monitor.metrics.invalid_requests.labels("other", "too_many_connections").inc()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(_TOO_MANY_CONNECTIONS), _TOO_MANY_CONNECTIONS))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """socketserver prints a traceback to stderr for anything a handler raises; a client that
        vanished mid-request is routine, anything else is a bug worth a logged traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended early", client_address[0])
        else:
            log.exception("unexpected error handling a request from %s", client_address[0])

    @contextlib.contextmanager
    def in_flight(self):
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Stop accepting, then wait until no request is being handled; True if none was left."""
        self.draining = True
        self.shutdown()  # serve_forever returns: no new connections are accepted
        self.socket.close()  # refuse rather than queue connections nobody will accept
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)


@dataclass
class MonitorHandle:
    """A running monitor: its URL, and stop()."""
    monitor: Monitor
    server: MonitorServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> bool:
        """Graceful: stop accepting, let requests in flight finish, then flush and close the store.
        Returns False if some request was still running after the drain period."""
        drained = self.server.drain(self.monitor.config.drain_seconds)
        self.thread.join(timeout=10)
        self.monitor.stop()
        return drained


def start_monitor(config: MonitorConfig, artifact: dict | None = None,
                  registry: CollectorRegistry | None = None) -> MonitorHandle:
    """Load the model (training one if there is none), start serving in a background thread."""
    monitor = Monitor(config, artifact if artifact is not None else load_or_train(config), registry)
    release_freed_memory()  # the artifact's pipeline and unpickling buffers are garbage by now
    monitor.start()
    server = MonitorServer(monitor)
    # A short poll interval makes shutdown prompt (serve_forever checks for it between polls).
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="http-server", daemon=True)
    thread.start()
    return MonitorHandle(monitor, server, thread)


def load_or_train(config: MonitorConfig) -> dict:
    path = Path(config.model_path)
    if not path.exists():
        log.warning("no model at %s: training one now (seconds to a minute, by the machine)", path)
        import train  # deferred: seaborn and the training code are not needed to serve

        train.save_artifact(train.train(), path)
        log.info("trained and saved %s", path)
    return load_artifact(path, verify_hash=config.verify_hash)


# --------------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv=None) -> tuple[MonitorConfig, Path | None]:
    parser = argparse.ArgumentParser(
        description="Serve the model with drift monitoring and Prometheus metrics. Every option can also "
                    "be set by the environment variable named beside it.")
    add_options(parser, MonitorConfig, "MONITOR_")
    parser.add_argument("--export-labelled", type=Path, metavar="FILE",
                        help="write the labelled records of --db to FILE (.csv, or .parquet with pyarrow) and exit")
    args = parser.parse_args(argv)
    config = config_from(args, MonitorConfig)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config, args.export_labelled


def _export_labelled(config: MonitorConfig, target: Path) -> int:
    if config.db_path is None or not config.db_path.exists():
        log.error("no prediction store at %s to export from", config.db_path)
        return 2
    fmt = "parquet" if target.suffix.lower() == ".parquet" else "csv"
    try:
        store = Store(config.db_path)
        try:
            rows = store.export_labelled(target, fmt)
        finally:
            store.close()
    except (StoreError, ImportError, OSError) as exc:
        log.error("export failed: %s", exc)
        return 2
    print(f"wrote {rows} labelled predictions to {target}")
    return 0


def main(argv=None) -> int:
    config, export_target = _parse_args(argv)
    if export_target is not None:
        return _export_labelled(config, export_target)
    try:
        handle = start_monitor(config)
    except (ModelLoadError, StoreError) as exc:
        log.error("cannot serve: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return 2
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    log.info("serving model %s on %s (drift checks every %gs, windows %d inputs / %d labels)",
             handle.monitor.info["model_version"], handle.url, config.check_interval, config.window,
             config.label_window)
    stopping.wait()
    log.info("stopping: finishing requests in flight, writing what is buffered")
    if not handle.stop():
        log.warning("some requests were still running after %gs; they were cut off", config.drain_seconds)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
