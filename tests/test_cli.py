"""The scripts as a new user starts them: with whatever `python` is on the PATH."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from monitoring.environment import PROJECT_PYTHON
from tests.observability import ROOT


def _bare_python(script, *args, cwd=ROOT):
    """Run a script with this Python but without its site-packages (-S): like the system Python of a
    machine where `make run` installed the libraries into .venv only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return subprocess.run([sys.executable, "-S", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("script", ["monitor.py", "train.py"])
def test_a_python_without_the_libraries_reruns_the_script_with_the_project_environment(script):
    assert PROJECT_PYTHON.exists(), "make test creates .venv in the project; these tests run from it"
    out = _bare_python(ROOT / script, "--help")
    assert out.returncode == 0, out.stderr
    assert "--help" in out.stdout and "usage:" in out.stdout
    assert f"running with {PROJECT_PYTHON}" in out.stderr


def test_without_a_project_environment_it_says_how_to_make_one(tmp_path):
    # a copy of the project with no .venv beside it
    shutil.copy(ROOT / "monitor.py", tmp_path)
    shutil.copytree(ROOT / "monitoring", tmp_path / "monitoring", ignore=shutil.ignore_patterns("__pycache__"))
    out = _bare_python(tmp_path / "monitor.py", "--help", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "lacks numpy" in out.stderr and "make run" in out.stderr and ".venv/bin/python" in out.stderr


def test_the_token_is_never_a_flag_but_a_file_or_a_variable(tmp_path):
    out = subprocess.run([sys.executable, "monitor.py", "--token", "s3cret"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: --token" in out.stderr
    import monitor

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config, _ = monitor._parse_args(["--token-file", str(token_file)])
    assert config.token == "s3cret"
    env = {**os.environ, "MONITOR_TOKEN": "from-env"}
    code = "import monitor; print(monitor._parse_args([])[0].token)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "from-env"
    token_file.write_text("")
    out = subprocess.run([sys.executable, "monitor.py", "--token-file", str(token_file)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "is empty" in out.stderr


def test_a_bad_environment_variable_is_named(tmp_path):
    env = {**os.environ, "MONITOR_PORT": "eighty"}
    out = subprocess.run([sys.executable, "monitor.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2
    assert "MONITOR_PORT='eighty'" in out.stderr and "Traceback" not in out.stderr


def test_a_model_path_that_does_not_exist_is_a_one_line_error_not_the_diamond_model(tmp_path):
    missing = tmp_path / "churn.joblib"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    out = subprocess.run([sys.executable, "monitor.py", "--model", str(missing), "--port", "0", "--db", ""],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].endswith(f"ERROR monitor: cannot serve: no model artifact at {missing} (--model); write one with "
                             f"train.py --data FILE.csv --target COLUMN --output {missing}")
    assert not missing.exists()
    # the variable names it the same way
    out = subprocess.run([sys.executable, "monitor.py", "--port", "0", "--db", ""], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**env, "MONITOR_MODEL": str(missing)})
    assert out.returncode == 2 and f"no model artifact at {missing} (--model)" in out.stderr


def test_only_the_default_model_path_is_trained_when_missing(tmp_path, monkeypatch):
    import monitor
    import train
    from monitoring.model import ModelLoadError

    trained = []
    monkeypatch.setattr(train, "train", lambda: "artifact")
    monkeypatch.setattr(train, "save_artifact", lambda artifact, path: trained.append((artifact, path)))
    monkeypatch.setattr(monitor, "load_artifact", lambda path, verify_hash: {"loaded": path})
    default = tmp_path / "model.joblib"
    monkeypatch.setattr(monitor, "DEFAULT_MODEL_PATH", default)
    assert monitor.load_or_train(monitor.MonitorConfig(model_path=default)) == {"loaded": default}
    assert trained == [("artifact", default)]
    other = tmp_path / "mine.joblib"
    with pytest.raises(ModelLoadError, match=rf"^no model artifact at {re.escape(str(other))} \(--model\); "):
        monitor.load_or_train(monitor.MonitorConfig(model_path=other))
    assert len(trained) == 1
    other.write_bytes(b"")  # an existing file is loaded, whatever its path
    assert monitor.load_or_train(monitor.MonitorConfig(model_path=other)) == {"loaded": other}
    # the default path written another way is still the default
    assert monitor.load_or_train(monitor.MonitorConfig(model_path=tmp_path / "." / "model.joblib"))
    assert len(trained) == 2
