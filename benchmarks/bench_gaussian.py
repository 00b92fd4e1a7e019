"""pytest-benchmark of the Gaussian (Diffusion-LM) ops: ``q_sample`` with the embedding
gather, the DDPM and DDIM steps and rounding to the embedding.

Cases, shapes, providers (fastdiff, reference, torch.compile, public-style baseline) and the
byte models come from :mod:`fastdiff.bench.cases`; ``fastdiff bench --ops gaussian`` times
the same cases with CUDA events and writes JSON / PNG. Plain ``pytest`` runs each op and
provider once on the smallest shape; ``--benchmark-enable`` times every shape.
"""

import pytest

from fastdiff.bench.pytest_support import params, run_benchmark


@pytest.mark.parametrize(("case", "shape", "dtype", "provider"), params("gaussian"))
def bench_gaussian(benchmark, case, shape, dtype, provider):
    run_benchmark(benchmark, case, shape, dtype, provider)
