"""Test-session set-up: Hypothesis profiles, one framework warm-up, and no silent skips in CI.

Profiles (choose with HYPOTHESIS_PROFILE=name; CI=true picks `ci`):
    dev       the default while developing: random examples, a modest number of them
    ci        derandomized (the same examples every run), no deadline
    thorough  ten times the examples, for before a release or after touching the math
"""

import os

# Before any framework is imported: quiet TensorFlow, keep its float32 kernels deterministic,
# and run Keras on TensorFlow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers builds its models from configs here: never reach the hub

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from checks.implementations import PORTS, load  # noqa: E402

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=25, **_common)
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=250, **_common)
IN_CI = os.environ.get("CI", "").lower() == "true"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


@pytest.fixture(scope="session", autouse=True)
def warm_frameworks():
    """Import every framework once per session (TensorFlow alone takes seconds) and run one op."""
    for impl in PORTS:
        try:
            load(impl, "attention").softmax_forward([[0.0, 1.0]])
        except ImportError:
            pass  # reported by the test that needs it: a skip here, a failure in CI


def pytest_report_header(config):
    from hypothesis import settings as current

    return f"hypothesis profile: {current._current_profile}, CI={IN_CI}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if IN_CI and skipped:
        terminalreporter.write_line(f"FAILED: {len(skipped)} check(s) skipped; CI installs every framework, so a skip is a failure", red=True)


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = 1
