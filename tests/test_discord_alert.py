"""A drift alert reaches "Discord" with a message Discord's webhook API accepts, through the real chain:
monitor (drifted traffic) -> Prometheus evaluating the generated rules -> Alertmanager 0.25
(apt `prometheus-alertmanager`, discord_configs) -> a local HTTP server standing in for Discord.

Alertmanager 0.25 does not expand environment variables, so this test writes its own
alertmanager.yml, with the stand-in's URL as webhook_url and the title and message templates of the
project's Grafana contact point (the same Go templates; Grafana's notifier is built on Alertmanager's),
and checks it with amtool. The rules' pending periods are shortened to 0 s here (promtool unit-tests
them in test_configs.py). Discord's limits: content 2,000 characters, at most 10 embeds, embed
title 256, description 4,096, 6,000 characters over all embeds.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from evaluation.scenarios import SCENARIOS, heldout_rows
from evaluation.simulate import Client
from monitoring.diamonds import as_payload
from tests.observability import ROOT, Process, Prometheus, free_port, http, load_yaml, run_tool, tool, wait_until

WINDOW = 300
WEBHOOK_PATH = "/api/webhooks/123456789/stand-in-token"


class DiscordStandIn(ThreadingHTTPServer):
    """Records every POST; answers 204 like Discord's webhook endpoint."""

    def __init__(self):
        self.received: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.received.append({"path": self.path, "content_type": self.headers.get("Content-Type", ""),
                                            "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{WEBHOOK_PATH}"

    def payloads(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.received]

    def stop(self):
        self.shutdown()
        self.server_close()


def discord_accepts(payload: dict) -> list[str]:
    """What Discord's webhook API would reject in this payload (empty: accepted)."""
    problems = []
    content, embeds = payload.get("content") or "", payload.get("embeds") or []
    if not content and not embeds:
        problems.append("neither content nor embeds")
    if len(content) > 2000:
        problems.append(f"content has {len(content)} characters (max 2000)")
    if len(embeds) > 10:
        problems.append(f"{len(embeds)} embeds (max 10)")
    total = 0
    for embed in embeds:
        title, description = embed.get("title") or "", embed.get("description") or ""
        if len(title) > 256:
            problems.append(f"embed title has {len(title)} characters (max 256)")
        if len(description) > 4096:
            problems.append(f"embed description has {len(description)} characters (max 4096)")
        total += len(title) + len(description)
    if total > 6000:
        problems.append(f"embeds have {total} characters in all (max 6000)")
    return problems


def alertmanager_config(webhook_url: str) -> dict:
    (contact_point,) = load_yaml(ROOT / "grafana-provisioning" / "alerting" / "contact-points.yaml")["contactPoints"]
    settings = contact_point["receivers"][0]["settings"]
    return {
        "route": {"receiver": "discord", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "discord", "discord_configs": [{
            "webhook_url": webhook_url, "title": settings["title"], "message": settings["message"]}]}],
    }


@pytest.fixture(scope="module")
def delivered(small_artifact, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("discord")
    discord = DiscordStandIn()
    processes = []
    monitor = start_monitor(MonitorConfig(host="127.0.0.1", port=0, check_interval=1.0, window=WINDOW,
                                          label_window=WINDOW, db_path=None),
                            artifact=small_artifact, registry=CollectorRegistry())
    prometheus = None
    try:
        am_config = tmp / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config(discord.url), sort_keys=False))
        check = run_tool([tool("amtool"), "check-config", str(am_config)])
        assert check.returncode == 0, f"amtool check-config:\n{check.stdout}\n{check.stderr}"
        am_port = free_port()
        alertmanager = Process([tool("prometheus-alertmanager", "alertmanager"), f"--config.file={am_config}",
                                f"--storage.path={tmp / 'alertmanager-data'}",
                                f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                                "--log.level=warn"], tmp / "alertmanager.log")
        processes.append(alertmanager)

        def am_ready():
            alertmanager.check_running()
            return http("GET", f"http://127.0.0.1:{am_port}/-/ready", timeout=2)[0] == 200

        wait_until(am_ready, 20, "Alertmanager to be ready")

        rules = load_yaml(ROOT / "prometheus" / "alert-rules.yml")
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                rule["for"] = "0s"
        rules_path = tmp / "alert-rules.yml"
        rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
        prometheus = Prometheus(tmp, [monitor.url.removeprefix("http://")], rule_files=[rules_path],
                                alertmanager=f"127.0.0.1:{am_port}")

        # Drifted traffic only: larger stones (data drift), labelled 25% dearer (concept drift).
        rng = np.random.default_rng(11)
        rows = SCENARIOS["large_stones"].sample(heldout_rows(), WINDOW, rng)
        rows = SCENARIOS["price_up_25"].sample(rows, WINDOW, rng, replace=False)
        client = Client(monitor.url)
        for start in range(0, WINDOW, 100):
            chunk = rows.iloc[start:start + 100]
            ids = client.predict(as_payload(chunk))
            client.feedback(list(zip(ids, chunk["price"].astype(float))))
        started = time.monotonic()

        def both_delivered():
            alertmanager.check_running()
            text = json.dumps(discord.payloads())
            return "DataDrift" in text and "ConceptDrift" in text

        wait_until(both_delivered, 45, "Discord stand-in to receive DataDrift and ConceptDrift")
        yield {"received": list(discord.received), "payloads": discord.payloads(),
               "seconds": time.monotonic() - started}
    finally:
        if prometheus is not None:
            prometheus.stop()
        for process in processes:
            process.stop()
        monitor.stop()
        discord.stop()


def _embeds_text(payload: dict) -> str:
    return "\n".join([payload.get("content") or ""] + [f"{e.get('title', '')}\n{e.get('description', '')}"
                                                       for e in payload.get("embeds") or []])


def _firing(delivered: dict, alertname: str) -> dict:
    for payload in delivered["payloads"]:
        text = _embeds_text(payload)
        if "[FIRING" in text and alertname in text:
            return payload
    raise AssertionError(f"no firing {alertname} message among {delivered['payloads']}")


def test_alerts_are_posted_as_json_to_the_webhook(delivered):
    for request in delivered["received"]:
        assert request["path"] == WEBHOOK_PATH
        assert request["content_type"].startswith("application/json")
    assert delivered["seconds"] < 45


def test_every_message_is_within_discords_limits(delivered):
    for payload in delivered["payloads"]:
        assert not discord_accepts(payload), (discord_accepts(payload), payload)


def test_data_drift_message_names_the_feature_its_numbers_and_the_dashboard(delivered):
    text = _embeds_text(_firing(delivered, "DataDrift"))
    assert re.search(r"\[FIRING:\d+\] DataDrift \(warning\)", text)
    match = re.search(r"Data drift in feature carat: distance (0\.\d{3}), test statistic ([\d.e+-]+), "
                      r"p-value ([\d.e+-]+), over the last 300 inputs", text)
    assert match, text
    assert 0.05 < float(match.group(1)) <= 1 and float(match.group(3)) < 0.01
    assert "Dashboard: http://localhost:3000/d/model-monitoring/model-monitoring?viewPanel=" in text
    assert text.count("no longer look like the training data") == 1, "one description per message"
    assert "<no value>" not in text and "NaN" not in text


def test_concept_drift_message_says_how_much_prices_moved(delivered):
    text = _embeds_text(_firing(delivered, "ConceptDrift"))
    assert re.search(r"\[FIRING:1\] ConceptDrift \(critical\)", text)
    match = re.search(r"actual values \+(\d+\.\d)% against predictions, model loss changed by [\d.]+% against the "
                      r"held-out reference, p-value [\d.e+-]+, over the last 300 labelled predictions", text)
    assert match, text
    assert 15 < float(match.group(1)) < 35
    assert "<no value>" not in text and "NaN" not in text
