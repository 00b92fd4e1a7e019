"""``fastdiff bench``: one benchmark harness for every op (not imported by ``import fastdiff``).

- :mod:`.cases`: the registry, one case per op, with inputs, providers and byte / flop models;
- :mod:`.shapes`: the shape and dtype tables; :mod:`.baselines`: SEDD / MDLM / D3PM / LLaDA /
  Diffusion-LM-style eager code;
- :mod:`.timing`: medians with CUDA events (``triton.testing.do_bench``) or wall clock on the
  CPU; :mod:`.peak`: the measured copy bandwidth and matmul rate;
- :mod:`.runner`: binds providers to inputs, times them, derives GB/s, % of peak, speedups;
- :mod:`.report`: table, JSON (schema in its docstring), PNG plot, ``--compare``;
- :mod:`.command`: the command line (``fastdiff bench``, ``python -m fastdiff.bench``);
- :mod:`.pytest_support`: the parametrization of the pytest-benchmark files in ``benchmarks/``.
"""
