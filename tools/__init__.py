"""Generators of the provisioning files: `python -m tools.gen_dashboard`, `python -m tools.gen_alerts`."""
