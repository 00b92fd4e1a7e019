"""pytest-benchmark of the forward noising of discrete tokens: absorbing ``corrupt`` and
dense-matrix (D3PM) ``corrupt_dense``.

Cases, shapes, providers (fastdiff, reference, torch.compile, public-style baseline) and the
byte models come from :mod:`fastdiff.bench.cases`; ``fastdiff bench --ops noising`` times
the same cases with CUDA events and writes JSON / PNG. Plain ``pytest`` runs each op and
provider once on the smallest shape; ``--benchmark-enable`` times every shape.
"""

import pytest

from fastdiff.bench.pytest_support import params, run_benchmark


@pytest.mark.parametrize(("case", "shape", "dtype", "provider"), params("noising"))
def bench_noising(benchmark, case, shape, dtype, provider):
    run_benchmark(benchmark, case, shape, dtype, provider)
