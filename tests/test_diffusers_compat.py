"""fastdiff's DDPMScheduler / DDIMScheduler as drop-in replacements of diffusers' (0.42.1).

Every comparison runs the same verbatim diffusers sampling loop twice, once with diffusers'
class and once with fastdiff's (only the class differs), on the same start state, the same
toy model and the same noise, and asserts the final states, the last ``pred_original_sample``
and the int64 ``timesteps`` agree to 1e-6 (float32 and float64 states).

Noise: diffusers' DDPM draws ``torch.randn(model_output.shape, generator=g, dtype=...)`` at
every step with ``t > 0``; fastdiff's draws the same way from the same generator in the same
order, so passing one ``torch.Generator`` to both loops gives both the same noise (the tests
also check that the generators end in the same state, i.e. the same number of draws). DDIM is
compared both with a generator and with explicit ``variance_noise=`` tensors.

The toy model is the exact denoiser of ``N(0, 0.8^2)`` data plus a small nonlinear term, as an
``epsilon`` / ``sample`` / ``v_prediction`` output (and a predicted variance for DDPM's
``learned`` / ``learned_range``), so states stay O(1) over the chain.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import fastdiff  # noqa: E402
from fastdiff.schedules import GaussianSchedule  # noqa: E402

SHAPE = (2, 3, 4)
TOL = dict(atol=1e-6, rtol=1e-6)
DTYPES = [torch.float32, torch.float64]


DDPM_KEYS = {  # the arguments that make the tables (the toy model reads alphas_cumprod)
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
}


def toy_model(alphas_cumprod: torch.Tensor, prediction_type: str, variance_type: str = ""):
    """``model(x, t)``: a fixed function of the state and the int timestep ``t``."""
    table = alphas_cumprod.double()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = table[int(t)].to(x.dtype)
        x0 = a.sqrt() * 0.64 / (0.64 * a + 1.0 - a) * x + 0.05 * torch.tanh(x.roll(1, -1))
        eps = (x - a.sqrt() * x0) / (1.0 - a).sqrt()
        out = {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": a.sqrt() * eps - (1.0 - a).sqrt() * x0,
        }[prediction_type]
        if variance_type == "learned":
            return torch.cat([out, 0.02 * (1.0 + 0.5 * torch.tanh(x))], dim=1)
        if variance_type == "learned_range":
            return torch.cat([out, torch.tanh(2.0 * x)], dim=1)
        return out

    return model


def run_loop(cls, config: dict, *, steps, dtype, seed=0, step_kwargs=None, noise="generator"):
    """The verbatim diffusers loop. ``steps``: an int, a list (custom ``timesteps=``) or None
    (no ``set_timesteps``). ``noise``: ``"generator"`` (one generator for the start state and
    every step), ``"list"`` (a list of per-sample generators) or ``"variance_noise"``."""
    scheduler = cls(**config)
    if isinstance(steps, list):
        scheduler.set_timesteps(timesteps=steps)
    elif steps is not None:
        scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=generator, dtype=dtype) * scheduler.init_noise_sigma
    ref = diffusers.DDPMScheduler(**{k: v for k, v in config.items() if k in DDPM_KEYS})
    model = toy_model(
        ref.alphas_cumprod, config.get("prediction_type", "epsilon"), config.get("variance_type")
    )
    noise_gen = torch.Generator().manual_seed(seed + 1)
    per_sample = [torch.Generator().manual_seed(seed + 2 + i) for i in range(SHAPE[0])]
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        model_output = model(model_input, t)
        kwargs = dict(step_kwargs or {})
        if noise == "variance_noise":
            kwargs["variance_noise"] = torch.randn(SHAPE, generator=noise_gen, dtype=dtype)
        else:
            kwargs["generator"] = per_sample if noise == "list" else generator
        out = scheduler.step(model_output, t, sample, **kwargs)
        sample = out.prev_sample
    return scheduler, sample, out.pred_original_sample, generator.get_state()


TRAINED = (torch.linspace(1e-3, 0.25, 40, dtype=torch.float64) ** 1.5).tolist()

DDPM_CASES = {
    "defaults": ({}, 10, {}),
    "scaled_linear": ({"beta_schedule": "scaled_linear", "beta_end": 0.012}, 12, {}),
    "squaredcos": ({"beta_schedule": "squaredcos_cap_v2"}, 10, {}),
    "sigmoid": ({"beta_schedule": "sigmoid"}, 10, {}),
    "trained_betas": ({"num_train_timesteps": 40, "trained_betas": TRAINED}, 8, {}),
    "sample": ({"prediction_type": "sample"}, 10, {}),
    "v_prediction": ({"prediction_type": "v_prediction", "clip_sample": False}, 10, {}),
    "fixed_large": ({"variance_type": "fixed_large"}, 10, {}),
    "fixed_small_log": ({"variance_type": "fixed_small_log"}, 10, {}),
    "learned": ({"variance_type": "learned"}, 10, {}),
    "learned_range": ({"variance_type": "learned_range"}, 10, {}),
    "no_clip": ({"clip_sample": False}, 25, {}),
    "clip_range": ({"clip_sample_range": 0.5}, 10, {}),
    "thresholding": ({"thresholding": True, "sample_max_value": 1.5}, 10, {}),
    "linspace": ({"timestep_spacing": "linspace", "clip_sample": False}, 10, {}),
    "trailing": ({"timestep_spacing": "trailing"}, 7, {}),
    "trailing_fixed_large": (
        {"timestep_spacing": "trailing", "variance_type": "fixed_large"},
        7,
        {},
    ),
    "steps_offset": ({"steps_offset": 1, "variance_type": "fixed_large"}, 10, {}),
    "zero_snr": (
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
        10,
        {},
    ),
    "custom_timesteps": ({}, [950, 700, 699, 420, 100, 3], {}),
    "full_chain": ({"num_train_timesteps": 30, "clip_sample": False}, 30, {}),
    "no_set_timesteps": ({"num_train_timesteps": 20}, None, {}),
}

DDIM_CASES = {
    "defaults": ({}, 10, {}, "generator"),
    "eta1_variance_noise": ({}, 10, {"eta": 1.0}, "variance_noise"),
    "eta05_generator": ({"clip_sample": False}, 10, {"eta": 0.5}, "generator"),
    "eta1_generator_list": ({}, 10, {"eta": 1.0}, "list"),
    "alpha_not_one": ({"set_alpha_to_one": False}, 10, {"eta": 1.0}, "variance_noise"),
    "steps_offset": ({"steps_offset": 1, "set_alpha_to_one": False}, 10, {}, "generator"),
    "linspace": ({"timestep_spacing": "linspace"}, 10, {"eta": 0.3}, "variance_noise"),
    "trailing": ({"timestep_spacing": "trailing", "clip_sample": False}, 7, {}, "generator"),
    "sample": ({"prediction_type": "sample"}, 10, {}, "generator"),
    "v_prediction": ({"prediction_type": "v_prediction"}, 10, {}, "generator"),
    "no_clip": ({"clip_sample": False}, 25, {}, "generator"),
    "clipped_model_output": ({}, 10, {"use_clipped_model_output": True}, "generator"),
    "clip_range": ({"clip_sample_range": 0.5}, 10, {"eta": 1.0}, "variance_noise"),
    "thresholding": ({"thresholding": True}, 10, {}, "generator"),
    "scaled_linear": ({"beta_schedule": "scaled_linear", "beta_end": 0.012}, 12, {}, "generator"),
    "squaredcos": ({"beta_schedule": "squaredcos_cap_v2"}, 10, {}, "generator"),
    "trained_betas": (
        {"num_train_timesteps": 40, "trained_betas": TRAINED, "set_alpha_to_one": False},
        8,
        {},
        "generator",
    ),
    "zero_snr": (
        {
            "rescale_betas_zero_snr": True,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
        },
        10,
        {"eta": 1.0},
        "variance_noise",
    ),
    "full_chain": ({"num_train_timesteps": 30, "clip_sample": False}, 30, {}, "generator"),
}


def assert_same_run(ref, got):
    ref_sched, ref_x, ref_x0, ref_state = ref
    sched, x, x0, state = got
    assert sched.timesteps.dtype == torch.int64
    assert torch.equal(sched.timesteps, ref_sched.timesteps)
    assert x.dtype == ref_x.dtype
    torch.testing.assert_close(x, ref_x, **TOL)
    torch.testing.assert_close(x0, ref_x0, **TOL)
    assert torch.equal(state, ref_state)  # the same number of draws from the generator


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(DDPM_CASES))
def test_ddpm_loop_matches_diffusers(case, dtype):
    config, steps, step_kwargs = DDPM_CASES[case]
    kw = dict(steps=steps, dtype=dtype, seed=len(case), step_kwargs=step_kwargs)
    ref = run_loop(diffusers.DDPMScheduler, config, **kw)
    assert bool(torch.isfinite(ref[1]).all())
    assert_same_run(ref, run_loop(fastdiff.DDPMScheduler, config, **kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(DDIM_CASES))
def test_ddim_loop_matches_diffusers(case, dtype):
    config, steps, step_kwargs, noise = DDIM_CASES[case]
    kw = dict(steps=steps, dtype=dtype, seed=len(case), step_kwargs=step_kwargs, noise=noise)
    ref = run_loop(diffusers.DDIMScheduler, config, **kw)
    assert bool(torch.isfinite(ref[1]).all())
    assert_same_run(ref, run_loop(fastdiff.DDIMScheduler, config, **kw))


def test_ddpm_fixed_large_log_is_fixed_large():
    """diffusers 0.42.1 takes the square root of the log variance for ``fixed_large_log``
    (NaN at every ``t > 0``); fastdiff uses it as a log variance, ``std = exp(log(beta) / 2)``,
    which is ``fixed_large``."""
    kw = dict(steps=10, dtype=torch.float64, seed=3)
    ref = run_loop(diffusers.DDPMScheduler, {"variance_type": "fixed_large"}, **kw)
    got = run_loop(fastdiff.DDPMScheduler, {"variance_type": "fixed_large_log"}, **kw)
    torch.testing.assert_close(got[1], ref[1], atol=1e-12, rtol=1e-12)


CONFIGS = [
    ("DDPMScheduler", {}),
    ("DDPMScheduler", {"beta_schedule": "scaled_linear", "num_train_timesteps": 500}),
    ("DDPMScheduler", {"beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_large"}),
    ("DDPMScheduler", {"trained_betas": TRAINED, "num_train_timesteps": 40}),
    ("DDPMScheduler", {"rescale_betas_zero_snr": True}),
    ("DDIMScheduler", {}),
    ("DDIMScheduler", {"set_alpha_to_one": False, "steps_offset": 1}),
    ("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True}),
]


@pytest.mark.parametrize(("name", "config"), CONFIGS)
def test_tables_attributes_and_config(name, config):
    ref = getattr(diffusers, name)(**config)
    got = getattr(fastdiff, name)(**config)
    for attr in ("betas", "alphas", "alphas_cumprod", "timesteps"):
        want, have = getattr(ref, attr), getattr(got, attr)
        assert have.dtype == want.dtype and torch.equal(have, want), attr
    if name == "DDIMScheduler":
        assert torch.equal(got.final_alpha_cumprod, ref.final_alpha_cumprod)
    assert got.init_noise_sigma == ref.init_noise_sigma == 1.0
    assert got.order == ref.order == 1
    assert len(got) == len(ref)
    assert got.num_inference_steps is None
    for key, value in ref.config.items():
        if not key.startswith("_"):
            assert getattr(got.config, key) == value, key
            assert got.config[key] == value, key
    with pytest.raises(TypeError, match="frozen"):  # as diffusers' FrozenDict
        got.config.num_train_timesteps = 3


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize(("train", "steps", "offset"), [(1000, 50, 0), (1000, 7, 1), (10, 10, 0)])
def test_set_timesteps_matches(name, spacing, train, steps, offset):
    config = dict(num_train_timesteps=train, timestep_spacing=spacing, steps_offset=offset)
    ref, got = getattr(diffusers, name)(**config), getattr(fastdiff, name)(**config)
    ref.set_timesteps(steps)
    got.set_timesteps(steps, device="cpu")
    assert got.timesteps.dtype == torch.int64 and torch.equal(got.timesteps, ref.timesteps)
    assert got.num_inference_steps == ref.num_inference_steps == steps


def test_set_timesteps_errors():
    got = fastdiff.DDPMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_inference_steps"):
        got.set_timesteps(101)
    with pytest.raises(ValueError, match="timesteps"):
        got.set_timesteps(10, timesteps=[5, 1])
    with pytest.raises(ValueError, match="descending"):
        got.set_timesteps(timesteps=[50, 50, 3])
    with pytest.raises(ValueError, match="num_train_timesteps"):
        got.set_timesteps(timesteps=[100, 3])
    ddim = fastdiff.DDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim.step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))
    ddim.set_timesteps(4)
    with pytest.raises(ValueError, match="variance_noise"):
        ddim.step(
            torch.zeros(SHAPE),
            ddim.timesteps[0],
            torch.zeros(SHAPE),
            eta=1.0,
            generator=torch.Generator(),
            variance_noise=torch.zeros(SHAPE),
        )


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_return_dict_false_and_scale_model_input(name):
    ref, got = getattr(diffusers, name)(), getattr(fastdiff, name)()
    for sched in (ref, got):
        sched.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got.scale_model_input(x, got.timesteps[0]), x)
    assert torch.equal(got.scale_model_input(x), x)
    model_output = toy_model(ref.alphas_cumprod, "epsilon")(x, ref.timesteps[1])
    want, have = (
        s.step(
            model_output,
            s.timesteps[1],
            x,
            generator=torch.Generator().manual_seed(2),
            return_dict=False,
        )
        for s in (ref, got)
    )
    assert isinstance(have, tuple) and len(have) == 2
    for a, b in zip(want, have):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_add_noise_and_velocity(name, dtype):
    config = {"beta_schedule": "scaled_linear", "beta_end": 0.012}
    ref, got = getattr(diffusers, name)(**config), getattr(fastdiff, name)(**config)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=dtype)
    noise = torch.randn(4, 3, 2, 2, generator=g, dtype=dtype)
    for timesteps in (torch.tensor([0, 17, 500, 999]), torch.tensor(321), torch.tensor([999])):
        want = ref.add_noise(x0, noise, timesteps)
        have = got.add_noise(x0, noise, timesteps)
        assert have.dtype == dtype
        torch.testing.assert_close(have, want, **TOL)
        torch.testing.assert_close(
            got.get_velocity(x0, noise, timesteps), ref.get_velocity(x0, noise, timesteps), **TOL
        )


def test_from_config_of_a_diffusers_scheduler():
    """``from_config`` takes a diffusers config (another scheduler's too: keys that are not
    arguments are ignored, as in diffusers) and keyword overrides; diffusers takes fastdiff's."""
    source = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_end=0.012,
        prediction_type="v_prediction",
        variance_type="fixed_large",
        steps_offset=1,
    )
    got = fastdiff.DDPMScheduler.from_config(source.config)
    assert got.config.prediction_type == "v_prediction" and got.config.steps_offset == 1
    kw = dict(steps=10, dtype=torch.float32, seed=7)
    config = dict(source.config)
    assert_same_run(
        run_loop(diffusers.DDPMScheduler, config, **kw),
        run_loop(lambda **c: fastdiff.DDPMScheduler.from_config(c), config, **kw),
    )
    ddim_kw = dict(timestep_spacing="trailing", set_alpha_to_one=False)
    ref = diffusers.DDIMScheduler.from_config(source.config, **ddim_kw)
    got = fastdiff.DDIMScheduler.from_config(source.config, **ddim_kw)
    assert got.config.timestep_spacing == "trailing" and not got.config.set_alpha_to_one
    shared = set(ref.config) & set(got.config)  # diffusers also keeps the DDPM-only keys
    assert len(shared) == 15
    for key in shared:
        assert got.config[key] == ref.config[key], key
    back = diffusers.DDIMScheduler.from_config(got.config)
    assert back.config.prediction_type == "v_prediction"
    assert torch.equal(back.alphas_cumprod, got.alphas_cumprod)


def test_fastdiff_convention_is_diffusers_with_its_options():
    """``convention="fastdiff"`` = float64 tables, ``linspace`` spacing, no clipping, DDPM
    ``fixed_large``, DDIM stepping to the next planned timestep; the same run as diffusers
    configured that way (diffusers' float32 tables: agreement to 1e-5)."""
    ddpm = fastdiff.DDPMScheduler(convention="fastdiff")
    assert ddpm.alphas_cumprod.dtype == torch.float64
    assert (ddpm.config.timestep_spacing, ddpm.config.clip_sample) == ("linspace", False)
    assert ddpm.config.variance_type == "fixed_large"
    assert fastdiff.DDIMScheduler(convention="fastdiff").config.step_target == "next"
    same = dict(timestep_spacing="linspace", clip_sample=False, variance_type="fixed_large")
    kw = dict(steps=10, dtype=torch.float64, seed=1)
    ref = run_loop(diffusers.DDPMScheduler, same, **kw)
    got = run_loop(fastdiff.DDPMScheduler, {"convention": "fastdiff"}, **kw)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    # DDIM with leading spacing: diffusers' stride target is the next planned timestep
    kw["step_kwargs"], kw["noise"] = {"eta": 1.0}, "variance_noise"
    ref = run_loop(diffusers.DDIMScheduler, dict(clip_sample=False), **kw)
    lead = {"convention": "fastdiff", "timestep_spacing": "leading"}
    got = run_loop(fastdiff.DDIMScheduler, lead, **kw)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)


def test_schedule_argument_gives_float64_tables():
    schedule = GaussianSchedule.cosine(50)
    got = fastdiff.DDIMScheduler(schedule=schedule)
    assert torch.equal(got.alphas_cumprod, schedule.alphas_cumprod)
    assert got.config.num_train_timesteps == 50
    with pytest.raises(ValueError, match="trained_betas"):
        fastdiff.DDIMScheduler(schedule=schedule, trained_betas=[0.1] * 50)


FUSED = [
    ("DDPMScheduler", {}, {}, "generator"),
    ("DDPMScheduler", {"clip_sample": False}, {}, "generator"),
    ("DDPMScheduler", {"prediction_type": "sample", "clip_sample": False}, {}, "generator"),
    ("DDPMScheduler", {"prediction_type": "v_prediction"}, {}, "generator"),
    ("DDPMScheduler", {"thresholding": True, "variance_type": "fixed_large"}, {}, "generator"),
    ("DDIMScheduler", {"clip_sample": False}, {"eta": 1.0}, "variance_noise"),
    ("DDIMScheduler", {"prediction_type": "v_prediction", "clip_sample": False}, {}, "generator"),
    ("DDIMScheduler", {}, {"eta": 0.5, "use_clipped_model_output": True}, "generator"),
    ("DDIMScheduler", {"prediction_type": "sample", "clip_sample": False}, {}, "generator"),
]


@pytest.mark.parametrize(("name", "config", "step_kwargs", "noise"), FUSED)
def test_fused_op_path_equals_torch_path(monkeypatch, name, config, step_kwargs, noise):
    """With float64 tables the step is one fused op call (clipping, thresholding and
    v-prediction through the predicted x0); it computes diffusers' step as the torch path
    does."""
    cls = getattr(fastdiff, name)
    config = dict(config, schedule=GaussianSchedule.linear(200, 1e-4, 0.05))
    kw = dict(steps=12, dtype=torch.float64, seed=11, step_kwargs=step_kwargs, noise=noise)
    resolved = []
    resolve = fastdiff.samplers.gaussian.backend.resolve
    monkeypatch.setattr(
        fastdiff.samplers.gaussian.backend,
        "resolve",
        lambda op, *a: resolved.append(op) or resolve(op, *a),
    )
    fused = run_loop(cls, config, **kw)
    assert resolved and set(resolved) == {"ddpm_step" if name == "DDPMScheduler" else "ddim_step"}
    monkeypatch.setattr(cls, "_values_allow_op", lambda self, cols: False)
    resolved.clear()
    plain = run_loop(cls, config, **kw)
    assert not resolved
    torch.testing.assert_close(fused[1], plain[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(fused[2], plain[2], atol=1e-12, rtol=1e-12)


def test_trailing_spacing_has_exactly_n_timesteps():
    """For (1000, 61) diffusers' float arange yields 62 trailing timesteps, the last -1;
    fastdiff keeps the first 61."""
    ref, got = (m.DDIMScheduler(timestep_spacing="trailing") for m in (diffusers, fastdiff))
    ref.set_timesteps(61)
    got.set_timesteps(61)
    assert len(ref.timesteps) == 62 and int(ref.timesteps[-1]) == -1
    assert torch.equal(got.timesteps, ref.timesteps[:61]) and int(got.timesteps[-1]) >= 0
