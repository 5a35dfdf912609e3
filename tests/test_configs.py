"""The deployment files, checked with the real tools and read the way their consumers read them.

Docker and Grafana cannot run here, so: promtool checks prometheus.yml and unit-tests the alert
rules; hadolint lints the Dockerfile; check-jsonschema validates docker-compose.yml against the
compose-spec schema; and the Grafana provisioning files are parsed and checked against what
Grafana's file provisioning requires (one default datasource with a fixed uid, plain dashboard JSON
naming it, a Discord receiver whose URL comes from the environment, receivers that exist, `$$` in
labels). The generated files (dashboard, both alert rule files) must match their generators.
A missing tool fails the test with a hint: `make test` installs them all.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.observability import ROOT, load_yaml, run_tool, tool
from tools import gen_alerts, gen_dashboard

PROVISIONING = ROOT / "grafana-provisioning"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
DASHBOARD_FILE = PROVISIONING / "dashboards" / "model-monitoring.json"


def _ok(result, what: str) -> None:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


@pytest.fixture(scope="module")
def alerting() -> dict:
    """All files in grafana-provisioning/alerting merged by section, as Grafana loads them."""
    merged: dict[str, list] = {"contactPoints": [], "policies": [], "groups": []}
    for path in sorted((PROVISIONING / "alerting").glob("*.y*ml")):
        document = load_yaml(path)
        assert document.get("apiVersion") == 1, f"{path.name}: apiVersion 1 expected"
        for key, items in document.items():
            if key != "apiVersion":
                assert key in merged, f"{path.name}: unexpected section {key!r}"
                merged[key].extend(items)
    return merged


def _panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


# ----------------------------------------------------------------------------------- Prometheus

def test_promtool_accepts_prometheus_yml_and_its_rule_files():
    result = run_tool([tool("promtool"), "check", "config", "prometheus.yml"])
    _ok(result, "promtool check config prometheus.yml")
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alert_rules_pass():
    _ok(run_tool([tool("promtool"), "test", "rules", "prometheus/alert-rules.test.yml"]),
        "promtool test rules prometheus/alert-rules.test.yml")


def test_prometheus_scrapes_the_monitor_service_on_its_api_port():
    config = load_yaml(ROOT / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == gen_dashboard.JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": ["monitor:5000"]}]
    assert config["rule_files"] == ["prometheus/alert-rules.yml"]


# ----------------------------------------------------------------------------------- Docker

def test_hadolint_passes_the_dockerfile():
    _ok(run_tool([tool("hadolint"), "Dockerfile"]), "hadolint Dockerfile")


def test_dockerfile_installs_before_copying_code_runs_unprivileged_and_checks_health():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    base = next(l for l in lines if l.startswith("FROM "))
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?", base), base
    text = "\n".join(lines)
    assert text.index("COPY requirements.txt") < text.index("pip install") < text.index("COPY monitor.py train.py")
    assert "python train.py" in text, "the model is trained at build time"
    user = [l for l in lines if l.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert lines[-1] == 'CMD ["python", "monitor.py", "--host", "0.0.0.0"]'
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in ("model.joblib", ".env", ".git", ".venv"):
        assert name in ignored, f".dockerignore should exclude {name}"


def test_compose_file_matches_the_compose_spec_schema():
    _ok(run_tool([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"]),
        "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml")


def test_compose_pins_images_mounts_provisioning_read_only_and_waits_for_health(compose):
    services = compose["services"]
    assert {"monitor", "prometheus", "grafana", "simulator"} <= set(services)
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin an exact image tag, not {image!r}"
    for name in ("monitor", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    assert services["prometheus"]["depends_on"]["monitor"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["simulator"]["depends_on"]["monitor"]["condition"] == "service_healthy"

    volumes = {v.split(":")[1]: v for v in services["grafana"]["volumes"]}
    assert volumes["/etc/grafana/provisioning"] == "./grafana-provisioning:/etc/grafana/provisioning:ro"
    prometheus_mounts = services["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts
    # rule_files are relative to the config file: /etc/prometheus/prometheus/alert-rules.yml
    assert "./prometheus:/etc/prometheus/prometheus:ro" in prometheus_mounts
    named = set(compose["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith("./") or source in named, f"volume {source!r} is neither a path nor declared"
    assert {"prometheus-data", "grafana-data"} <= named


def test_compose_takes_secrets_from_the_environment_only(compose):
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?"), \
        "the admin password must be required from .env, with no default"
    assert grafana["DISCORD_WEBHOOK_URL"].startswith("${DISCORD_WEBHOOK_URL")
    assert "discord.com/api/webhooks" not in (ROOT / "docker-compose.yml").read_text()
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["GRAFANA_ADMIN_PASSWORD"] == "" and example["DISCORD_WEBHOOK_URL"] == ""
    assert example.get("MONITOR_TOKEN", "") == ""
    # every variable the Grafana provisioning expands is passed to the Grafana container
    used = set(re.findall(r"\$\{(\w+)\}|\$__env\{(\w+)\}", (PROVISIONING / "alerting" / "contact-points.yaml").read_text()))
    for name in {a or b for a, b in used}:
        assert name in grafana, f"grafana-provisioning expands ${{{name}}} but compose does not pass it"


def test_the_demo_profile_runs_the_simulator_against_the_monitor(compose):
    simulator = compose["services"]["simulator"]
    assert simulator["profiles"] == ["demo"]
    assert simulator["command"][:5] == ["python", "-m", "evaluation.simulate", "--url", "http://monitor:5000"]
    # the image holds only what serves: the simulator gets the evaluation code as a read-only mount
    assert "./evaluation:/app/evaluation:ro" in simulator["volumes"]
    assert compose["services"]["monitor"]["build"] == simulator["build"] == "."


def test_the_fleet_profile_runs_replicas_on_a_postgres_store(compose):
    services = compose["services"]
    postgres, replica = services["postgres"], services["replica"]
    assert postgres["profiles"] == replica["profiles"] == ["fleet"]
    assert re.fullmatch(r"postgres:\d+\.\d+-bookworm", postgres["image"]), "pin an exact postgres tag"
    # from .env with no default (the entrypoint refuses it empty: the tests below)
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-}"
    assert replica["environment"]["PGPASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"] and "postgres-data" in compose["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"] and "ports" not in postgres
    url = replica["environment"]["MONITOR_DB"]
    assert url.startswith("postgresql://monitor@postgres:5432/") and ":" not in url.split("//")[1].split("@")[0]
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert replica["deploy"]["replicas"] >= 2 and replica["build"] == services["monitor"]["build"]
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["POSTGRES_PASSWORD"] == ""
    # Prometheus finds every replica by the service's name and groups them as one fleet.
    (job,) = load_yaml(ROOT / "prometheus.yml")["scrape_configs"]
    assert job["dns_sd_configs"] == [{"names": ["replica"], "type": "A", "port": 5000}]
    assert {"source_labels": ["__meta_dns_name"], "regex": "(.+)", "target_label": "group",
            "replacement": "fleet:$1"} in job["relabel_configs"]


class _Required(Exception):
    """A ${VAR:?message} (or ${VAR?message}) whose variable is missing: compose stops with it."""


_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?+])([^}]*))?\}|(\w+))")


def _interpolate(value, env: dict):
    """Docker Compose's interpolation of one value of the file (the compose spec's rules: `$$` a
    literal `$`; `${VAR}`, `$VAR`; `:-`/`-` a default when unset-or-empty/unset; `:?`/`?` required;
    `:+`/`+` a replacement when set). Compose applies it to EVERY service before it looks at
    profiles, so a required variable anywhere is required by every `docker compose up`."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        dollar, name, op, arg, bare = match.groups()
        if dollar:
            return "$"
        if bare:
            return env.get(bare, "")
        current = env.get(name)
        empty = current is None or (op or "").startswith(":") and current == ""
        if op in (":-", "-"):
            return arg if empty else current
        if op in (":?", "?"):
            if empty:
                raise _Required(f"required variable {name} is missing a value: {arg}")
            return current
        if op in (":+", "+"):
            return "" if empty else arg
        return current or ""

    return _VARIABLE.sub(one, value)


def _required_variables(env: dict) -> set[str]:
    """The variables a `docker compose up` (any profile) stops on with this environment."""
    document = load_yaml(ROOT / "docker-compose.yml")
    missing: set[str] = set()
    while True:
        try:
            _interpolate(document, env)
            return missing
        except _Required as exc:
            name = str(exc).split()[2]
            missing.add(name)
            env = {**env, name: "set"}


def test_the_interpolation_used_here_follows_compose_s_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert _interpolate("$$HOME ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+r} ${UNSET+r}", env) == \
        "$HOME x x d d  r "
    for text in ("${UNSET:?say}", "${EMPTY:?say}", "${UNSET?say}"):
        with pytest.raises(_Required, match="say"):
            _interpolate(text, env)
    assert _interpolate("${EMPTY?say}", env) == ""


def test_plain_compose_up_needs_no_postgres_password():
    """`docker compose up` (SQLite, no profile) with an empty environment stops on Grafana's
    password alone; once that is set, nothing else is required: not the fleet's POSTGRES_PASSWORD."""
    assert _required_variables({}) == {"GRAFANA_ADMIN_PASSWORD"}
    assert _required_variables({"GRAFANA_ADMIN_PASSWORD": "x"}) == set()


def _entrypoint(service: str, env: dict) -> list[str]:
    document = _interpolate(load_yaml(ROOT / "docker-compose.yml"), {"GRAFANA_ADMIN_PASSWORD": "x", **env})
    spec = document["services"][service]
    return [*spec["entrypoint"], *spec["command"]]


@pytest.mark.parametrize("password", ["", None])
def test_the_fleet_s_postgres_refuses_to_start_without_a_password(tmp_path, password):
    env = {} if password is None else {"POSTGRES_PASSWORD": password}
    argv = _entrypoint("postgres", env)
    container_env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "POSTGRES_PASSWORD": password or ""}
    proc = subprocess.run(argv, env=container_env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "POSTGRES_PASSWORD is empty: set it in .env" in proc.stderr


def test_the_fleet_s_postgres_starts_the_image_s_entrypoint_with_a_password(tmp_path):
    stub = tmp_path / "docker-entrypoint.sh"     # stands for the postgres image's own entrypoint
    stub.write_text('#!/bin/sh\necho "entrypoint: $* as $POSTGRES_USER"\n')
    stub.chmod(0o755)
    argv = _entrypoint("postgres", {"POSTGRES_PASSWORD": "s3cret"})
    container_env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_USER": "monitor"}
    proc = subprocess.run(argv, env=container_env, capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "entrypoint: postgres as monitor\n", "")


# ----------------------------------------------------------------------------------- Grafana

def test_exactly_one_default_prometheus_datasource_with_a_fixed_uid():
    datasources = []
    for path in (PROVISIONING / "datasources").glob("*.y*ml"):
        document = load_yaml(path)
        assert document["apiVersion"] == 1
        datasources += document["datasources"]
    defaults = [d for d in datasources if d.get("isDefault")]
    assert len(defaults) == 1
    (prometheus,) = defaults
    assert prometheus["uid"] == DATASOURCE["uid"] and prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090" and prometheus["access"] == "proxy"


def test_dashboard_provider_reads_the_folder_the_json_is_in(compose):
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "provider.yml")["providers"]
    assert provider["type"] == "file"
    mount = "./grafana-provisioning:/etc/grafana/provisioning:ro"
    assert mount in compose["services"]["grafana"]["volumes"]
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    assert DASHBOARD_FILE.parent == PROVISIONING / "dashboards"


def test_dashboard_is_plain_provisioning_json_naming_the_datasource_by_uid(dashboard):
    raw = DASHBOARD_FILE.read_text()
    assert "dashboard" not in dashboard, 'an API wrapper {"dashboard": ...} fails: "Dashboard title cannot be empty"'
    assert "${DS_" not in raw and "__inputs" not in dashboard, "file provisioning never fills import inputs"
    assert dashboard["title"] == "Model Monitoring" and dashboard["uid"] == gen_dashboard.DASHBOARD_UID
    assert dashboard["schemaVersion"] == 39
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # a textbox (the monitor's URL for links) queries nothing
            assert variable["datasource"] == DATASOURCE


def test_dashboard_shows_what_the_issue_asks_for(dashboard):
    panels = {p["title"]: p for p in _panels(dashboard) if p["type"] != "row"}
    exprs = "\n".join(t["expr"] for p in panels.values() for t in p["targets"])
    for metric in ("data_drift{", "concept_drift{", "data_drift_detected", "concept_drift_detected",
                   "data_drift_feature_distance", "data_drift_feature_statistic", "data_drift_feature_p_value",
                   "data_drift_feature_detected", "drift_window_samples", "labels_received_total",
                   "predictions_total", "prediction_latency_seconds_bucket", "predicted_value_bucket",
                   "invalid_requests_total", "drift_check_duration_seconds_bucket", "drift_check_failures_total",
                   "model_info", "model_heldout_mse", "up{", "predictions_by_class_total",
                   "concept_drift_window_accuracy", "concept_drift_window_log_loss", "model_heldout_accuracy"):
        assert metric in exprs, f"no panel queries {metric}"
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "sum by (endpoint, reason)" in exprs
    # the data-drift panel draws a detection line and the detected band; the p-value panel the
    # corrected significance
    drift = panels["Data drift: largest per-feature distance"]
    assert [t["legendFormat"].split(" {{")[0] for t in drift["targets"]] == ["data drift", "KS detection boundary", "detected"]
    p_values = next(p for t, p in panels.items() if t.startswith("Per-feature p-value"))
    assert any("data_drift_alpha" in t["expr"] and "data_drift_tests" in t["expr"] for t in p_values["targets"])
    assert panels["Predicted value distribution"]["type"] == "heatmap"


def test_contact_point_is_discord_with_the_webhook_url_from_the_environment(alerting):
    receivers = [r for cp in alerting["contactPoints"] for r in cp["receivers"]]
    discord = [r for r in receivers if r["type"] == "discord"]
    assert len(discord) == 1
    settings = discord[0]["settings"]
    assert settings["url"] == "${DISCORD_WEBHOOK_URL}"
    assert isinstance(settings.get("use_discord_username", False), bool)
    # settings are env-expanded: a `$` in the message or title would be eaten (dot syntax is used);
    # ${NAME} is a deliberate expansion (MONITOR_PUBLIC_URL), which compose must pass (checked above)
    for key in ("title", "message"):
        text = re.sub(r"\$\{\w+\}", "", settings.get(key, "")).replace("$$", "")
        assert not re.search(r"(?<!\$)\$(?!\$)", text), key


def test_every_receiver_named_by_policies_and_rules_exists(alerting):
    names = {cp["name"] for cp in alerting["contactPoints"]}
    assert len(alerting["policies"]) == 1, "one policy tree per organisation"

    def walk(route):
        yield route.get("receiver")
        for child in route.get("routes", []):
            yield from walk(child)

    assert alerting["policies"][0]["receiver"] in names
    for receiver in walk(alerting["policies"][0]):
        assert receiver is None or receiver in names, receiver
    for group in alerting["groups"]:
        for rule in group["rules"]:
            receiver = (rule.get("notification_settings") or {}).get("receiver")
            assert receiver is None or receiver in names, f"{rule['title']}: unknown receiver {receiver}"


def test_alert_rules_are_well_formed_for_grafana(alerting, dashboard):
    panel_ids = {str(p["id"]) for p in _panels(dashboard)}
    uids, titles = set(), set()
    for group in alerting["groups"]:
        assert group["folder"] and group["name"]
        assert re.fullmatch(r"\d+[sm]", group["interval"])
        for rule in group["rules"]:
            assert re.fullmatch(r"[\w-]{1,40}", rule["uid"]) and rule["uid"] not in uids
            assert rule["title"] not in titles
            uids.add(rule["uid"]), titles.add(rule["title"])
            refs = {d["refId"]: d for d in rule["data"]}
            assert rule["condition"] in refs
            for data in rule["data"]:
                assert data["datasourceUid"] in (DATASOURCE["uid"], "__expr__"), rule["title"]
                model = data["model"]
                if data["datasourceUid"] == "__expr__":
                    assert model["expression"] in refs
                else:
                    assert model["datasource"] == DATASOURCE and model["instant"] is True and model["expr"]
            assert rule["noDataState"] in ("NoData", "Alerting", "OK")
            assert rule["execErrState"] in ("Error", "Alerting", "OK")
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"]
            assert annotations["__dashboardUid__"] == dashboard["uid"]
            assert annotations["__panelId__"] in panel_ids
            assert f"/d/{dashboard['uid']}/" in annotations["dashboard"]
            # labels are env-expanded at provisioning: a template's `$` must be written `$$`
            for key, value in rule["labels"].items():
                assert not re.search(r"(?<!\$)\$(?!\$)", str(value).replace("$$", "")), f"{rule['title']} label {key}"


def test_drift_alerts_say_what_drifted_and_by_how_much(alerting):
    rules = {r["title"]: r for g in alerting["groups"] for r in g["rules"]}
    data = rules["DataDrift"]["annotations"]["summary"]
    for needle in ("$labels.feature", "$values.distance.Value", "$values.p_value.Value", "$values.window.Value"):
        assert needle in data
    concept = rules["ConceptDrift"]["annotations"]["summary"]
    for needle in ("$values.score.Value", "$values.bias.Value", "$values.labelled.Value"):
        assert needle in concept
    assert rules["MonitorDown"]["noDataState"] == "Alerting"
    assert "up{" in rules["MonitorDown"]["data"][0]["model"]["expr"]
    assert rules["DataDrift"]["for"] != "0s", "a pending period keeps one noisy check from paging"


# ----------------------------------------------------------------------------------- one source of truth

def test_generated_files_are_up_to_date():
    for path, text in gen_alerts.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `python -m tools.gen_alerts`"
    assert DASHBOARD_FILE.read_text() == gen_dashboard.render(), \
        "the dashboard JSON is stale: run `python -m tools.gen_dashboard`"


def test_prometheus_rules_mirror_the_grafana_rules(alerting):
    """Read back from the two files (not from the generator): same alerts, same conditions."""
    prometheus = {r["alert"]: r for g in load_yaml(ROOT / "prometheus" / "alert-rules.yml")["groups"]
                  for r in g["rules"]}
    grafana = {r["title"]: r for g in alerting["groups"] for r in g["rules"]}
    assert set(prometheus) == set(grafana)
    ops = {"gt": ">", "lt": "<"}
    for name, rule in grafana.items():
        refs = {d["refId"]: d["model"] for d in rule["data"]}
        threshold = refs[rule["condition"]]
        query = refs[threshold["expression"]]["expr"]
        (condition,) = threshold["conditions"]
        op, (value,) = ops[condition["evaluator"]["type"]], condition["evaluator"]["params"]
        expected = f"{query} {op} {value:g}"
        assert prometheus[name]["expr"].startswith(expected), (name, prometheus[name]["expr"], expected)
        assert prometheus[name]["for"] == rule["for"]
        assert prometheus[name]["labels"] == rule["labels"]
