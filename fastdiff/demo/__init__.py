"""``fastdiff demo``: train a small diffusion language model on the Python standard library's
source with fastdiff's ops, then sample from it (unconditionally and by infilling).

Modules: :mod:`~fastdiff.demo.corpus` (byte-level corpus and fixed split),
:mod:`~fastdiff.demo.model` (the transformer denoiser), :mod:`~fastdiff.demo.objectives`
(masked diffusion, SEDD score entropy, D3PM and Gaussian embedding diffusion through
:mod:`fastdiff.nn` and :mod:`fastdiff.table.systems`, held-out evaluation and bounds),
:mod:`~fastdiff.demo.train` (training loop, checkpoints, DDP), :mod:`~fastdiff.demo.sampling`,
:mod:`~fastdiff.demo.report` (JSON, PNG, printing) and :mod:`~fastdiff.demo.command` (the
command line).
"""
