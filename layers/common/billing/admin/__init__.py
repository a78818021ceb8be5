"""Operator commands that drive the admin HTTP API (`python -m billing.admin --help`)."""
