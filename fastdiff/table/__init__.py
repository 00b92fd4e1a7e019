"""``fastdiff table``: the seeds' results table in miniature -- AR, MDLM, SEDD (absorbing and
uniform), D3PM and Gaussian embedding diffusion trained on one budget (same model size,
training bytes, held-out windows and seed) on the demo's byte-level corpus, with each row's
held-out NLL or its upper bound, throughput, wall time and a sample.

Modules: :mod:`~fastdiff.table.models` (the causal and embedding-space model variants built
from the demo's blocks), :mod:`~fastdiff.table.systems` (the rows: loss, bound, sampler),
:mod:`~fastdiff.table.run` (:func:`run_table`, :class:`TableConfig`: training, resuming,
evaluation), :mod:`~fastdiff.table.report` (text / Markdown / JSON / PNG) and
:mod:`~fastdiff.table.command` (the command line).
"""

from fastdiff.table.run import QUICK, TableConfig, run_table
from fastdiff.table.systems import ROWS

__all__ = ["QUICK", "ROWS", "TableConfig", "run_table"]
