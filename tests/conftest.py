"""Shared test settings: Hypothesis without per-example deadlines (CPU timings vary a lot on
shared CI machines; each property states its own ``max_examples`` to bound the run time).

Locally every run explores new examples (failures are replayed from Hypothesis' database); with
``CI`` set (``.ci/run`` sets it) the examples are derived from each test's name, so a CI run is
reproducible and a red run can be re-run bit for bit.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fastdiff", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("fastdiff-ci", parent=settings.get_profile("fastdiff"), derandomize=True)
settings.load_profile("fastdiff-ci" if os.environ.get("CI") else "fastdiff")
