"""Tests of the sampler step loop (fastdiff.samplers.loop) and its C++ engine fastdiff._C.

The C++ and Python engines must make the same denoiser calls (same inputs, same order) and give
identical tokens, step counts, call counts and trajectories. Every comparison runs on synthetic
StepLoops whose expected outcome is also derived by hand where it can be:

- ``greedy``: a deterministic update that commits, in every sequence, the masked non-fixed
  position with the largest logit (its argmax token): a sequence with ``k`` masked positions is
  done after exactly ``k`` steps, so the early exit happens after ``max_b k_b`` steps (the next
  multiple of ``check_every`` when the test runs every ``check_every`` steps);
- ``mdlm``: fastdiff.mdlm_step with per-step seeds (random, reproducible);
- ``scribble``: an update that overwrites every position with noise (for fixed positions).

The denoiser is a fixed random table of logits by (position, token) plus a time term, applied
to each sequence on its own (so caching is valid when the time term is off).

``FASTDIFF_REQUIRE_EXTENSION=1`` (set by .ci/run) turns a missing fastdiff._C into a failure;
otherwise the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import math
import os
import threading
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import _extension
from fastdiff.samplers.api import sample
from fastdiff.samplers.loop import LoopResult, StepLoop, run_loop
from fastdiff.schedules import GaussianSchedule
from fastdiff.transitions import TransitionSchedule

FAST = settings(max_examples=15, deadline=None)
REQUIRED = os.environ.get("FASTDIFF_REQUIRE_EXTENSION") == "1"
HAVE_EXT = _extension.load() is not None
needs_ext = pytest.mark.skipif(
    not HAVE_EXT and not REQUIRED,
    reason=f"fastdiff._C not built ({_extension.missing_reason()})",
)
ENGINES = ("python", "cpp")


def test_extension_imports():
    """CI builds the extension: with FASTDIFF_REQUIRE_EXTENSION=1 a missing one fails here."""
    if not REQUIRED and not HAVE_EXT:
        pytest.skip(f"fastdiff._C not built ({_extension.missing_reason()})")
    import fastdiff._C as ext

    assert callable(ext.run_loop)


# --------------------------------------------------------------------------------------------
# synthetic denoisers and updates
# --------------------------------------------------------------------------------------------


class TableDenoiser(torch.nn.Module):
    """``logits[b, l, v] = table[l, x[b, l], v] + time_scale * t[b] * tilt[v]``: each sequence
    on its own; time-independent when ``time_scale = 0``."""

    def __init__(self, length: int, vocab: int, seed: int, time_scale: float = 0.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(length, vocab, vocab, generator=gen))
        self.tilt = torch.nn.Parameter(torch.randn(vocab, generator=gen))
        self.time_scale = time_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        logits = self.table[pos.unsqueeze(0), x]
        return logits + self.time_scale * t[:, None, None] * self.tilt


class Recorder:
    """Wraps a denoiser and records (x, t) of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone()))
        return self.fn(x, t)


def greedy_update(mask_id: int):
    """Commit, per sequence, the masked position with the largest non-mask logit (lowest index
    on ties) to its argmax token. Positions are ranked on the loop's x (fixed ones included:
    the loop restores them)."""

    def update(out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        logits = out.clone()
        logits[..., mask_id] = -math.inf
        best, token = logits.max(-1)
        best = best.masked_fill(x != mask_id, -math.inf)
        pos = best.argmax(-1, keepdim=True)
        has = torch.isfinite(best.gather(-1, pos))
        new = torch.where(has, token.gather(-1, pos), x.gather(-1, pos))
        return x.scatter(-1, pos, new)

    return update


def mdlm_update(sigmas: torch.Tensor, mask_id: int, seed: int):
    def update(out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return fastdiff.mdlm_step(
            out,
            x,
            sigma=float(sigmas[i]),
            sigma_next=float(sigmas[i + 1]),
            mask_id=mask_id,
            seed=seed,
            offset=i,
        )

    return update


def start(batch: int, length: int, mask_id: int, fixed_frac: float, seed: int):
    """Masked start tokens with a random fixed pattern holding random clean tokens."""
    gen = torch.Generator().manual_seed(seed)
    fixed = torch.rand(batch, length, generator=gen) < fixed_frac
    clean = torch.randint(0, mask_id, (batch, length), generator=gen)
    x = torch.where(fixed, clean, torch.full_like(clean, mask_id))
    return x, fixed


def run_both(denoiser, x, loop, **kw) -> dict[str, tuple[LoopResult, Recorder]]:
    out = {}
    for engine in ENGINES:
        rec = Recorder(denoiser)
        out[engine] = (run_loop(rec, x, loop, engine=engine, trajectory=True, **kw), rec)
    return out


def assert_same(results: dict[str, tuple[LoopResult, Recorder]]) -> LoopResult:
    (a, ra), (b, rb) = results["python"], results["cpp"]
    assert torch.equal(a.x_t, b.x_t)
    assert (a.steps_run, a.denoiser_calls) == (b.steps_run, b.denoiser_calls)
    assert len(a.trajectory) == len(b.trajectory)
    for ta, tb in zip(a.trajectory, b.trajectory):
        assert torch.equal(ta, tb)
    assert len(ra.calls) == len(rb.calls) == a.denoiser_calls
    for (xa, ta), (xb, tb) in zip(ra.calls, rb.calls):
        assert torch.equal(xa, xb)
        assert torch.equal(ta, tb)
    return a


# --------------------------------------------------------------------------------------------
# engines agree; early exit, cache, fixed positions
# --------------------------------------------------------------------------------------------


@needs_ext
@FAST
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 9),
    vocab=st.integers(2, 7),
    fixed_frac=st.sampled_from([0.0, 0.3, 1.0]),
    steps=st.integers(1, 12),
    check_every=st.integers(1, 4),
    cache=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_greedy_engines_identical_and_exit_exactly(
    batch, length, vocab, fixed_frac, steps, check_every, cache, seed
):
    mask_id = vocab - 1
    x, fixed = start(batch, length, mask_id, fixed_frac, seed)
    den = TableDenoiser(length, vocab, seed)
    loop = StepLoop(
        inputs=torch.linspace(1, 0.01, steps),
        update=greedy_update(mask_id),
        fixed=fixed,
        mask_id=mask_id,
        cache=cache,
    )
    res = assert_same(run_both(den, x, loop, check_every=check_every))
    # one commit per sequence and step: done after max_b k_b steps; the exit test sees it at the
    # next checked step
    need = int((x == mask_id).sum(1).max())
    expected = min(steps, math.ceil(need / check_every) * check_every)
    assert res.steps_run == expected
    if not cache:
        assert res.denoiser_calls == res.steps_run
    assert torch.equal(res.x_t[fixed], x[fixed])
    if steps >= need:
        assert not bool((res.x_t == mask_id).any())


@needs_ext
@FAST
@given(
    batch=st.integers(1, 5),
    length=st.integers(1, 12),
    vocab=st.integers(2, 9),
    fixed_frac=st.sampled_from([0.0, 0.25, 0.6]),
    steps=st.integers(1, 10),
    timed=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_mdlm_engines_identical(batch, length, vocab, fixed_frac, steps, timed, seed):
    mask_id = seed % vocab
    x, fixed = start(batch, length, vocab, fixed_frac, seed)
    x = torch.where(x == vocab, mask_id, x)  # masked = mask_id, clean tokens anywhere in [0, V)
    x = torch.where(fixed & (x == mask_id), (mask_id + 1) % vocab, x)
    sigmas = -torch.log1p(-torch.linspace(1, 0, steps + 1, dtype=torch.float64) * (1 - 1e-3))
    loop = StepLoop(
        inputs=sigmas[:-1].float(),
        update=mdlm_update(sigmas, mask_id, seed),
        fixed=fixed,
        mask_id=mask_id,
    )
    den = TableDenoiser(length, vocab, seed + 1, time_scale=float(timed))
    res = assert_same(run_both(den, x, loop))
    assert torch.equal(res.x_t[fixed], x[fixed])
    if res.steps_run == steps:  # the last step (sigma_s = 0) unmasks everything
        assert not bool(((res.x_t == mask_id) & ~fixed).any())


@needs_ext
@FAST
@given(
    batch=st.integers(1, 6),
    length=st.integers(1, 10),
    steps=st.integers(2, 16),
    seed=st.integers(0, 2**31),
)
def test_cache_same_tokens_fewer_calls(batch, length, steps, seed):
    vocab, mask_id = 6, 5
    x, fixed = start(batch, length, mask_id, 0.2, seed)
    sigmas = -torch.log1p(-torch.linspace(1, 0, steps + 1, dtype=torch.float64) * (1 - 1e-3))
    den = TableDenoiser(length, vocab, seed)
    base = dict(inputs=sigmas[:-1].float(), update=mdlm_update(sigmas, mask_id, seed))
    plain = run_both(den, x, StepLoop(**base, fixed=fixed, mask_id=mask_id))
    cached = run_both(den, x, StepLoop(**base, fixed=fixed, mask_id=mask_id, cache=True))
    ref, res = assert_same(plain), assert_same(cached)
    assert torch.equal(ref.x_t, res.x_t)
    assert ref.steps_run == res.steps_run
    for a, b in zip(ref.trajectory, res.trajectory):
        assert torch.equal(a, b)
    # hand count: step i >= 1 calls the denoiser iff some sequence changed during step i - 1,
    # and only on those sequences
    before = [x, *res.trajectory]  # before[i]: x before step i
    expected_calls, expected_sizes = (1, [batch]) if res.steps_run else (0, [])
    for i in range(1, res.steps_run):
        changed = (before[i] != before[i - 1]).any(1)
        if changed.any():
            expected_calls += 1
            expected_sizes.append(int(changed.sum()))
    assert res.denoiser_calls == expected_calls <= ref.denoiser_calls
    for engine in ENGINES:
        assert [c[0].shape[0] for c in cached[engine][1].calls] == expected_sizes


@needs_ext
@FAST
@given(
    shape=st.sampled_from([(3, 5), (2, 4, 3), (1, 7)]),
    fixed_dims=st.integers(1, 2),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_fixed_positions_never_change(shape, fixed_dims, steps, seed):
    """An update that overwrites everything with NaN / noise: fixed positions keep their exact
    initial value in every trajectory entry (including the final step)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    fixed = torch.rand(shape[: min(fixed_dims, len(shape))], generator=gen) < 0.5

    def scribble(out, x, i):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + i))
        return torch.where(noise > 0, torch.nan, noise)

    loop = StepLoop(
        inputs=torch.linspace(1, 0, steps),
        update=scribble,
        fixed=fixed,
        final=lambda out, x: torch.full_like(x, torch.nan),
        final_input=0.0,
    )
    res = run_both(lambda x, t: x, x, loop)
    for engine in ENGINES:
        r = res[engine][0]
        assert r.steps_run == steps and r.denoiser_calls == steps + 1
        assert len(r.trajectory) == steps + 1
        for i, state in enumerate(r.trajectory):
            assert torch.equal(state[fixed], x[fixed])
            want = scribble(None, x, i)[~fixed] if i < steps else torch.nan
            assert torch.equal(
                state[~fixed].nan_to_num(7.0), (state[~fixed] * 0 + want).nan_to_num(7.0)
            )
    for a, b in zip(res["python"][0].trajectory, res["cpp"][0].trajectory):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@needs_ext
def test_final_step_callback_and_progress():
    vocab, mask_id, length = 5, 4, 6
    x, fixed = start(2, length, mask_id, 0.3, 3)
    final_inputs = []

    def den(x, t):
        if bool((t == 0.5).all()):
            final_inputs.append(t.clone())
        return TableDenoiser(length, vocab, 0)(x, t)

    loop = StepLoop(
        inputs=torch.tensor([3.0, 2.0, 1.0]),
        update=greedy_update(mask_id),
        fixed=fixed,
        final=lambda out, x: x + 0 * out[..., 0].long(),
        final_input=0.5,
    )
    seen = {}
    for engine in ENGINES:
        log = []
        r = run_loop(
            den,
            x,
            loop,
            engine=engine,
            trajectory=True,
            progress=True,
            callback=lambda i, x, log=log: log.append((i, x.clone())),
        )
        assert r.steps_run == 3 and r.denoiser_calls == 4 and len(r.trajectory) == 4
        assert [i for i, _ in log] == [0, 1, 2]
        for (_, state), kept in zip(log, r.trajectory):
            assert torch.equal(state, kept)
        seen[engine] = r.x_t
    assert len(final_inputs) == 2 and all(t.shape == (2,) for t in final_inputs)
    assert torch.equal(seen["python"], seen["cpp"])


@needs_ext
def test_early_exit_before_any_step():
    x = torch.zeros(2, 3, dtype=torch.long)
    loop = StepLoop(inputs=torch.ones(4), update=lambda o, x, i: x + 1, mask_id=7)
    for engine in ENGINES:
        r = run_loop(lambda x, t: x, x, loop, engine=engine, trajectory=True)
        assert (r.steps_run, r.denoiser_calls, r.trajectory) == (0, 0, [])
        assert r.x_t is x


# --------------------------------------------------------------------------------------------
# TorchScript denoisers, threads, errors, fallback
# --------------------------------------------------------------------------------------------


@needs_ext
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_denoiser(kind):
    vocab, mask_id, length = 7, 6, 8
    x, fixed = start(3, length, mask_id, 0.25, 11)
    den = TableDenoiser(length, vocab, 5, time_scale=1.0)
    t0 = torch.ones(3)
    module = torch.jit.script(den) if kind == "script" else torch.jit.trace(den, (x, t0))
    sigmas = -torch.log1p(-torch.linspace(1, 0, 9, dtype=torch.float64) * (1 - 1e-3))
    loop = StepLoop(
        inputs=sigmas[:-1].float(),
        update=mdlm_update(sigmas, mask_id, 4),
        fixed=fixed,
        mask_id=mask_id,
    )
    ref = run_loop(den, x, loop, engine="python", trajectory=True)
    got = run_loop(module, x, loop, engine="cpp", trajectory=True)
    assert torch.equal(ref.x_t, got.x_t)
    assert (ref.steps_run, ref.denoiser_calls) == (got.steps_run, got.denoiser_calls)
    for a, b in zip(ref.trajectory, got.trajectory):
        assert torch.equal(a, b)


@needs_ext
def test_threads_share_the_gil():
    """Python callables called from C++ in several threads at once (GIL taken per call)."""
    vocab, mask_id, length = 6, 5, 7
    x, _ = start(4, length, mask_id, 0.2, 2)
    sigmas = -torch.log1p(-torch.linspace(1, 0, 31, dtype=torch.float64) * (1 - 1e-3))
    den = TableDenoiser(length, vocab, 8)
    loop = StepLoop(
        inputs=sigmas[:-1].float(), update=mdlm_update(sigmas, mask_id, 1), mask_id=mask_id
    )
    expected = run_loop(den, x, loop, engine="python").x_t
    results = [None] * 4

    def work(k):
        results[k] = run_loop(den, x, loop, engine="cpp").x_t

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert all(r is not None and torch.equal(r, expected) for r in results)


@needs_ext
@pytest.mark.parametrize("engine", ENGINES)
def test_errors(engine):
    x = torch.full((2, 3), 4)
    ok = StepLoop(inputs=torch.ones(2), update=lambda o, x, i: x, mask_id=4)
    den = lambda x, t: x  # noqa: E731
    with pytest.raises(TypeError, match="denoiser must return a torch"):
        run_loop(lambda x, t: 1, x, ok, engine=engine)
    with pytest.raises(TypeError, match="update must return a torch"):
        run_loop(den, x, StepLoop(inputs=torch.ones(2), update=lambda o, x, i: None), engine=engine)
    with pytest.raises(ValueError, match="update must return a tensor shaped like x"):
        run_loop(
            den, x, StepLoop(inputs=torch.ones(2), update=lambda o, x, i: x[:1]), engine=engine
        )
    with pytest.raises(ValueError, match="update must return a tensor shaped like x"):
        run_loop(
            den, x, StepLoop(inputs=torch.ones(2), update=lambda o, x, i: x.int()), engine=engine
        )
    with pytest.raises(ValueError, match="batch"):
        run_loop(
            lambda x, t: x[:1],
            x,
            StepLoop(inputs=torch.ones(2), update=lambda o, x, i: x, cache=True),
            engine=engine,
        )

    def boom(o, x, i):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_loop(den, x, StepLoop(inputs=torch.ones(2), update=boom), engine=engine)
    bad = [
        (dict(engine="fast"), ValueError, "engine"),
        (dict(check_every=0), ValueError, "check_every"),
        (dict(cuda_graph=True), ValueError, "cuda_graph"),
    ]
    for kw, error, match in bad:
        with pytest.raises(error, match=match):
            run_loop(den, x, ok, **{"engine": engine, **kw})
    loops = [
        (StepLoop(inputs=torch.ones(2, 1), update=ok.update), ValueError, "inputs"),
        (StepLoop(inputs=torch.ones(2, dtype=torch.long), update=ok.update), ValueError, "inputs"),
        (StepLoop(inputs=torch.ones(2), update=ok.update, final=ok.update), ValueError, "final"),
        (
            StepLoop(inputs=torch.ones(2), update=ok.update, fixed=torch.ones(3, dtype=torch.bool)),
            ValueError,
            "fixed",
        ),
        (
            StepLoop(inputs=torch.ones(2), update=ok.update, fixed=torch.ones(2, 3)),
            TypeError,
            "fixed",
        ),
        (StepLoop(inputs=torch.ones(2), update=ok.update, mask_id=True), TypeError, "mask_id"),
    ]
    for loop, error, match in loops:
        with pytest.raises(error, match=match):
            run_loop(den, x, loop, engine=engine)
    with pytest.raises(ValueError, match="integer tokens"):
        run_loop(den, x.float(), ok, engine=engine)


def test_missing_extension_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setattr(_extension, "_loaded", True)
    monkeypatch.setattr(_extension, "_module", None)
    monkeypatch.setattr(_extension, "_reason", "ImportError: not built")
    monkeypatch.setattr(_extension, "_warned", False)
    x = torch.full((2, 4), 3)
    loop = StepLoop(inputs=torch.ones(5), update=greedy_update(3), mask_id=3)
    den = TableDenoiser(4, 4, 0)
    with pytest.warns(RuntimeWarning, match="not built"):
        r = run_loop(den, x, loop)
    assert r.steps_run == 4 and not bool((r.x_t == 3).any())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_loop(den, x, loop)  # warned once only
        run_loop(den, x, loop, engine="python")
    with pytest.raises(RuntimeError, match="not built"):
        run_loop(den, x, loop, engine="cpp")


# --------------------------------------------------------------------------------------------
# CUDA graphs (GPU only)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("check_every", [1, 3])
def test_cuda_graph_matches_eager(check_every):
    vocab, mask_id, length, steps = 7, 6, 16, 12
    x, fixed = start(3, length, mask_id, 0.25, 5)
    x, fixed = x.cuda(), fixed.cuda()
    den = TableDenoiser(length, vocab, 1, time_scale=1.0).cuda()
    # a graph-safe greedy update (no host sync, step from the device tensor)
    greedy = greedy_update(mask_id)
    loop = StepLoop(
        inputs=torch.linspace(1, 0.1, steps, device="cuda"),
        update=greedy,
        fixed=fixed,
        mask_id=mask_id,
        update_graphed=lambda out, x, step: greedy(out, x, 0),
        final=lambda out, x: torch.where(x == mask_id, out.argmax(-1), x),
        final_input=0.0,
    )
    ref = run_loop(den, x, loop, engine="python", trajectory=True, check_every=check_every)
    got = run_loop(den, x, loop, cuda_graph=True, trajectory=True, check_every=check_every)
    assert torch.equal(ref.x_t, got.x_t)
    assert (ref.steps_run, ref.denoiser_calls) == (got.steps_run, got.denoiser_calls)
    for a, b in zip(ref.trajectory, got.trajectory):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# every sampler of fastdiff.samplers: same seed -> identical runs on both engines
# --------------------------------------------------------------------------------------------

V, M = 7, 3  # mask id in the middle of the vocabulary
D3PM_ABSORB = TransitionSchedule.from_betas([0.3] * 6, "absorbing", V, mask_id=M)
D3PM_UNIFORM = TransitionSchedule.from_betas([0.25] * 6, "uniform", V)
GAUSS = GaussianSchedule.linear(20, 1e-3, 0.3)
SAMPLERS = {
    "sedd_euler": dict(method="sedd_euler"),
    "sedd_analytic": dict(method="sedd_analytic"),
    "sedd_uniform": dict(method="sedd_analytic", graph="uniform", mask_id=None),
    "mdlm": dict(method="mdlm"),
    "mdlm_cache": dict(method="mdlm", cache=True),
    "confidence": dict(method="confidence"),
    "confidence_threshold": dict(method="confidence", threshold=0.3, temperature=1.0),
    "confidence_factor_blocks": dict(method="confidence", factor=1.0, block_length=4),
    "confidence_random_blocks": dict(
        method="confidence", block_length=4, remasking="random", temperature=1.0
    ),
    "d3pm_absorb": dict(method="d3pm", schedule=D3PM_ABSORB),
    "d3pm_uniform": dict(method="d3pm", schedule=D3PM_UNIFORM, mask_id=None),
    "ddpm": dict(method="ddpm", schedule=GAUSS),
    "ddim": dict(method="ddim", schedule=GAUSS, eta=0.5),
}


def gaussian_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x + 0.05 * t[:, None, None] * x.roll(1, dims=1)


def run_sampler(name: str, engine: str, **kw):
    opts = {"mask_id": M, **SAMPLERS[name]}
    method = opts["method"]
    if method in ("ddpm", "ddim"):
        opts.pop("mask_id")
        return sample(gaussian_denoiser, (2, 8, 3), steps=20, seed=5, loop=engine, **opts, **kw)
    if method != "d3pm":
        opts["vocab_size"] = V
    den = TableDenoiser(8, V, 2, time_scale=0.0 if opts.get("cache") else 0.5)
    init = torch.full((2, 8), M if opts["mask_id"] is not None else 0)
    fixed = torch.zeros(2, 8, dtype=torch.bool)
    fixed[0, :2] = fixed[1, 5:] = True
    init[fixed] = torch.tensor([1, 2, 4, 5, 6])
    return sample(den, (2, 8), steps=6, seed=9, init=init, fixed=fixed, loop=engine, **opts, **kw)


@needs_ext
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_same_on_both_engines(name):
    with fastdiff.use_backend("reference"):
        runs = {e: run_sampler(name, e, return_trajectory=True) for e in ENGINES}
    a, b = runs["python"], runs["cpp"]
    assert torch.equal(a.tokens, b.tokens)
    assert (a.steps_run, a.denoiser_calls) == (b.steps_run, b.denoiser_calls) and a.steps_run > 0
    assert len(a.trajectory) == len(b.trajectory)
    for ta, tb in zip(a.trajectory, b.trajectory):
        assert torch.equal(ta, tb)


@needs_ext
def test_sampler_with_kernels_same_on_both_engines():
    """The Triton kernels (interpreter on the CPU) inside the C++ loop: same tokens as the
    Python loop with the same kernels."""
    with fastdiff.use_backend("triton"):
        runs = {e: run_sampler("mdlm", e) for e in ENGINES}
    assert torch.equal(runs["python"], runs["cpp"])
