# The README's two commands: `make run` and `make test`. Both set up everything they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests and the benchmark drive for real: Prometheus (and promtool),
# Alertmanager (the Discord delivery test), wrk (the load generator), Chromium (the drift report
# page, rendered headless) and PostgreSQL (the fleet's shared store; the tests start their own
# server with initdb/pg_ctl, so the package's own cluster is not needed).
APT_PACKAGES := prometheus prometheus-alertmanager wrk chromium postgresql

.PHONY: run test bench evaluate generate mutate setup setup-dev system-packages clean

run: setup
	$(PY) monitor.py $(ARGS)

test: setup-dev system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-dev system-packages
	$(PY) bench/bench.py $(ARGS)

# Detection delay and false-alarm rate of the drift detectors on held-out traffic (README figures).
evaluate: setup-dev
	$(PY) -m evaluation.evaluate_drift $(ARGS)

# Regenerate the dashboard JSON and both alert-rule files (tests fail when they are stale).
generate: setup-dev
	$(PY) -m tools.gen_dashboard
	$(PY) -m tools.gen_alerts

# Mutation testing of the statistics, the windows and the request validation (README: "Mutation
# testing"); not part of `make test`. A fresh run each time; the score per module comes last, and
# the target fails when one is under 90%.
mutate: setup-dev
	rm -rf mutants
	$(VENV)/bin/mutmut run
	$(PY) -m tools.mutation_score --min 90

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

# Installs only what is missing; needs root (or sudo) the first time.
system-packages:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache mutants
