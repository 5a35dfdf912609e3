"""The README says what the code does: its option table is the options' declarations, its metric
table names every metric that /metrics exposes and no other."""
from __future__ import annotations

import re
import subprocess
import sys

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import monitor
from monitoring.options import markdown_table
from tests.helpers import request
from tests.observability import ROOT

README = (ROOT / "README.md").read_text()
# Families every Python process exposes (prometheus_client's default collectors): not ours to document.
STANDARD_PREFIXES = ("process_", "python_")


def test_the_option_table_is_the_declarations():
    expected = markdown_table(monitor.MonitorConfig, "MONITOR_", monitor.HERE)
    assert expected in README, f"README's option table is stale; it should read:\n{expected}"


def test_help_lists_every_option_with_its_variable_and_default():
    out = subprocess.run([sys.executable, "monitor.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for flag, env in re.findall(r"^\| `(--[\w-]+)` \| `(\w+)` \|", README, re.M):
        assert flag in text and env in text, f"{flag} / {env} missing from monitor.py --help"
    assert "(default: True)" not in text, "a switch's help must not read like a value"


def _readme_metric_names() -> set[str]:
    section = README[README.index("## Metrics"):]
    section = section[:section.index("\n## ", 4)]
    names = set()
    for cell in re.findall(r"^\| (.+?) \|", section, re.M):
        names.update(re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", cell))
    return names


def test_the_metric_table_names_exactly_the_exposed_metrics(small_artifact_path, tmp_path):
    config = monitor.MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0,
                                   db_path=tmp_path / "monitor.db")
    handle = monitor.start_monitor(config, registry=CollectorRegistry())
    try:
        status, _, text = request(handle.url, "GET", "/metrics")
    finally:
        handle.stop()
    assert status == 200
    exposed = set()
    for family in text_string_to_metric_families(text):
        # *_created: the creation time the classic text format exposes beside each counter and histogram
        if family.name.startswith(STANDARD_PREFIXES) or family.name.endswith("_created"):
            continue
        # counters are documented with their _total sample name, the rest by family name
        exposed.add(family.name + "_total" if family.type == "counter" else family.name)
    documented = _readme_metric_names()
    assert exposed - documented == set(), "metrics missing from the README's table"
    assert documented - exposed == set(), "the README's table names metrics /metrics does not expose"
