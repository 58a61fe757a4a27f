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


def require(impl, topic):
    """`load`, but a missing framework skips the check while developing and fails it in CI."""
    try:
        return load(impl, topic)
    except ImportError as error:
        message = f"{impl} port of {topic} cannot be imported: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
