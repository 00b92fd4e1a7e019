"""pytest-benchmark of the training losses (forward + backward): score entropy (absorbing
and uniform graphs), the masked-diffusion cross entropy and the fused projection + loss.

Cases, shapes, providers (fastdiff, reference, torch.compile, public-style baseline) and the
byte models come from :mod:`fastdiff.bench.cases`; ``fastdiff bench --ops training`` times
the same cases with CUDA events and writes JSON / PNG. Plain ``pytest`` runs each op and
provider once on the smallest shape; ``--benchmark-enable`` times every shape.
"""

import pytest

from fastdiff.bench.pytest_support import params, run_benchmark


@pytest.mark.parametrize(("case", "shape", "dtype", "provider"), params("training"))
def bench_training(benchmark, case, shape, dtype, provider):
    run_benchmark(benchmark, case, shape, dtype, provider)
