"""The step-loop GPU benchmark script (benchmarks/step_loop_gpu.py) end to end on a CPU with
its tiny shape: the JSON's keys, positive times per step, the skipped CUDA-graph parts, and
the same tokens from the python and cpp engines for the same seed."""

from __future__ import annotations

import json

from benchmarks.step_loop_gpu import main
from fastdiff import _extension

TOP_LEVEL = {
    "benchmark",
    "date",
    "device",
    "device_type",
    "torch",
    "triton",
    "fastdiff",
    "extension_loaded",
    "extension_reason",
    "backend",
    "precision",
    "value_checks",
    "method",
    "model",
    "setup",
    "skipped",
    "results",
}
ROW = {"batch", "shape", "engines", "forward", "tokens_identical_to_python", "ratios"}


def test_tiny_cpu_run_writes_the_json(tmp_path, capsys):
    doc = main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    files = list(tmp_path.glob("step-loop-gpu-cpu-*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == doc
    assert set(doc) >= TOP_LEVEL
    assert doc["device"] == "cpu" and doc["value_checks"] is False
    assert doc["extension_loaded"] == (_extension.load() is not None)
    assert set(doc["skipped"]) >= {"cuda_graph", "graphed_forward"}
    engines = ["python"] + (["cpp"] if doc["extension_loaded"] else [])
    setup = doc["setup"]
    assert [row["batch"] for row in doc["results"]] == setup["batches"]
    for row in doc["results"]:
        assert set(row) >= ROW
        assert row["engines"]["cuda_graph"] is None and row["forward"]["graphed"] is None
        assert row["ratios"]["graph_step_over_graphed_forward"] is None
        assert row["forward"]["eager"]["median_ms"] > 0
        for engine in engines:
            r = row["engines"][engine]
            assert 1 <= r["steps_run"]["short"] <= setup["short_steps"]
            assert r["steps_run"]["short"] < r["steps_run"]["long"] <= setup["steps"]
            assert r["per_step_ms"] > 0 and r["per_step_amortized_ms"] > 0
            assert row["ratios"]["step_over_eager_forward"][engine] > 0
        if "cpp" in engines:
            assert row["tokens_identical_to_python"]["cpp"] is True
            assert row["engines"]["cpp"]["steps_run"] == row["engines"]["python"]["steps_run"]
    printed = capsys.readouterr().out
    assert "forward eager" in printed and "skipped" in printed
