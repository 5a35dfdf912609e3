# The model monitor: `python monitor.py` on port 5000 (API and /metrics), model trained at build time.
#   docker build -t diamond-monitor .     (docker compose builds it for the monitor and simulator)
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MONITOR_MODEL=/app/model.joblib \
    MONITOR_DB=/data/monitor.db \
    MONITOR_PORT=5000

# The process runs as this unprivileged user; the code and the model stay root-owned (read-only to it).
# /data holds the prediction store (SQLite, MONITOR_DB): mount a volume there to keep it.
RUN groupadd --system --gid 10001 monitor \
    && useradd --system --uid 10001 --gid monitor --no-create-home --shell /usr/sbin/nologin monitor \
    && mkdir /data && chown monitor:monitor /data

WORKDIR /app

# Dependencies before the code: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY data/ ./data/
# Only what serves: the benchmark, the offline evaluation and the tests stay out of the image.
COPY monitor.py train.py ./
COPY monitoring/ ./monitoring/

# The model is trained here, at build time (as the lab does), not at first start:
# - a pickled scikit-learn model only loads with the scikit-learn that wrote it; training in the image
#   ties the artifact to the image's pinned libraries, from the diamonds CSV shipped in data/;
# - the container is healthy within seconds of starting, every replica serves the same model, and
#   the model (root-owned) cannot be replaced by the process serving it;
# - the cost is ~75 MB of image and ~10 s of build, paid once per code change.
# (Without an artifact, monitor.py trains one at start: that is for `make run`, not for containers.)
RUN python train.py --output /app/model.joblib

USER 10001:10001

EXPOSE 5000
# No curl in the slim image: the health check is a Python one-liner against /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MONITOR_PORT', '5000'), timeout=4)"]

# --host 0.0.0.0: reachable from the other containers (the monitor's default is 127.0.0.1).
CMD ["python", "monitor.py", "--host", "0.0.0.0"]
