"""Shared test settings: Hypothesis without per-example deadlines (CPU timings vary a lot on
shared CI machines; each property states its own ``max_examples`` to bound the run time)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fastdiff", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("fastdiff")
