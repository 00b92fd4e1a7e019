"""pytest-benchmark of the discrete sampling updates: categorical sampling, the SEDD analytic
(absorbing and uniform), Euler and final denoise steps, the MDLM step, confidence unmasking and
the D3PM reverse step.

Cases, shapes, providers (fastdiff, reference, torch.compile, public-style baseline) and the
byte models come from :mod:`fastdiff.bench.cases`; ``fastdiff bench --ops sampling`` times
the same cases with CUDA events and writes JSON / PNG. Plain ``pytest`` runs each op and
provider once on the smallest shape; ``--benchmark-enable`` times every shape.
"""

import pytest

from fastdiff.bench.pytest_support import params, run_benchmark


@pytest.mark.parametrize(("case", "shape", "dtype", "provider"), params("sampling"))
def bench_sampling(benchmark, case, shape, dtype, provider):
    run_benchmark(benchmark, case, shape, dtype, provider)
