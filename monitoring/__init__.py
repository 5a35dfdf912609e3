"""What monitor.py is built from, one module per role:

- diamonds: the default data set: its features, where it ships, the lab's split, rows as /predict JSON
- model:    loading an artifact safely, validating request rows, the fast prediction path
- drift:    the statistics: data drift (per-feature tests, Holm) and concept drift (held-out errors)
- windows:  the recent inputs and labelled predictions that a drift check reads
- store:    the prediction log (SQLite, or memory only): every prediction and label, durable before the answer
- export:   the labelled records of a store file, as CSV or parquet, for retraining
- metrics:  the Prometheus metrics the dashboard and the alert rules read
- report:   the drift report page (GET /drift/report), drawn once per check; charts: its SVG charts
- options:  each option declared once: flag, environment variable, help
- environment: rerunning a script with the project's .venv when the running Python lacks the libraries
"""
