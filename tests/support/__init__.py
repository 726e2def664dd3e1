"""Shared test support: real services, the worker as a subprocess, local HTTP servers."""
