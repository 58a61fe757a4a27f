"""The four implementations of every topic, loaded lazily so that `import checks` stays fast."""

import importlib
import os

import pytest

PORTS = ("torch", "tensorflow", "keras")
IMPLEMENTATIONS = ("scratch",) + PORTS


def load(impl, topic):
    """The module `topic` of one implementation: `scratch.<topic>` or `ports.<impl>.<topic>`."""
    name = f"scratch.{topic}" if impl == "scratch" else f"ports.{impl}.{topic}"
    return importlib.import_module(name)


def _missing(message):
    """Skip while developing, fail in CI (which installs everything)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(impl, topic):
    """`load`, but a missing framework skips the check while developing and fails it in CI."""
    try:
        return load(impl, topic)
    except ImportError as error:
        _missing(f"{impl} port of {topic} cannot be imported: {error}")


def require_package(name):
    """A third-party reference package (e.g. transformers), imported; missing, it skips, or fails in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        _missing(f"{name}, which this check compares against, cannot be imported: {error}")
