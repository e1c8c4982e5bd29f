"""Deployment and local-run helpers (process management for the laptop stack and the tests)."""
