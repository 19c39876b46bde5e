"""Benchmarks run from the repository root: ``pytest benchmarks/ --benchmark-only``.

Options: ``--bench-threads N`` (CPU intra-op threads, default 1) and ``--bench-full`` (also run the cases
too slow for a CPU budget, such as the compiled paper-preset model).
"""

from benchmarks.common import SETTINGS


def pytest_addoption(parser):
    group = parser.getgroup("export3d benchmarks")
    group.addoption("--bench-threads", type=int, default=1, help="torch intra-op threads on the CPU (default 1)")
    group.addoption("--bench-full", action="store_true", help="also run the slow cases (compiled paper preset)")


def pytest_configure(config):
    SETTINGS["threads"] = config.getoption("--bench-threads")
    SETTINGS["full"] = config.getoption("--bench-full")
