"""Metrics, logs and their plumbing."""
