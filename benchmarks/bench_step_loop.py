"""pytest-benchmark of the sampler step loop's host overhead: 1,000 steps of a trivial
denoiser and update (:mod:`benchmarks.step_loop_overhead`), run by the C++ engine, the Python
engine, and as bare back-to-back calls (``direct``: the work without the loop machinery).

Plain ``pytest`` runs each case once; ``--benchmark-enable`` times them. For the overhead per
step and the C++ / Python ratio with a JSON result, run
``python -m benchmarks.step_loop_overhead --out benchmarks/results``.
"""

import pytest

from benchmarks.step_loop_overhead import SCENARIOS, make_case

STEPS = 1000


@pytest.mark.parametrize("runner", ["direct", "python", "cpp"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def bench_step_loop(benchmark, scenario, runner):
    run = make_case(scenario, runner, steps=STEPS)
    benchmark.extra_info.update(scenario=scenario, runner=runner, steps=STEPS)
    benchmark(run)
