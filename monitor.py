"""Serve the diamond-price model and watch it drift, in one process on the standard library's HTTP server.

One request:  POST /predict -> _Handler._dispatch -> _route -> _predict (Schema.parse_row validates
              each row; an InvalidInput becomes a 400 in _dispatch) -> Monitor.predict -> _Batcher (concurrent requests share one model call) ->
              Monitor._serve_batch: predict, record, join the input window -> {"prediction", "id"}.
One label:    POST /feedback -> _feedback (parse_label) -> Monitor.record_labels: join each label to
              its prediction by id, add (actual, predicted) to the labelled window.
One check:    _Every (a threading.Timer, every --check-interval s) or POST /drift/check ->
              Monitor.check_drift: copy both windows, score them with drift.DataDriftDetector and
              drift.ConceptDriftDetector, keep the DriftCheck for /drift, set the Prometheus gauges.
              On a shared PostgreSQL store (--db postgresql://...) the check is the fleet's: one
              replica per interval reads the fleet's windows from the store (only what changed
              since its last check: pg_windows.py), scores them and stores the report
              (pg_store.PgStore.fleet_check); every replica serves and gauges the latest.
One view:     GET /drift/report -> _drift_report -> report.ReportPage: the latest check drawn (once per
              check, on its first view), then sent from memory.
Options:      MonitorConfig: each field is a flag and a MONITOR_ variable (monitoring/options.py).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import hmac
import io
import json
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

try:
    import numpy as np
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from monitoring.drift import (DEFAULT_ALPHA, DEFAULT_SCALES, ConceptDriftDetector, ConceptDriftReport,
                                  DataDriftDetector, DataDriftReport, Detection)
    from monitoring.export import export_labelled
    from monitoring.fleet import (CheckWindows, StoredSnapshot, concept_report_from_dict, data_report_from_dict,
                                  performance_from_dict, windows_from_columns)
    from monitoring.lockfile import WriterLock
    from monitoring.metrics import MonitorMetrics, value_buckets
    from monitoring.classification import ClassificationConceptDetector, labelled_pairs
    from monitoring.performance import ErrorModel, PerformanceEstimate, PerformanceEstimator
    from monitoring.report import REPORT_PATH, Reference, ReportPage
    from monitoring.sequential import SequentialConceptDetector, SequentialDataDetector, Watch
    from monitoring import sequential
    from monitoring.model import (DEFAULT_MODEL_PATH, InvalidInput, ModelLoadError, Schema, describe_json,
                                  load_artifact, make_predictor, release_freed_memory)
    from monitoring.store import MemoryStore, PredictionRecord, Store, StoreError, StoreLayout, open_store
    from monitoring.windows import InputWindow, LabelledWindow
except ModuleNotFoundError as missing:  # e.g. the system Python, with the libraries in .venv
    from monitoring.environment import run_in_project_environment

    run_in_project_environment(missing)
from monitoring.options import add_options, config_from, option, optional_path, optional_text, scale_list

log = logging.getLogger("monitor")

HERE = Path(__file__).resolve().parent


def _db_location(value: str) -> Path | str | None:
    """--db: a postgresql:// URL (kept as text), an SQLite file's path, or '' for no store."""
    if not value:
        return None
    if value.startswith(("postgresql://", "postgres://")):
        return value
    return Path(value)


def _public_url(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith(("http://", "https://")) or any(c in value for c in "\"'<> "):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


@dataclass
class MonitorConfig:
    """Every setting of the monitor. Each field is also a command-line option and an environment
    variable (MONITOR_ and the flag's name: --check-interval is MONITOR_CHECK_INTERVAL)."""
    model_path: Path = option(DEFAULT_MODEL_PATH, "model artifact written by train.py; the default (the diamond "
                              "model) is trained here if missing", flag="--model")
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
    db_path: Path | str | None = option(HERE / "monitor.db", "SQLite file recording every prediction and label, "
                                                             "or a postgresql:// URL, a database shared by several "
                                                             "replicas of one model; '' keeps nothing", flag="--db",
                                        parse=_db_location)
    replica_id: str | None = option(None, "this replica's name in a shared store (which replica served a "
                                          "prediction, ran a check)", shown="host:port", parse=optional_text)
    db_timeout: float = option(5.0, "PostgreSQL: seconds a statement may run, or a session idle in a "
                                    "transaction, before the server ends it (bounds how long a hung replica "
                                    "holds the fleet check)")
    retention_days: float = option(30.0, "stored records older than this are pruned")
    max_stored_rows: int = option(5_000_000, "the oldest stored records beyond this count are pruned")
    maintenance_interval: float = option(5.0, "seconds between retries of unwritten records")
    prune_interval: float = option(600.0, "seconds between retention runs")
    token: str | None = option(None, "bearer token required on /feedback and /drift/check; unset: open. "
                                     "Never a flag: a command line is visible to every local user",
                               parse=optional_text, cli=False)
    token_file: Path | None = option(None, "file holding the bearer token (instead of MONITOR_TOKEN)",
                                     parse=optional_path)
    public_url: str | None = option(None, "address people open the monitor at, e.g. https://monitor.example.com; "
                                          "used only for links, such as the drift report's", parse=_public_url)
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
        self.classes = self.schema.classes  # a classifier's, in the order of its probabilities
        self.class_names = [str(c) for c in self.classes]  # as JSON keys and metric labels show them
        reference = artifact["reference_features"]
        # The fast forest path where it applies and is exact, else the pipeline (monitoring/model.py).
        self.predictor = make_predictor(artifact["pipeline"], self.schema, check_rows=reference.iloc[:256])
        self.data_detector = DataDriftDetector(reference, artifact["schema"], alpha=config.alpha, scales=config.scales)
        errors = artifact["reference_errors"]
        grades = {f.name: f.categories for f in self.schema.features if f.kind == "categorical"}
        if self.schema.is_classification:
            # Its labelled window holds (correct, log loss) per label: monitoring/classification.py.
            self.concept_detector = ClassificationConceptDetector(errors["actual"], errors["probabilities"],
                                                                  alpha=config.alpha)
        else:
            # grade segments need the held-out rows' grades: artifacts from before they were saved have none
            # the artifact's choice of error: the log ratio for positive targets (an artifact from
            # before the choice was recorded is the diamond model's), else the residual
            self.concept_detector = ConceptDriftDetector(errors["actual"], errors["predicted"], alpha=config.alpha,
                                                         scales=config.scales, grades=grades,
                                                         reference_grades=errors.get("grades"),
                                                         error=errors.get("error", "log_ratio"))
        # Direct loss estimation: the model's error on served traffic before labels arrive (a
        # regression with positive targets: the artifact has an error model then)
        self.performance = (PerformanceEstimator(ErrorModel.from_dict(artifact["error_model"]), errors["predicted"],
                                                 alpha=config.alpha) if "error_model" in artifact else None)
        # CUSUMs between checks (monitoring/sequential.py): updated with every served batch and every
        # batch of labels, an alarm triggers a check at once. A classifier's concept has none yet.
        self.sequential_data = SequentialDataDetector.of(self.data_detector, reference)
        self.sequential_concept = (SequentialConceptDetector(self.concept_detector, errors["actual"], errors["predicted"])
                                   if isinstance(self.concept_detector, ConceptDriftDetector) else None)
        self._watch_data = None if self.sequential_data is None else Watch(self.sequential_data)
        self._watch_concept = None if self.sequential_concept is None else Watch(self.sequential_concept)
        # GET /drift/report: the latest check drawn, rendered at most once per check (monitoring/report.py)
        self.report_page = ReportPage(
            Reference(reference, self.data_detector, errors["actual"], errors["predicted"], self.concept_detector),
            public_url=config.public_url, check_interval=config.check_interval, token_required=bool(config.token))
        self.inputs = InputWindow(self.schema, config.window)
        self.labelled = LabelledWindow(config.label_window, grades=tuple(grades))
        self._grade_columns = [(self.schema.names.index(name), name) for name in grades]
        self.replica_id = config.replica_id or ""  # host:port once the server listens (name_replica)
        self._writer_lock: WriterLock | None = None
        self.store = self._open_store(config)
        # A store shared by a fleet of replicas (PostgreSQL): the database's clock stamps records,
        # and drift checks are the fleet's, run by one replica per interval and stored.
        self.fleet = bool(getattr(self.store, "shared", False))
        if self.fleet:  # a replica sees only its own traffic: the fleet check runs the CUSUMs over its windows
            self._watch_data = self._watch_concept = None
        self._numeric_columns = ([] if self.sequential_data is None else
                                 [(self.schema.names.index(name), name) for name in self.sequential_data.features])
        self._fleet_report_id = 0  # the stored fleet report this replica serves
        self._fleet_checked_at = -math.inf  # when the fleet report this replica serves was checked
        self._fleet_refreshed = 0.0

        self.metrics = MonitorMetrics(registry, {name: d.test for name, d in self.data_detector.detectors.items()},
                                      self.concept_detector.segment_names(),
                                      value_bounds=None if self.schema.is_classification
                                      else value_buckets(errors["predicted"]),
                                      classes=[str(c) for c in self.classes],
                                      # the subjects a check's `sequential` report names (its keys)
                                      cusum_subjects={kind: [] if detector is None else list(detector.statistics())
                                                      for kind, detector in (("data", self.sequential_data),
                                                                             ("concept", self.sequential_concept))})
        self.metrics.watch_windows(self.inputs, self.labelled)
        if self.fleet:  # the windows drift is measured on are the fleet's: those of the latest report
            self.metrics.window_samples.labels("inputs").set_function(
                lambda: self._latest_check.data.window_size if self._latest_check else 0)
            self.metrics.window_samples.labels("labelled").set_function(
                lambda: self._latest_check.concept.labelled_size if self._latest_check else 0)
        self.metrics.describe_model(self.info, self.model_metrics)
        self.metrics.data_drift_alpha.set(config.alpha)
        self.metrics.watch_store(self.store)

        self._batcher = _Batcher(self._serve_batch)
        self._check_lock = threading.Lock()
        self._latest_check: DriftCheck | None = None
        self._alarm_checks = _Trigger(self._alarm_check, min_gap=ALARM_CHECK_GAP, name="drift-alarm-check")
        self._loops = [_Every(config.check_interval, self._scheduled_check, "drift-check"),
                       _Every(config.maintenance_interval, self._retry_unwritten, "store-retry"),
                       # first soon after start: a monitor restarted more often than the interval
                       # would otherwise never prune
                       _Every(config.prune_interval, self.store.prune, "store-prune",
                              first=min(config.prune_interval, 5.0))]

    def _open_store(self, config: MonitorConfig) -> Store | MemoryStore:
        """Open the prediction log and refill both windows from it, so that a restart (a deploy,
        a crash) neither forgets the traffic drift is measured on nor loses late labels' joins.
        Without a file (--db ''), the newest predictions are kept in memory to join late labels.
        An SQLite file is refused when another live monitor process writes it (monitoring/lockfile.py);
        a postgresql:// URL is the fleet's database, written by every replica."""
        options = {"retention_seconds": config.retention_days * 86400, "max_rows": config.max_stored_rows,
                   "layout": StoreLayout.from_schema(self.schema)}
        if isinstance(config.db_path, str):
            options.update(replica=self.replica_id, timeout=config.db_timeout)
        elif config.db_path is not None:
            self._writer_lock = WriterLock(config.db_path).acquire()
        try:
            # A classifier's labels need the features of their predictions (the probability of the
            # true class), in a fleet's checks too.
            store = open_store(config.db_path, memory_capacity=config.max_tracked_predictions,
                               keep_features=self.schema.is_classification, **options)
        except BaseException:
            if self._writer_lock is not None:
                self._writer_lock.release()
            raise
        # Each row with its stored time (when a change began stays right across a restart) and each
        # label with its input's grades (the concept segments by grade), as the windows had them.
        stored = store.recent_input_rows(config.window)
        fitting = [(row, ts) for row, _, ts in stored if self.schema.fits(row)]
        if len(fitting) < len(stored):  # rows of another model's schema, or damaged: not served by this one
            log.warning("%d stored inputs do not fit this model's schema (unknown category, missing or "
                        "non-finite value); left out of the drift window", len(stored) - len(fitting))
        if fitting:  # predicted again: the served model may not be the one that predicted them
            rows = [row for row, _ in fitting]
            self.inputs.extend(rows, now=np.array([ts for _, ts in fitting]), predictions=self._point_predictions(rows))
        labelled = [(actual, predicted, ts, features)
                    for actual, predicted, ts, features in store.recent_labelled_rows(config.label_window)
                    if _finite(actual) and _finite(predicted)
                    and (not self.schema.is_classification or self.schema.fits(features))]
        self.labelled.extend(self._window_pairs([(actual, predicted, features) for actual, predicted, _, features
                                                 in labelled]),
                             grades=[self._grade_codes(features) for *_, features in labelled],
                             now=np.array([ts for _, _, ts, _ in labelled]))
        counts = store.counts()
        log.info("prediction store (%s): %d predictions, %d labelled; windows refilled with %d inputs, %d labels",
                 store.describe(), counts["predictions"], counts["labelled"], len(self.inputs), len(self.labelled))
        return store

    def name_replica(self, port: int) -> None:
        """The replica's name in a shared store: --replica-id, else this host and the port it
        listens on (known only once the server is bound, before any request)."""
        self.replica_id = self.config.replica_id or f"{socket.gethostname()}:{port}"
        if self.fleet:
            self.store.replica = self.replica_id

    # lifecycle
    def start(self) -> None:
        if self.fleet:
            # The fleet's latest report, if any: /drift serves it from the first request.
            try:
                self.refresh_fleet_report(force=True)
            except StoreError as exc:
                log.warning("no fleet drift report yet: %s", exc)
        elif len(self.inputs) or len(self.labelled):
            # Windows refilled from the store: report on them now, not a check interval from now.
            self.check_drift()
        self._batcher.start()
        self._alarm_checks.start()
        for loop in self._loops:
            loop.start()

    def stop(self) -> None:
        """Stop the loops, answer what is queued, write what is buffered, close the store."""
        for loop in self._loops:
            loop.stop()
        self._alarm_checks.stop()
        self._batcher.stop()
        self.store.close()
        if self._writer_lock is not None:
            self._writer_lock.release()

    def _retry_unwritten(self) -> None:
        # A database that failed and recovered gets its buffered rows even if no traffic comes.
        pending = self.store.stats()["pending"]
        if pending or not self.store.healthy or self.fleet:  # a shared database is pinged: outages show
            try:
                self.store.flush()
            except StoreError as exc:
                log.warning("prediction store still failing, %d predictions kept for retry: %s", pending, exc)

    # serving
    def predict(self, rows: list[tuple]) -> tuple[np.ndarray, list[str]]:
        """Predict validated rows; returns (predictions, ids). Blocks until recorded."""
        return self._batcher.submit(rows)

    def _serve_batch(self, rows: list[tuple]) -> tuple[np.ndarray, list[str]]:
        """Predictions for the rows: a regression's values, or a classifier's probabilities (rows x
        classes; the store records the predicted class's index)."""
        if self.schema.is_classification:
            predictions = self.predictor.predict_proba(rows)
            recorded = predictions.argmax(axis=1).astype(np.float64)
        else:
            predictions = recorded = self.predictor.predict(rows)
        ids = _new_ids(len(rows))
        # A fleet's records are stamped by the database's clock when stored (ts None), not by ours.
        now, version = None if self.fleet else time.time(), self.info["model_version"]
        records = [PredictionRecord(i, now, row, p, version) for i, row, p in zip(ids, rows, recorded.tolist())]
        try:
            self.store.add_predictions(records)  # one transaction for the whole micro-batch
        except StoreError as exc:
            # The store keeps these rows and writes them when it can; the client still gets
            # its answer. /healthz and store_healthy show the failure.
            log.error("predictions answered but not yet recorded (kept for retry): %s", exc)
        self.inputs.extend(rows, now=now, predictions=recorded)  # the stored time: the same after a restart
        if self._watch_data is not None:
            columns = {name: np.array([_number_or_nan(row[j]) for row in rows]) for j, name in self._numeric_columns}
            if self._watch_data.update(columns, now=now).alarm:
                self._alarm_checks.fire()
        self.metrics.predictions.inc(len(rows))
        if self.schema.is_classification:
            counts = np.bincount(recorded.astype(np.int64), minlength=len(self.classes))
            for name, n in zip(self.class_names, counts.tolist()):
                if n:
                    self.metrics.predictions_by_class.labels(name).inc(n)
        else:
            self.metrics.predicted_value.observe_many(predictions)
        return predictions, ids

    def _point_predictions(self, rows: list[tuple]) -> np.ndarray:
        """What the input window keeps of each row's prediction: a regression's value, a classifier's
        predicted class code."""
        if self.schema.is_classification:
            return self.predictor.predict_proba(rows).argmax(axis=1).astype(np.float64)
        return self.predictor.predict(rows)

    def _window_pairs(self, labelled: list[tuple]) -> list:
        """(actual, predicted, features) of labelled predictions -> the labelled window's rows: a
        regression's (actual, predicted); a classifier's (correct, log loss), from probabilities
        predicted again from the stored features (the same pipeline gives the probabilities it served)."""
        if not self.schema.is_classification:
            return [(actual, predicted) for actual, predicted, _ in labelled]
        if not labelled:
            return []
        probabilities = self.predictor.predict_proba([features for _, _, features in labelled])
        actual = [int(a) for a, _, _ in labelled]
        return labelled_pairs(probabilities, actual, [int(p) for _, p, _ in labelled]).tolist()

    @property
    def _label_pairs(self):
        """What a fleet check makes of the labelled rows it reads: a classifier's (correct, loss),
        from probabilities predicted again from their features, as for a label this replica takes;
        a regression's are (actual, predicted) as read (None)."""
        return self._window_pairs if self.schema.is_classification else None

    def record_labels(self, labels: list[tuple[str, float]]) -> tuple[int, list[str]]:
        """Join (id, actual) labels to their predictions; returns (accepted, unknown ids).
        Raises StoreError if they could not be recorded: nothing is acknowledged then."""
        now = None if self.fleet else time.time()  # None: the database's clock, in a fleet
        joined, unknown = self.store.add_labels([(label_id, actual, now) for label_id, actual in labels])
        # A prediction enters the labelled window once: a corrected or resent label updates the
        # record, but counting it twice would make the window look more certain than it is.
        new = [(actual, predicted, features) for _, actual, predicted, features, first in joined if first]
        self.labelled.extend(self._window_pairs(new), grades=[self._grade_codes(features) for *_, features in new],
                             now=now)
        if self._watch_concept is not None and new:
            actual = np.array([a for a, _, _ in new], dtype=np.float64)
            predicted = np.array([p for _, p, _ in new], dtype=np.float64)
            if self._watch_concept.update(actual, predicted, now=now).alarm:
                self._alarm_checks.fire()
        self.metrics.labels_received.inc(len(joined))
        if unknown:
            self.metrics.labels_unknown.inc(len(unknown))
        return len(joined), unknown

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
    def check_drift(self, consume_alarms: bool = True) -> DriftCheck:
        """Score both windows now, publish the result, and return it. In a fleet: score the fleet's
        windows now, here, and store the report for every replica. `consume_alarms=False` (the
        check a CUSUM alarm triggers): the next check reports the alarms again."""
        if self.fleet:
            return self._fleet_check(force=True)
        with self._check_lock:
            started = time.perf_counter()
            self.metrics.checks.inc()
            try:
                # Copies of the windows: serving goes on while the statistics run.
                inputs, served_predictions, input_times = self.inputs.snapshot_all()
                actual, predicted, grades, label_times = self.labelled.snapshot_all()
                windows = CheckWindows(inputs, served_predictions, input_times, actual, predicted, grades, label_times)
                data, concept, performance = self._score(windows)
                self._with_sequential(data, concept, *(None if watch is None else watch.report(consume_alarms)
                                                       for watch in (self._watch_data, self._watch_concept)))
            except Exception:
                self.metrics.check_failures.inc()
                raise
            duration = time.perf_counter() - started
            check = DriftCheck(dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               self.info["model_version"], data, concept, round(duration, 6), performance,
                               checked_by=self.replica_id or None)
            self.metrics.check_duration.observe(duration)
            self.metrics.record_drift(data, concept, performance)
            self.metrics.last_check.set(time.time())
            self._latest_check = check
            self.report_page.publish(check.to_dict(), windows.snapshot)  # drawn on its first view, not here
            return check

    def _score(self, windows: CheckWindows) -> tuple[DataDriftReport, ConceptDriftReport, PerformanceEstimate | None]:
        """One check's statistics on its windows, a replica's own or the fleet's (the same code, so
        that a fleet check flags what a single replica would): the tests, the segments, the
        performance estimate, and when each detected change began."""
        data = self.data_detector.score(windows.inputs)
        concept = self.concept_detector.score(windows.actual, windows.predicted, grades=windows.grades)
        performance = None if self.performance is None else self.performance.score(windows.predictions)
        data.detections = {name: _dated(d, windows.input_times) for name, d in data.detections.items()}
        scored = np.isfinite(windows.actual) & np.isfinite(windows.predicted)  # the labels the detector kept
        concept.detection = _dated(concept.detection, windows.label_times[scored])
        return data, concept, performance

    def _fleet_check(self, force: bool) -> DriftCheck | None:
        """The fleet's check, if it is this replica's turn (force: now, whoever ran the last one);
        None when another replica runs or ran this interval's check, whose report is then taken up."""
        started = time.perf_counter()
        scored: dict = {}
        # The CUSUMs report the alarms on rows newer than the fleet's previous check, whichever
        # replica ran it: take up the latest report first (one query; a check that another replica
        # stores in between is still counted from the one before it).
        with contextlib.suppress(StoreError):
            self.refresh_fleet_report(force=True)

        def score(columns: dict[str, list], labelled: dict[str, list], checked_at: float) -> tuple[dict, str]:
            windows = windows_from_columns(self.schema, columns, labelled, self._label_pairs)
            data, concept, performance = self._score(windows)
            self._with_sequential(data, concept, *self._fleet_sequential(windows))
            check = DriftCheck(_iso(checked_at), self.info["model_version"], data, concept,
                               round(time.perf_counter() - started, 6), performance, scope="fleet",
                               checked_by=self.replica_id)
            scored.update(check=check, snapshot=windows.snapshot)
            return check.to_dict(), check.model_version

        try:
            stored = self.store.fleet_check(score, window=self.config.window, label_window=self.config.label_window,
                                            interval=self.config.check_interval, force=force,
                                            checked_by=self.replica_id)
        except Exception:
            self.metrics.checks.inc()
            self.metrics.check_failures.inc()
            raise
        if stored is None:  # not this replica's turn: serve the report of the replica whose it was
            self.refresh_fleet_report(force=True)
            return None
        check = scored["check"]
        self.metrics.checks.inc()
        self.metrics.check_duration.observe(check.duration_seconds)
        self._adopt(stored.id, stored.checked_at, check, scored["snapshot"])
        return check

    def _with_sequential(self, data: DataDriftReport, concept, data_seq: dict | None, concept_seq: dict | None) -> None:
        """Add the CUSUMs' report to a check's: an alarm since the previous check makes it detected."""
        if data_seq is not None:
            data.sequential = data_seq
            data.detected = data.detected or data_seq["alarm"]
        if concept_seq is not None:
            concept.sequential = concept_seq
            concept.detected = concept.detected or concept_seq["alarm"]

    def _fleet_sequential(self, windows: CheckWindows) -> tuple[dict | None, dict | None]:
        """A fleet check's CUSUMs: each replica sees only its own traffic, so the check runs them from
        zero over the fleet's windows in arrival order and reports the alarms raised on rows that
        arrived after the previous fleet check (the rows before only bring the CUSUMs up to date)."""
        after = self._fleet_checked_at
        data = concept = None
        if self.sequential_data is not None:
            rows = self.sequential_data.transform(windows.inputs)
            result = self.sequential_data.scan(rows, windows.input_times, after)
            data = sequential.report(result, result.alarms, result.alarms)
        if self.sequential_concept is not None:
            rows = self.sequential_concept.transform(windows.actual, windows.predicted)
            result = self.sequential_concept.scan(rows, windows.label_times, after)
            concept = sequential.report(result, result.alarms, result.alarms)
        return data, concept

    def _alarm_check(self) -> None:
        """A CUSUM alarmed: check now (off the request thread, at most once per ALARM_CHECK_GAP s),
        so /drift and the gauges follow within a second. Its alarms stay for the next check to
        report again: the regular checks (and POST /drift/check) see every alarm."""
        self._scheduled_check(triggered=True)

    def refresh_fleet_report(self, force: bool = False) -> None:
        """Take up the fleet's latest stored report if it is newer than the one served: /drift, the
        gauges, the report page. Without `force`, at most 5 times a second and only while the store
        answers (GET /drift calls it). Raises StoreError (with force) if the store cannot be read."""
        now = time.monotonic()
        if not force and (now - self._fleet_refreshed < 0.2 or not self.store.healthy):
            return
        self._fleet_refreshed = now
        try:
            stored = self.store.latest_report(newer_than=self._fleet_report_id)
        except StoreError:
            if force:
                raise
            # A database that hangs costs each try up to --db-timeout: GET /drift serves the
            # report it has for the next 5 s rather than wait on every request.
            self._fleet_refreshed = time.monotonic() + 5.0
            return
        if stored is None:
            return
        check = DriftCheck.from_dict(stored.report)
        snapshot = StoredSnapshot(self.store, self.schema, check.data.window_size, check.concept.labelled_size,
                                  until=stored.checked_at, pairs=self._label_pairs)
        self._adopt(stored.id, stored.checked_at, check, snapshot)

    def _adopt(self, report_id: int, checked_at: float, check: DriftCheck, snapshot) -> None:
        with self._check_lock:
            if report_id <= self._fleet_report_id:  # never step back to an older report
                return
            self._fleet_report_id = report_id
            self._fleet_checked_at = checked_at
            self.metrics.record_drift(check.data, check.concept, check.performance)
            self.metrics.last_check.set(checked_at)
            self._latest_check = check
            self.report_page.publish(check.to_dict(), snapshot)

    def _scheduled_check(self, triggered: bool = False) -> None:
        if self.fleet:
            check = self._fleet_check(force=False)
            if check is None:
                return
        else:
            check = self.check_drift(consume_alarms=not triggered)
        data, concept = check.data, check.concept
        for what, report in (("data", data), ("concept", concept)):
            for subject, entry in ((getattr(report, "sequential", None) or {}).get("subjects") or {}).items():
                if entry["alarm"]:
                    log.warning("%s drift: the CUSUM of %s (%s) crossed %.1f > %.1f, since row %s", what, subject,
                                entry["direction"], entry["statistic"], entry["threshold"], entry["since_row"])
        if data.detected:
            drifted = [name for name, feature in data.features.items() if feature.detected]
            log.warning("data drift detected in %s (largest distance %.3f, window %d)", ", ".join(drifted),
                        data.max_distance, data.window_size)
        if concept.detected and self.schema.is_classification:
            log.warning("concept drift detected: accuracy %.1f%% vs %.1f%% held-out, log loss %+.0f%% (%d labels)",
                        100 * concept.accuracy, 100 * concept.reference_accuracy, 100 * (concept.loss_increase or 0.0),
                        concept.labelled_size)
        elif concept.detected:
            where = concept.detection.segment if concept.detection is not None else "all"
            # A labels' CUSUM alarm can flag it before the window holds enough labels to test (no MSE yet)
            mse = "n/a" if concept.mse_increase is None else f"{100 * concept.mse_increase:+.0f}%"
            log.warning("concept drift detected (%s): MSE %s vs held-out, bias %+.1f%% (%d labels)", where,
                        mse, concept.bias_pct or 0.0, concept.labelled_size)

    @property
    def latest_check(self) -> DriftCheck | None:
        if self.fleet:
            self.refresh_fleet_report()
        return self._latest_check


def _iso(unix_seconds: float) -> str:
    return dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class DriftCheck:
    """One drift check: both reports, typed until the HTTP edge turns them into /drift's JSON."""
    checked_at: str  # ISO 8601, UTC
    model_version: str
    data: DataDriftReport
    concept: ConceptDriftReport
    duration_seconds: float
    performance: PerformanceEstimate | None = None  # None for an artifact without an error model
    scope: str = "replica"  # "fleet": the windows of every replica sharing the store
    checked_by: str | None = None  # the replica that ran it

    def to_dict(self) -> dict:
        return {"checked_at": self.checked_at, "model_version": self.model_version,
                "data_drift": self.data.to_dict(), "concept_drift": self.concept.to_dict(),
                "performance_estimate": None if self.performance is None else self.performance.to_dict(),
                "duration_seconds": self.duration_seconds, "scope": self.scope, "checked_by": self.checked_by}

    @classmethod
    def from_dict(cls, d: dict) -> "DriftCheck":
        """to_dict() read back (a fleet report stored by another replica)."""
        return cls(d["checked_at"], d["model_version"], data_report_from_dict(d["data_drift"]),
                   concept_report_from_dict(d["concept_drift"]), d["duration_seconds"],
                   performance_from_dict(d.get("performance_estimate")), scope=d.get("scope", "fleet"),
                   checked_by=d.get("checked_by"))


def _dated(detection: Detection | None, times: np.ndarray) -> Detection | None:
    """The detection with `since` set to the arrival time of the sample its change began at."""
    if detection is None or not 0 < detection.since_samples <= len(times):
        return detection
    return dataclasses.replace(detection, since=float(times[-detection.since_samples]))


def _number_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _new_ids(n: int) -> list[str]:
    """n random (version 4) UUIDs as 32 hex digits, like uuid4().hex, from one urandom call: making
    them one by one costs a big batch more than predicting it."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    digits = raw.tobytes().hex()
    return [digits[i:i + 32] for i in range(0, 32 * n, 32)]


class _Batcher:
    """Adaptive micro-batching: requests that arrive while the model is busy share its next call.

    There is no waiting for a batch to fill: the worker takes everything queued the moment it is free,
    so a lone request is served at once and batches grow only under load (as BentoML and Triton do).
    A request of more than `whole_rows` rows is served `chunk_rows` rows per model call, the big
    requests in turn, each call shared with the small requests queued meanwhile: a single row waits
    for one chunk, not for four 10,000-row lists. Up to `whole_rows`, a request is one call (a few
    ms of model time), so lists of a thousand rows keep their throughput.
    """

    def __init__(self, serve: Callable[[list[tuple]], tuple[np.ndarray, list[str]]], max_rows: int = 4096,
                 whole_rows: int = 1024, chunk_rows: int = 128):
        self._serve = serve
        self._max_rows = max_rows
        self._whole_rows = whole_rows
        self._chunk_rows = chunk_rows
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
        big: collections.deque[_PredictionJob] = collections.deque()  # served a chunk at a time, in turn
        stopping = False
        while not (stopping and not big):
            small: list[_PredictionJob] = []
            n_rows = 0
            if not big and not stopping:  # nothing in progress: sleep until something comes
                job = self._queue.get()
                if job is None:
                    return
                n_rows += self._admit(job, small, big)
            while n_rows < self._max_rows:  # everything queued now joins this call
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True  # answer what is queued and in progress, then stop
                    break
                n_rows += self._admit(job, small, big)
            chunk = None
            if big:
                chunk = big[0]
                big.rotate(-1)  # the next call takes a chunk of the next big request
            self._serve_jobs(small, chunk)
            if chunk is not None and (chunk.error is not None or chunk.served == len(chunk.rows)):
                big.remove(chunk)
                chunk.finish()

    def _admit(self, job: _PredictionJob, small: list[_PredictionJob], big) -> int:
        if len(job.rows) > self._whole_rows:
            big.append(job)
            return 0
        small.append(job)
        return len(job.rows)

    def _serve_jobs(self, small: list[_PredictionJob], chunk: _PredictionJob | None) -> None:
        rows = [row for job in small for row in job.rows]
        if chunk is not None:
            rows += chunk.rows[chunk.served:chunk.served + self._chunk_rows]
        try:
            predictions, ids = self._serve(rows)
            start = 0
            for job in small:
                end = start + len(job.rows)
                job.predictions, job.ids = predictions[start:end], ids[start:end]
                start = end
            if chunk is not None:
                chunk.add(predictions[start:], ids[start:])
        except Exception as exc:  # handed to every waiting request; the worker lives on
            log.exception("prediction batch failed")
            for job in small:
                job.error = exc
            if chunk is not None:
                chunk.error = exc
        finally:
            for job in small:
                job.done.release()


class _PredictionJob:
    """One request's rows, answered when all are predicted (a big one, chunk by chunk)."""
    __slots__ = ("rows", "done", "predictions", "ids", "error", "served", "_parts")

    def __init__(self, rows: list[tuple]):
        self.rows = rows
        # A lock taken at birth and released when answered: cheaper to hand over than an Event.
        self.done = threading.Lock()
        self.done.acquire()
        self.predictions: np.ndarray | None = None
        self.ids: list[str] | None = None
        self.error: Exception | None = None
        self.served = 0
        self._parts: list[tuple[np.ndarray, list[str]]] = []

    def add(self, predictions: np.ndarray, ids: list[str]) -> None:
        self._parts.append((predictions, ids))
        self.served += len(ids)

    def finish(self) -> None:
        if self.error is None:
            self.predictions = np.concatenate([p for p, _ in self._parts])
            self.ids = [i for _, ids in self._parts for i in ids]
        self._parts = []
        self.done.release()


# A CUSUM alarm checks at once, but at most once per this many seconds: a drift that alarms on
# every batch does not turn each request into a check.
ALARM_CHECK_GAP = 1.0


class _Trigger:
    """Runs `task` on its own thread soon after `fire()`, at most once per `min_gap` seconds; fires
    while it waits or runs are merged into one more run."""

    def __init__(self, task: Callable[[], object], min_gap: float, name: str):
        self._task, self._min_gap, self.name = task, min_gap, name
        self._event = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = -math.inf

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def fire(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self._stopped.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            self._event.wait()
            if self._stopped.wait(max(0.0, self._last + self._min_gap - time.monotonic())):
                return
            self._event.clear()
            self._last = time.monotonic()
            try:
                self._task()
            except Exception:
                log.exception("%s failed", self.name)


class _Every:
    """Runs `task` every `interval` seconds on threading.Timer, on a fixed cadence: a slow run does
    not push later ones back, and a run that raises is logged and the schedule goes on."""

    def __init__(self, interval: float, task: Callable[[], object], name: str, first: float | None = None):
        self.interval = interval
        self.first = interval if first is None else first  # seconds from start() to the first run
        self.name = name
        self._task = task
        self._timer: threading.Timer | None = None
        self._next_due = 0.0
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._next_due = time.monotonic() + self.first
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
    if monitor.schema.is_classification:
        classes = monitor.classes
        chosen = [classes[k] for k in predictions.argmax(axis=1).tolist()]
        probabilities = [dict(zip(monitor.class_names, p)) for p in predictions.tolist()]
        if single:
            return 200, {"prediction": chosen[0], "probabilities": probabilities[0], "id": ids[0],
                         "model_version": monitor.info["model_version"]}
        return 200, {"predictions": chosen, "probabilities": probabilities, "ids": ids,
                     "model_version": monitor.info["model_version"]}
    if single:
        return 200, {"prediction": float(predictions[0]), "id": ids[0],
                     "model_version": monitor.info["model_version"]}
    return 200, {"predictions": predictions.tolist(), "ids": ids, "model_version": monitor.info["model_version"]}


def _feedback(monitor: Monitor, body) -> tuple[int, dict]:
    single = isinstance(body, dict)
    items = [body] if single else _as_list(body, monitor.config.max_rows, "labels")
    labels = [monitor.schema.parse_label(item, "" if single else f"[{i}].") for i, item in enumerate(items)]
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


def _drift_report(monitor: Monitor, query: str, headers) -> tuple[int, "dict | _Text"]:
    """GET /drift/report: the latest check as an HTML page, drawn once per check and then sent from
    memory; ?format=json: the same numbers as GET /drift."""
    fmt = (parse_qs(query).get("format") or ["html"])[-1]
    if fmt == "json":
        return _get_drift(monitor, None)
    if fmt != "html":
        raise _HttpError(400, "bad_format", f"format: {fmt[:20]!r} is not one of html, json")
    try:
        body, extra = monitor.report_page.response(headers.get("Host"), headers.get("Accept-Encoding", ""))
    except Exception as exc:
        log.exception("drift report failed to render")
        return 500, {"error": f"drift report failed: {type(exc).__name__}: {exc}"}
    return 200, _Text(body, "text/html; charset=utf-8", extra)


def _healthz(monitor: Monitor, _body) -> tuple[int, dict]:
    """200 while predictions can be served; "degraded" when the store cannot be written (predictions
    still answer and are kept for retry, so restarting the process would not help)."""
    health = {"status": "ok", "model_version": monitor.info["model_version"],
              "windows": {"inputs": len(monitor.inputs), "labelled": len(monitor.labelled)}}
    store = monitor.store
    stats = store.stats()
    health["store"] = {"path": None if store.path is None else str(store.path), "healthy": store.healthy,
                       "error": store.last_error, "pending": stats["pending"],
                       # answered, then lost: the retry buffer overflowed while the database failed
                       "acknowledged_not_recorded": stats["dropped"], **store.counts()}
    if monitor.fleet:  # one of several replicas sharing a PostgreSQL store
        health["replica"] = monitor.replica_id
    if not store.healthy:
        health["status"] = "degraded"
    return 200, health


def _metrics(monitor: Monitor, _body) -> tuple[int, _Text]:
    return 200, _Text(generate_latest(monitor.metrics.registry), CONTENT_TYPE_LATEST)


def _index(monitor: Monitor, _body) -> tuple[int, dict]:
    return 200, {"service": f"{monitor.info.get('model_name', 'diamond-price')} model monitor",
                 "model_version": monitor.info["model_version"], "task": monitor.schema.task,
                 "drift_report": monitor.report_page.links.page,
                 "endpoints": {path: sorted(methods) for path, methods in ROUTES.items()}}


@dataclass(frozen=True)
class _Text:
    """A payload that is not JSON (the Prometheus exposition, the report page)."""
    body: bytes
    content_type: str
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Route:
    handler: Callable[[Monitor, object], tuple[int, "dict | _Text"]]
    reads_json: bool = False
    page: bool = False  # handler(monitor, query string, request headers) instead of (monitor, body)
    needs_token: bool = False  # write endpoints, when a token is configured


ROUTES: dict[str, dict[str, _Route]] = {
    "/": {"GET": _Route(_index)},
    "/predict": {"POST": _Route(_predict, reads_json=True)},
    "/feedback": {"POST": _Route(_feedback, reads_json=True, needs_token=True)},
    "/drift": {"GET": _Route(_get_drift)},
    "/drift/check": {"POST": _Route(_run_drift_check, needs_token=True)},
    REPORT_PATH: {"GET": _Route(_drift_report, page=True)},
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
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader, 65536)

    def handle_one_request(self) -> None:
        # Until its head has arrived, a connection holds no request: the server may close it to make
        # room (MonitorServer.process_request), and the whole head must arrive within the socket
        # timeout, so a client sending a byte a second cannot keep it open by trickling.
        self.server.awaiting_head(self.connection)
        self._reader.deadline = time.monotonic() + self.timeout
        try:
            super().handle_one_request()
        finally:
            self._reader.deadline = None
            self.server.head_arrived(self.connection)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._reader.deadline = None  # the body is read with the per-read timeout
        self.server.head_arrived(self.connection)
        return parsed

    def __getattr__(self, name: str):
        # http.server looks up do_<METHOD>: every method goes through the one dispatch, so an unknown
        # method gets the same JSON 405 (or 404) as any other refusal.
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        path, _, query = self.path.partition("?")
        endpoint = path if path in ROUTES else "other"
        with self.server.in_flight():
            if self.server.draining:
                self.close_connection = True  # shutting down: answer this one, take no more
            try:
                self._unread = 0
                self._unread = self._body_length()  # refuses ambiguous framing before anything else
                route = self._route(method, path)
                heavy = self._unread > _HEAVY_BODY_BYTES
                with self.server.heavy_request() if heavy else contextlib.nullcontext():
                    body = self._read_json() if route.reads_json else self._discard_body()
                    if route.page:
                        status, payload = route.handler(self.monitor, query, self.headers)
                    else:
                        status, payload = route.handler(self.monitor, body)
            except (_HttpError, InvalidInput) as exc:
                status = getattr(exc, "status", 400)  # InvalidInput: a request we understood but refuse
                counter = self.monitor.metrics.refused_requests if status >= 500 else self.monitor.metrics.invalid_requests
                counter.labels(endpoint, exc.reason).inc()
                self._send_json(status, {"error": exc.message}, getattr(exc, "headers", None))
                return
            except Exception as exc:  # a bug of ours: the client still gets JSON, the log the traceback
                log.exception("%s %s failed", method, path[:100])
                self.monitor.metrics.refused_requests.labels(endpoint, "internal_error").inc()
                self.close_connection = True  # its body may be unread: the connection is out of sync
                self._send_json(500, {"error": f"internal error ({type(exc).__name__}); the monitor's log "
                                               "has the details"})
                return
            if isinstance(payload, _Text):
                self._send(status, payload.body, payload.content_type, payload.headers)
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
            raise _HttpError(405, "method_not_allowed", f"{method[:20]} is not allowed on {path}; use {allowed}",
                             {"Allow": allowed})
        route = methods[method]
        token = self.monitor.config.token
        if route.needs_token and token:
            scheme, _, given = self.headers.get("Authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise _HttpError(401, "unauthorized", f"{path} needs the header 'Authorization: Bearer <token>' "
                                                      "(the MONITOR_TOKEN the monitor was started with)",
                                 {"WWW-Authenticate": "Bearer"})
        return route

    def _body_length(self) -> int:
        """The body's length from a single, plain Content-Length. Anything a proxy in front could read
        differently (Transfer-Encoding, two lengths, '+93', '1_0', ' 10') is refused and the connection
        closed: a body we might frame differently from the client must never be run as a request."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            if lengths:
                raise _HttpError(400, "ambiguous_length", "both Content-Length and Transfer-Encoding; send one "
                                                          "Content-Length only")
            raise _HttpError(411, "length_required", "chunked bodies are not accepted; send Content-Length")
        if not lengths:
            return 0
        if len(lengths) > 1:
            self.close_connection = True
            raise _HttpError(400, "ambiguous_length", f"{len(lengths)} Content-Length headers; send one")
        raw = lengths[0]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
            self.close_connection = True
            raise _HttpError(400, "bad_content_length", f"Content-Length {raw[:20]!r} is not a byte count "
                                                        "(ASCII digits only)")
        return int(raw)

    def _read_json(self):
        length = self._unread
        if length > self.monitor.config.max_body_bytes:
            raise _HttpError(413, "too_large", f"body of {length} bytes; at most "
                                               f"{self.monitor.config.max_body_bytes} bytes per request")
        content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", "") and not content_type.endswith("+json"):
            raise _HttpError(415, "wrong_content_type", f"Content-Type {content_type!r}; send application/json "
                                                          "(with curl: -H 'Content-Type: application/json')")
        if length == 0:
            raise _HttpError(400, "empty_body", "empty body; send a JSON object such as "
                                                '{"carat": 0.5, "cut": "Ideal", ...}')
        raw = self._read_body(length)
        # A list of --max-rows rows has a bounded number of JSON values; counting separators before
        # parsing refuses `[{}, {}, ...]` and its kin before they become millions of Python objects.
        separators = raw.count(b",")
        most = self.monitor.config.max_rows * _MAX_VALUES_PER_ROW
        if separators > most:
            raise _HttpError(413, "too_many_rows", f"body: {separators} JSON values, more than "
                                                   f"{self.monitor.config.max_rows} rows can hold; at most "
                                                   f"{self.monitor.config.max_rows} rows per request")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError, undecodable UTF-8 and integers past Python's digit limit;
            # RecursionError deep nesting.
            if isinstance(exc, json.JSONDecodeError):
                detail = exc.msg
            elif "digits" in str(exc):
                detail = "an integer with more digits than a number can have"
            else:
                detail = type(exc).__name__
            raise _HttpError(400, "invalid_json", f"body is not valid JSON ({detail})") from None

    def _discard_body(self):
        if self._unread > self.monitor.config.max_body_bytes:
            raise _HttpError(413, "too_large", f"body of {self._unread} bytes is not expected here")
        self._read_body(self._unread)
        return None

    def _read_body(self, length: int) -> bytes:
        try:
            raw = self.rfile.read(length) if length else b""
        except (TimeoutError, socket.timeout):
            raise _HttpError(408, "body_timeout", "the body did not arrive in time") from None
        if len(raw) < length:
            raise _HttpError(400, "short_body", f"body ended after {len(raw)} of {length} bytes")
        self._unread = 0
        return raw

    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload, allow_nan=False, default=_json_default).encode()
        self._send(status, body, "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        if getattr(self, "_unread", 0):
            # Answered without reading the body (404, 405, 401, 413, 415, a body cut short...): its
            # bytes must not be parsed as the next request, so this connection ends with the answer.
            self.close_connection = True
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


_MAX_VALUES_PER_ROW = 32  # generous: a diamond row has 6 fields
_HEAVY_BODY_BYTES = 256 * 1024  # about 2,000 rows: bigger bodies are parsed and served one at a time
_TOO_MANY_CONNECTIONS = json.dumps({"error": "too many open connections; retry shortly"}).encode()


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads give up at `deadline` when one is set, not only after
    `timeout` of silence each: a client that sends one byte a second cannot stretch a request head."""

    def __init__(self, sock: socket.socket, timeout: float):
        self._sock, self._timeout = sock, timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        timeout = self._timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request head did not arrive in time")
        self._sock.settimeout(timeout)
        return self._sock.recv_into(buffer)


class MonitorServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them. A connection waiting for a request
    head (idle keep-alive, or a client still sending one) holds no request, so when the limit is
    reached the one that has waited longest is closed to make room; only when every connection is
    busy with a request does a new one get a 503. So idle or slow clients cannot starve the others.
    Counts requests in flight so that shutdown can let them finish."""

    daemon_threads = True  # idle keep-alive connections must not hold the process at exit
    request_queue_size = 1024  # socketserver's default listen backlog of 5 resets bursts of clients

    def __init__(self, monitor: Monitor):
        handler = type("Handler", (_Handler,), {"monitor": monitor})
        self.monitor = monitor
        self.draining = False
        self._heavy_slots = threading.BoundedSemaphore(1)  # requests with big bodies in progress at once
        self._heavy_lock = threading.Lock()
        self._heavy_running = 0
        self._connections_lock = threading.Lock()
        self._open = 0  # connections with a thread
        self._awaiting: dict[socket.socket, float] = {}  # of those, the ones waiting for a head, since when
        self._in_flight = 0
        self._idle = threading.Condition()
        super().__init__((monitor.config.host, monitor.config.port), handler)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            admitted = self._open < self.monitor.config.max_connections or self._evict_longest_waiting()
            if admitted:
                self._open += 1
        if not admitted:
            self.monitor.metrics.refused_requests.labels("other", "too_many_connections").inc()
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
            self._closed(request)
            raise

    def _evict_longest_waiting(self) -> bool:
        """Close the connection that has waited longest for a request head (caller holds the lock);
        its thread sees the end of the stream and exits. False if every connection is busy."""
        if not self._awaiting:
            return False
        victim = min(self._awaiting, key=self._awaiting.__getitem__)
        del self._awaiting[victim]
        self.monitor.metrics.evicted_connections.inc()
        try:
            victim.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    @contextlib.contextmanager
    def heavy_request(self):
        """Big bodies take turns: parsing one holds the GIL and memory in proportion to its size."""
        with self._heavy_slots:
            with self._heavy_lock:
                self._heavy_running += 1
            try:
                yield
            finally:
                with self._heavy_lock:
                    self._heavy_running -= 1
                    last = self._heavy_running == 0
                if last:  # the allocator keeps what the bodies used; hand it back after a burst
                    release_freed_memory()

    def awaiting_head(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._awaiting[connection] = time.monotonic()

    def head_arrived(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._awaiting.pop(connection, None)

    def _closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._open -= 1
            self._awaiting.pop(connection, None)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed(request)

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
    try:
        server = MonitorServer(monitor)
    except BaseException:
        monitor.stop()
        raise
    monitor.name_replica(server.server_address[1])
    monitor.start()
    # A short poll interval makes shutdown prompt (serve_forever checks for it between polls).
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="http-server", daemon=True)
    thread.start()
    return MonitorHandle(monitor, server, thread)


def load_or_train(config: MonitorConfig) -> dict:
    """The artifact at --model; only the default path is trained (the diamond model) when missing.
    Any other missing path is a ModelLoadError naming it: training diamonds in place of the user's
    own model would serve the wrong model under their name without a word."""
    path = Path(config.model_path)
    if not path.exists() and path.resolve() != DEFAULT_MODEL_PATH.resolve():
        raise ModelLoadError(f"no model artifact at {path} (--model); write one with "
                             f"train.py --data FILE.csv --target COLUMN --output {path}")
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
                    "be set by the environment variable named beside it.",
        allow_abbrev=False)  # no prefix matching: `--token x` must not be read as `--token-file x`
    add_options(parser, MonitorConfig, "MONITOR_")
    parser.add_argument("--export-labelled", type=Path, metavar="FILE",
                        help="write the labelled records of --db to FILE (.csv, or .parquet with pyarrow) and exit")
    args = parser.parse_args(argv)
    config = config_from(args, MonitorConfig)
    if config.token_file is not None:
        try:
            config.token = config.token_file.read_text().strip() or None
        except OSError as exc:
            parser.error(f"--token-file {config.token_file}: {exc.strerror}")
        if config.token is None:
            parser.error(f"--token-file {config.token_file} is empty")
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config, args.export_labelled


def _export_labelled(config: MonitorConfig, target: Path) -> int:
    if config.db_path is None or (isinstance(config.db_path, Path) and not config.db_path.exists()):
        log.error("no prediction store at %s to export from", config.db_path)
        return 2
    # The store keeps a classifier's classes as indices: the model's schema names them.
    path = Path(config.model_path)
    schema = None
    if path.exists():
        try:
            schema = load_artifact(path, verify_hash=config.verify_hash)["schema"]
        except ModelLoadError as exc:
            log.error("export failed: %s", exc)
            return 2
    elif path.resolve() != DEFAULT_MODEL_PATH.resolve():
        log.error("export failed: no model artifact at %s (--model), the model whose predictions %s holds",
                  path, config.db_path)
        return 2
    try:
        rows = export_labelled(config.db_path, target, schema=schema)  # the format follows the file name
    except ImportError as exc:
        log.error("export failed: %s; or name a .csv file instead (--export-labelled labelled.csv)", exc)
        return 2
    except (StoreError, OSError) as exc:
        log.error("export failed: %s", exc)
        return 2
    print(f"wrote {rows} labelled predictions to {target}")
    return 0


def main(argv=None) -> int:
    config, export_target = _parse_args(argv)
    # A thread waiting for the GIL gets it after at most this long: big requests' Python work (parsing,
    # validating 10,000 rows) then delays a single row by a few ms per hand-over instead of 5 ms.
    sys.setswitchinterval(0.001)
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
