"""Cluster wiring: configuration, the pipeline coordinator, and the CLI."""
