"""Raises ImportError from inside the user's module: must not be reported as 'not importable'."""

from os import nothing  # noqa: F401

app = None
