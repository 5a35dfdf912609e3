"""`python monitor.py` (or train.py) run by a Python that lacks the project's libraries, typically the
system Python after `make run` installed them into .venv: rerun the script with .venv's Python, or
say in one line how to get there. Standard library only."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

PROJECT_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
_GUARD = "MONITOR_PROJECT_PYTHON_TRIED"  # set before re-executing, so that a broken .venv cannot loop


def run_in_project_environment(missing: ModuleNotFoundError) -> NoReturn:
    script = sys.argv[0] or "the script"
    if PROJECT_PYTHON.exists() and not os.environ.get(_GUARD):
        print(f"{script}: {sys.executable} lacks {missing.name}; running with {PROJECT_PYTHON}", file=sys.stderr)
        os.environ[_GUARD] = "1"
        os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), *sys.argv])
    sys.exit(f"{script}: the Python at {sys.executable} lacks {missing.name}. Run `make run` once (it installs "
             f"the libraries into .venv), then `.venv/bin/python {script}` or `source .venv/bin/activate` first.")
