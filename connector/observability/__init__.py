"""Logging and request context: what operators see of the running service."""
