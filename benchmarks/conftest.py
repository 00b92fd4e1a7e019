"""pytest configuration of the benchmarks.

Under plain ``pytest`` (the project's addopts pass ``--benchmark-disable``) every benchmark
function runs once as a smoke test. Parametrizations marked ``bench_large`` (every shape but
the smallest) are then deselected, so the whole ``benchmarks/`` directory stays fast; pass
``--benchmark-enable`` to time them all.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bench_large: benchmark shape skipped when benchmarking is disabled"
    )


def _benchmarks_disabled(config: pytest.Config) -> bool:
    try:
        disabled = config.getoption("benchmark_disable")
        enabled = config.getoption("benchmark_enable")
    except ValueError:  # pytest-benchmark not installed: the fixture is missing anyway
        return True
    return bool(disabled) and not bool(enabled)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _benchmarks_disabled(config):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("bench_large") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
