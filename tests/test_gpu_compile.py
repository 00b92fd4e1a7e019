"""Every Triton launch the public ops make, compiled for real NVIDIA targets (sm_80, sm_90)
without a GPU (:mod:`fastdiff.bench.gpu_compile`).

The interpreter that runs the other kernel tests never invokes Triton's compiler, so it cannot
see a kernel that does not compile, a register spill or shared-memory overflow. This test
records the launches of :mod:`fastdiff.bench.launch_scenarios` (every op, mode and dtype at
N = 16384, V = 50258, H = 768) through Triton's own argument binder and compiles each one with
the ``ptxas`` of the triton wheel, in a subprocess (the kernels must be imported with
``TRITON_INTERPRET`` unset). It fails on any compile error and on any spill in a hot kernel.

It takes a few minutes on 2 cores; ``pytest -m "not gpu_compile"`` leaves it out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastdiff.bench.gpu_compile import HOT_KERNELS, TARGETS

pytestmark = pytest.mark.gpu_compile

# Every kernel module's launches must be among the recorded ones.
EXPECTED_KERNELS = HOT_KERNELS | {"_norms_kernel"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_compile") / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out.parent / "triton-cache")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset
    jobs = str(max(2, os.cpu_count() or 1))
    proc = subprocess.run(
        [sys.executable, "-m", "fastdiff.bench.gpu_compile", "--json", str(out), "--jobs", jobs],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=Path(__file__).resolve().parents[1],
    )
    print(proc.stdout[-20000:])
    assert out.exists(), f"the compile check did not finish:\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text())


def test_every_kernel_and_mode_is_recorded(compiled: dict) -> None:
    kernels = {launch["kernel"] for launch in compiled["launches"]}
    assert kernels == EXPECTED_KERNELS
    # per kernel, the constexpr modes that must each appear in some recorded launch
    seen: dict[str, set[tuple[str, object]]] = {}
    for launch in compiled["launches"]:
        names = list(launch["signature"])
        for path, value in launch["constants"]:
            seen.setdefault(launch["kernel"], set()).add((names[path[0]], value))
    must = {
        "_categorical_kernel": {
            ("TOP_K", True),
            ("TOP_P", True),
            ("MIN_P", True),
            ("ARGMAX", True),
            ("WANT_PROB", True),
            ("IS_LOG", False),
        },
        "_update_kernel": {("MODE", m) for m in range(5)} | {("HAS_FIXED", True)},
        "_candidates_kernel": {("CONF", c) for c in range(3)} | {("ARGMAX", False)},
        "_q_sample_kernel": {
            ("HAS_NOISE", False),
            ("HAS_NOISE", True),
            ("GATHER", True),
            ("HAS_FIXED", True),
        },
        "_step_kernel": {
            ("DDIM", True),
            ("DDIM", False),
            ("GUIDED", True),
            ("HAS_NOISE", False),
            ("POSTERIOR", True),
            ("X0", True),
            ("HAS_FIXED", True),
        },
        "_dense_race_kernel": {("HAS_FIXED", True)},
    }
    for kernel, modes in must.items():
        assert modes <= seen[kernel], (kernel, modes - seen[kernel])
    dtypes = {t for launch in compiled["launches"] for t in launch["signature"].values()}
    assert {"*fp32", "*bf16", "*fp16"} <= dtypes


def test_every_launch_compiles_for_sm80_and_sm90(compiled: dict) -> None:
    results = compiled["results"]
    assert {r["target"] for r in results} == set(TARGETS)
    assert len(results) == len(compiled["launches"]) * len(TARGETS)
    failed = [f"{r['kernel']} sm_{r['target']}: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_no_register_spills_in_hot_kernels(compiled: dict) -> None:
    spills = [
        f"{r['kernel']} sm_{r['target']} ({r['registers']} registers, stack {r['stack']} B, "
        f"{r['spill_instructions']} spill instructions)"
        for r in compiled["results"]
        if r["ok"]
        and r["kernel"] in HOT_KERNELS
        and (r["stack"] or r["local"] or r["spill_instructions"])
    ]
    assert not spills, "\n".join(spills)
    assert compiled["problems"] == []
