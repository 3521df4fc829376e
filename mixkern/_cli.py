"""What every mixkern command line shares: one-line user errors (exit 2) and checks that run
before any expensive work, so a typo costs seconds, not a training run."""

from __future__ import annotations

import argparse
import os
import sys


def error(message) -> int:
    """Print ``error: message`` (one line, naming the fix) on stderr; the exit status of a user error."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def _number(kind, text: str, expected: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive(kind):
    """argparse type: a number of ``kind`` (int or float) that must be > 0."""
    def parse(text: str):
        value = _number(kind, text, "an integer" if kind is int else "a number")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def unit_fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = _number(float, text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def check_output_dir(path: str, flag: str) -> None:
    """Raise ValueError unless ``path`` is (or can be created as) a writable directory; creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a directory: choose another {flag}")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write under {parent} (permission denied): choose another {flag}")
