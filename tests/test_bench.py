"""``fastdiff bench``: the quick run end to end (JSON schema, figures, timing budget), the plot,
``--compare``, the case registry, and the baselines that only the harness uses (they must
compute fastdiff's math, so that the comparison is like with like)."""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastdiff
from fastdiff import _extension, backend
from fastdiff.bench import baselines, cases, command, runner
from fastdiff.bench.peak import Peak
from fastdiff.bench.shapes import Shape, parse_shape
from fastdiff.cli import main
from fastdiff.reference import noising as ref_noising

QUICK_BUDGET_S = 60.0

TOP_LEVEL = {
    "schema_version": int,
    "fastdiff": str,
    "torch": str,
    "triton": (str, type(None)),
    "python": str,
    "device": dict,
    "date": str,
    "command": list,
    "settings": dict,
    "peak": dict,
    "results": list,
}
OPT_FLOAT = (float, type(None))
OPT_INT = (int, type(None))
ROW = {
    "op": str,
    "what": str,
    "sweep": str,
    "shape": dict,
    "dtype": str,
    "provider": str,
    "threads": int,
    "backend": (str, type(None)),
    "bytes": int,
    "flops": int,
    "median_ms": OPT_FLOAT,
    "reps": OPT_INT,
    "gbps": OPT_FLOAT,
    "tflops": OPT_FLOAT,
    "pct_of_peak": OPT_FLOAT,
    "speedup_vs_eager": OPT_FLOAT,
    "speedup_vs_baseline": OPT_FLOAT,
    "peak_mem_bytes": OPT_INT,
    "skipped_reason": (str, type(None)),
}


def _keys_and_types(obj: dict, spec: dict, where: str) -> None:
    assert set(obj) == set(spec), f"{where}: keys {sorted(obj)} != {sorted(spec)}"
    for key, types in spec.items():
        assert isinstance(obj[key], types), f"{where}.{key} = {obj[key]!r} is not {types}"


def _the_json(out: Path) -> Path:
    (path,) = out.glob("*.json")
    return path


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path, str, float]:
    """``python -m fastdiff.bench --quick --no-plot`` once: (document, path, stdout, seconds)."""
    out = tmp_path_factory.mktemp("quick")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fastdiff.bench", "--quick", "--no-plot", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=3 * QUICK_BUDGET_S,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = _the_json(out)
    return json.loads(path.read_text()), path, proc.stdout, seconds


def test_quick_run_finishes_in_a_minute(quick):
    assert quick[3] < QUICK_BUDGET_S


def test_quick_json_schema(quick):
    doc, path, _, _ = quick
    _keys_and_types(doc, TOP_LEVEL, "doc")
    assert doc["schema_version"] == 1
    assert doc["fastdiff"] == fastdiff.__version__
    assert doc["torch"] == torch.__version__
    assert path.name.startswith(("cpu-quick-", "nvidia"))
    _keys_and_types(
        doc["device"], {"type": str, "name": str, "threads": int, "memory_bytes": OPT_INT}, "device"
    )
    assert doc["command"][:3] == ["python", "-m", "fastdiff.bench"]
    settings = doc["settings"]
    assert settings["quick"] is True and settings["value_checks"] is False
    assert settings["ops"] == [c.name for c in cases.CASES]
    assert settings["providers"] == ["native", "reference", "compile", "baseline"]
    assert settings["threads"] == [1]
    peak = doc["peak"]
    _keys_and_types(peak, {"copy_gbps": float, "matmul_tflops": dict}, "peak")
    assert peak["copy_gbps"] > 0
    assert set(peak["matmul_tflops"]) == set(settings["dtypes"])
    assert all(v > 0 for v in peak["matmul_tflops"].values())
    for i, row in enumerate(doc["results"]):
        _keys_and_types(row, ROW, f"results[{i}]")
        _keys_and_types(row["shape"], {"n": int, "v": OPT_INT, "h": OPT_INT}, f"results[{i}]")
        assert row["shape"][row["sweep"]] is not None


def test_quick_figures(quick):
    doc = quick[0]
    rows = doc["results"]
    copy_bps = doc["peak"]["copy_gbps"] * 1e9
    # every op, with its reference, its public-style baseline and its native kernel (where the
    # extension has one) timed
    natives = backend.registered_natives()
    for case in cases.CASES:
        timed = {r["provider"] for r in rows if r["op"] == case.name and r["median_ms"]}
        native = {"native"} if case.kernel in natives else set()
        assert timed == {"reference", case.baseline.style} | native, case.name
    for r in rows:
        assert r["threads"] == 1
        if r["skipped_reason"]:  # torch.compile in quick mode, the ops without a native kernel
            assert r["median_ms"] is None and r["gbps"] is None
            assert r["provider"] == "compile" or "native" in r["skipped_reason"]
            continue
        seconds = r["median_ms"] * 1e-3
        assert r["median_ms"] > 0 and r["reps"] >= 3 and r["bytes"] > 0
        assert math.isclose(r["gbps"], r["bytes"] / seconds / 1e9, rel_tol=1e-9)
        roof = r["bytes"] / copy_bps
        if r["flops"]:
            assert r["tflops"] == pytest.approx(r["flops"] / seconds / 1e12)
            roof = max(roof, r["flops"] / (doc["peak"]["matmul_tflops"][r["dtype"]] * 1e12))
        else:
            assert r["tflops"] is None
        assert r["pct_of_peak"] == pytest.approx(100 * roof / seconds)
        if r["provider"] == "reference":
            assert r["speedup_vs_eager"] == 1.0 and r["backend"] == "reference"
        assert r["backend"] == {"native": "native", "reference": "reference"}.get(
            r["provider"], "eager"
        )
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_baseline"] > 0
        assert r["peak_mem_bytes"] is None  # CPU


def test_quick_table(quick):
    doc, path, stdout, _ = quick
    header = stdout.splitlines()[2]
    columns = (
        "op",
        "shape",
        "dtype",
        "provider",
        "threads",
        "median ms",
        "GB/s",
        "% peak",
        "x ref",
    )
    assert all(column in header for column in (*columns, "x base", "peak mem"))
    assert stdout.count("\n") > len(doc["results"])
    assert re.search(r"\[\d+\] skipped: not in --quick mode \(compiling takes", stdout)
    assert stdout.count("skipped: no native kernel for the op") <= 1
    assert f"JSON: {path}" in stdout


def test_plot_through_the_console_entry(tmp_path, capsys):
    ops = ["add_noise_absorb", "round_to_embedding"]
    argv = ["bench", "--quick", "--ops", *ops, "--providers", "reference", "baseline"]
    argv += ["--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    (png,) = tmp_path.glob("*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    doc = json.loads(_the_json(tmp_path).read_text())
    assert doc["command"] == ["fastdiff", *argv]
    providers = {(r["op"], r["provider"]) for r in doc["results"]}
    assert providers == {
        (op, p) for op in ops for p in ("reference", cases.BY_NAME[op].baseline.style)
    }
    assert f"PNG: {png}" in capsys.readouterr().out


def test_compare(quick, tmp_path, capsys):
    path = quick[1]
    assert main(["bench", "--compare", str(path), str(path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(tuple(cases.BY_NAME))]
    timed = [r for r in quick[0]["results"] if r["median_ms"]]
    assert len(rows) == len(timed)
    assert all(row[-1] == "1.00" for row in rows)
    # a second file with one op slowed down twice
    doc = json.loads(path.read_text())
    for r in doc["results"]:
        if r["op"] == "add_noise_absorb" and r["median_ms"]:
            r["median_ms"] *= 2
    other = tmp_path / "slow.json"
    other.write_text(json.dumps(doc))
    assert main(["bench", "--compare", str(path), str(other)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    ratios = {tuple(row[:4]): row[-1] for row in rows if row and row[0] in cases.BY_NAME}
    assert {r for k, r in ratios.items() if k[0] == "add_noise_absorb"} == {"0.50"}
    assert {r for k, r in ratios.items() if k[0] != "add_noise_absorb"} == {"1.00"}
    # a file from before rows recorded their threads: its rows ran at the device's count
    for r in doc["results"]:
        del r["threads"]
    doc["device"]["threads"] = 1
    other.write_text(json.dumps(doc))
    assert main(["bench", "--compare", str(path), str(other)]) == 0
    assert f"{len(timed)} rows in both; 0 of A and 0 of B unmatched" in capsys.readouterr().out


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--ops", "no_such_op"])
    assert exc.value.code == 2
    assert "unknown op or family no_such_op" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--shapes", "12xx"])
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "--threads", "1", bad])
        assert exc.value.code == 2
        assert "argument --threads" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the native provider and the thread counts
# --------------------------------------------------------------------------------------------

CPU = torch.device("cpu")
NOISE = cases.BY_NAME["add_noise_absorb"]  # kernel "corrupt"


@pytest.fixture
def auto_backend(monkeypatch):
    monkeypatch.setattr(backend, "_global_choice", None)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)


@pytest.fixture
def fake_native(monkeypatch, auto_backend) -> list[int]:
    """``corrupt`` with a native kernel, as if ``fastdiff._C`` had loaded: the reference under
    another name, counting its calls."""
    calls: list[int] = []

    def corrupt_native(*args, **kwargs):
        calls.append(1)
        return ref_noising.corrupt(*args, **kwargs)

    monkeypatch.setattr(backend, "_native_state", [True])
    monkeypatch.setitem(backend._natives, "corrupt", corrupt_native)
    return calls


@pytest.fixture
def no_extension(monkeypatch, auto_backend) -> None:
    """``fastdiff._C`` missing (not built), its warning already given."""
    monkeypatch.setattr(backend, "_native_state", [False])
    monkeypatch.setattr(_extension, "_loaded", True)
    monkeypatch.setattr(_extension, "_module", None)
    monkeypatch.setattr(_extension, "_reason", "ImportError: not built")
    monkeypatch.setattr(_extension, "_warned", True)


def _noise_inputs() -> list[cases.Inputs]:
    return runner.make_input_sets(NOISE, Shape(64, 32), torch.float32, CPU)


def test_native_provider_runs_the_native_kernel(fake_native):
    assert runner.resolved_backend(NOISE, CPU, "auto") == "native"
    assert runner.resolved_backend(NOISE, CPU, "native") == "native"
    assert runner.resolved_backend(NOISE, CPU, "reference") == "reference"
    for provider in ("native", "fastdiff"):  # fastdiff: auto, which picks native on the CPU
        bound = runner.bind(NOISE, provider, _noise_inputs(), CPU)
        before = len(fake_native)
        bound.call()
        assert bound.backend == "native" and len(fake_native) == before + 1
    bound = runner.bind(NOISE, "reference", _noise_inputs(), CPU)
    bound.call()
    assert bound.backend == "reference" and len(fake_native) == 2


def test_native_provider_skips_an_op_without_a_native_kernel(fake_native):
    case = cases.BY_NAME["gaussian_loss"]  # a loss: no native kernel (they are the reference)
    assert case.kernel not in backend.registered_natives()
    inputs = runner.make_input_sets(case, Shape(64, 0, h=32), torch.float32, CPU)
    with pytest.raises(runner.Skip, match=r"no native kernel for the op \(native: .*corrupt"):
        runner.bind(case, "native", inputs, CPU)
    assert runner.resolved_backend(case, CPU, "auto") == "reference"
    # one wording for every op without a kernel: the table lists it once
    other = cases.BY_NAME["score_entropy_absorb"]
    assert runner.native_skip(case, CPU) == runner.native_skip(other, CPU)
    assert runner.native_skip(NOISE, CPU) is None
    assert "run on CPU tensors" in runner.native_skip(NOISE, torch.device("cuda"))


def test_native_provider_skips_without_the_extension(no_extension):
    assert runner.resolved_backend(NOISE, CPU, "auto") == "reference"
    with pytest.raises(runner.Skip, match=r"fastdiff._C is not available \(ImportError: not built"):
        runner.bind(NOISE, "native", _noise_inputs(), CPU)
    plans = runner.plan([NOISE], {"native", "reference"}, [torch.float32], "cpu", [Shape(64, 32)])
    rows = runner.run(plans, CPU, Peak(1.0, {"float32": 1.0}), quick=True)
    reference, native = rows
    assert native.provider == "native" and native.median_ms is None
    assert "fastdiff._C is not available" in native.skipped_reason
    assert reference.median_ms > 0 and reference.speedup_vs_eager == 1.0


def test_run_times_each_thread_count_and_restores_torchs(fake_native):
    threads = torch.get_num_threads()
    plans = runner.plan(
        [NOISE], {"native", "reference", "baseline"}, [torch.float32], "cpu", [Shape(64, 32)]
    )
    rows = runner.run(plans, CPU, Peak(1.0, {"float32": 1.0}), quick=True, threads=[2, 1])
    assert torch.get_num_threads() == threads
    assert [(r.threads, r.provider) for r in rows] == [
        (t, p) for t in (2, 1) for p in ("reference", "native", "sedd")
    ]
    for count in (2, 1):  # speedups within one thread count
        group = {r.provider: r for r in rows if r.threads == count}
        native = group["native"]
        assert native.backend == "native"
        assert native.speedup_vs_eager == group["reference"].median_ms / native.median_ms
        assert native.speedup_vs_baseline == group["sedd"].median_ms / native.median_ms


def test_default_thread_counts_and_providers():
    every = torch.get_num_threads()
    assert command._threads(None, CPU, quick=True) == [1]
    assert command._threads(None, CPU, quick=False) == list(dict.fromkeys([1, every]))
    assert command._threads(None, torch.device("cuda"), quick=False) == [every]
    assert command._threads([1, every, 1], CPU, quick=True) == list(dict.fromkeys([1, every]))
    assert command.DEFAULT_PROVIDERS["cpu"] == ["native", "reference", "compile", "baseline"]


def test_one_run_at_one_thread_and_at_all(tmp_path, capsys):
    every = torch.get_num_threads()
    argv = ["bench", "--quick", "--ops", "add_noise_absorb", "--shapes", "64x32"]
    argv += ["--providers", "reference", "baseline", "--threads", "1", "all"]
    argv += ["--out", str(tmp_path), "--no-plot", "--no-progress"]
    assert main(argv) == 0
    doc = json.loads(_the_json(tmp_path).read_text())
    counts = list(dict.fromkeys([1, every]))
    assert doc["settings"]["threads"] == counts and doc["device"]["threads"] == every
    assert [(r["threads"], r["provider"]) for r in doc["results"]] == [
        (t, p) for t in counts for p in ("reference", "sedd")
    ]
    out = capsys.readouterr().out
    assert f"timed with {', '.join(map(str, counts))}" in out


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------


def test_every_kernel_has_a_case():
    """A case's ``kernel`` is the name its public op resolves, so the JSON's backend is right;
    every registered Triton kernel must be benchmarked under that name."""
    assert set(backend.registered_kernels()) <= {c.kernel for c in cases.CASES}


def test_select_by_family_and_name():
    names = [c.name for c in cases.select(["noising", "ddim_step"])]
    assert names == ["add_noise_absorb", "add_noise_dense", "ddim_step"]
    assert len(cases.select(None)) == len(cases.CASES) == len({c.name for c in cases.CASES})


def test_plan_fits_given_shapes_to_each_op():
    chosen = cases.select(["score_entropy_absorb", "linear_score_entropy", "ddpm_step"])
    plans = runner.plan(
        chosen,
        {"reference", "baseline"},
        [torch.float32],
        "cpu",
        [parse_shape("64x128"), parse_shape("64x128x32")],
    )
    got = {(p.case.name, p.shape.id, tuple(p.providers)) for p in plans}
    assert got == {
        ("score_entropy_absorb", "N64xV128", ("reference", "sedd")),  # H dropped
        ("linear_score_entropy", "N64xV128xH256", ("reference", "sedd")),  # default H
        ("linear_score_entropy", "N64xV128xH32", ("reference", "sedd")),
        ("ddpm_step", "N64xH768", ("reference", "diffusionlm")),  # no vocabulary
        ("ddpm_step", "N64xH32", ("reference", "diffusionlm")),
    }


def test_byte_models_grow_with_the_swept_size_and_the_dtype():
    for case in cases.CASES:
        small, large = case.shapes.quick[0], case.shapes.quick[-1]
        assert getattr(large, case.sweep) > getattr(small, case.sweep)
        if case.name != "add_noise_absorb":  # its traffic does not depend on V
            assert case.bytes(large, torch.float32) > case.bytes(small, torch.float32)
        if case.supports(torch.bfloat16):
            assert case.bytes(small, torch.float32) > case.bytes(small, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# the baselines used only by the harness agree with fastdiff (float64, reference backend)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def reference_backend():
    with fastdiff.use_backend("reference"):
        yield


D = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _abar(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    abar = 0.05 + 0.85 * torch.rand(n, generator=g, dtype=D)
    return abar, abar + 0.2 * (1 - abar)


@pytest.mark.usefixtures("reference_backend")
def test_diffusionlm_gaussian_baselines():
    # improved-diffusion casts its per-row coefficients to float32 (``_extract_into_tensor``)
    close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)
    g = _gen()
    n, h, v = 64, 16, 50
    abar, abar_prev = _abar(n, g)
    eps, x_t, noise = (torch.randn(n, h, generator=g, dtype=D) for _ in range(3))
    ids = torch.randint(0, v, (n,), generator=g)
    emb = torch.randn(v, h, generator=g, dtype=D)
    got = baselines.diffusionlm_q_sample(ids, emb, abar, noise)
    want = fastdiff.add_noise_gaussian(ids, alpha_bar=abar, noise=noise, embedding=emb)
    for a, b in zip(got, want):
        close(a, b)
    abar_prev[:4] = 1.0  # the last step: no noise
    close(
        baselines.diffusionlm_ddpm_step(eps, x_t, abar, abar_prev, noise),
        fastdiff.ddpm_step(
            eps,
            x_t,
            alpha_bar=abar,
            alpha_bar_next=abar_prev,
            variance_type="fixed_large",  # Diffusion-LM's variance beta_t
            noise=noise,
        ),
    )
    for eta in (0.0, 0.5, 1.0):
        close(
            baselines.diffusionlm_ddim_step(eps, x_t, abar, abar_prev, eta, noise),
            fastdiff.ddim_step(
                eps, x_t, alpha_bar=abar, alpha_bar_next=abar_prev, eta=eta, noise=noise
            ),
        )
    x = emb[ids] + 0.1 * torch.randn(n, h, generator=g, dtype=D)
    tokens, rows = baselines.diffusionlm_round(x, emb)
    want_tokens, want_rows = fastdiff.round_to_embedding(x, emb)
    assert torch.equal(tokens, want_tokens) and torch.equal(tokens, ids)
    close(rows, want_rows)


@pytest.mark.usefixtures("reference_backend")
def test_linear_baselines_are_projection_then_loss():
    g = _gen(1)
    n, h, v = 48, 8, 33
    # tokens with half the rows masked, sigma, dsigma
    d = cases.BY_NAME["score_entropy_absorb"].make(Shape(n, v), D, torch.device("cpu"), g)
    hidden = torch.randn(n, h, generator=g, dtype=D)
    proj = torch.randn(v, h, generator=g, dtype=D)
    x_t, x0, m = d["x_t"], d["x0"], d["mask_id"]
    sigma, dsigma = d["sigma"].double(), d["dsigma"].double()
    torch.testing.assert_close(
        baselines.sedd_linear_score_entropy_absorb(hidden, proj, x_t, x0, sigma, m),
        fastdiff.linear_score_entropy(
            hidden, proj, x_t, x0, sigma=sigma, graph="absorb", mask_id=m, reduction="sum"
        ),
    )
    torch.testing.assert_close(
        baselines.mdlm_linear_loss(hidden, proj, x_t, x0, sigma, dsigma, m),
        fastdiff.linear_masked_diffusion_loss(
            hidden, proj, x_t, x0, mask_id=m, weight=dsigma / torch.expm1(sigma), reduction="sum"
        ),
    )


@pytest.mark.usefixtures("reference_backend")
def test_llada_step_commits_like_fastdiff():
    g = _gen(2)
    batch, length, v, k = 3, 40, 20, 5
    m = v - 1
    logits = torch.randn(batch, length, v, generator=g, dtype=D)
    logits[..., m] = -1e9  # LLaDA proposes from every column; fastdiff never the mask
    x = torch.randint(0, m, (batch, length), generator=g)
    x[torch.rand(batch, length, generator=g) < 0.6] = m
    before = x.clone()
    got = baselines.llada_unmask_step(logits, x, m, torch.full((batch,), k))
    assert torch.equal(x, before)
    assert torch.equal(got, fastdiff.confidence_unmask_step(logits, x, mask_id=m, k=k))
    assert ((got != m) & (x == m)).sum(-1).tolist() == [k] * batch


def test_d3pm_dense_corrupt_samples_the_matrix_row():
    torch.manual_seed(0)
    qbar = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 1.0, 0.0, 0.0]] + [[0.25] * 4] * 2)
    draws = baselines.d3pm_corrupt_dense(torch.zeros(40_000, dtype=torch.long), qbar)
    freq = torch.bincount(draws, minlength=4) / draws.numel()
    assert 0.5 * (freq - qbar[0]).abs().sum() < 0.01
    ones = torch.ones(100, dtype=torch.long)
    assert torch.equal(baselines.d3pm_corrupt_dense(ones, qbar), ones)


def test_fused_linear_memory_script_runs_and_reports_every_loss(tmp_path):
    """The GPU memory script (benchmarks/fused_linear_memory.py) runs end to end; on a CPU it
    uses a tiny shape through the interpreter and records no memory figure."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.fused_linear_memory",
            "--repeats",
            "1",
            "--dtype",
            "float32",
            "--out",
            str(tmp_path),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(out.stdout)
    assert {r["loss"] for r in result["results"]} == {"score_entropy", "masked_diffusion_loss"}
    for row in result["results"]:
        for path in ("unfused", "fused"):
            assert row[path]["median_ms"] > 0
    assert len(list(tmp_path.glob("fused-linear-memory-*.json"))) == 1
