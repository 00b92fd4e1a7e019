"""LLaDA parity of confidence unmasking: :func:`fastdiff.samplers.generate.generate` and
``sample(method="confidence")`` against an independent implementation of LLaDA's published
sampler (Nie et al. 2025, "Large Language Diffusion Models", semi-autoregressive low-confidence
remasking), written below from its description.

The model is a small deterministic toy whose logits at a position depend on the whole sequence
(a fixed random embedding, a random mixing of all positions, a linear head), so every commit
changes later proposals and any difference in the block / step / quota schedule shows up in the
tokens. It gives the mask token a logit of ``-1e4``: no probability in float32 / float64, as a
trained mask predictor (fastdiff's probabilities leave the mask token out, LLaDA's include it).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fastdiff import backend
from fastdiff.samplers import ConfidenceScheduler, build_loop, prefix_mask, sample
from fastdiff.samplers.generate import generate

V, MASK, EOS, EOT = 24, 5, 3, 4
NEG = -math.inf


class ToyLM:
    """``logits [B, L, V] = head(tanh(h + mix @ h))``, ``h = emb[x] + pos``; rows independent.

    ``end_bias`` raises the EOS / EOT logits from position 12 on (for the end-of-sequence
    options). Counts its calls and the rows of each call."""

    def __init__(self, seed: int = 0, *, end_bias: float = 0.0, max_len: int = 48) -> None:
        g = torch.Generator().manual_seed(seed)
        hidden = 16
        self.emb = torch.randn(V, hidden, generator=g)
        self.pos = torch.randn(max_len, hidden, generator=g)
        self.mix = torch.randn(max_len, max_len, generator=g) / math.sqrt(max_len)
        self.head = torch.randn(hidden, V, generator=g) * 1.5
        self.bias = torch.zeros(max_len, V)
        self.bias[12:, EOS] = self.bias[12:, EOT] = end_bias
        self.rows: list[int] = []
        self.masks: list[torch.Tensor | None] = []

    @property
    def calls(self) -> int:
        return len(self.rows)

    def __call__(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        self.rows.append(x.shape[0])
        self.masks.append(attention_mask)
        n = x.shape[1]
        h = self.emb[x] + self.pos[:n]
        h = torch.tanh(h + torch.einsum("ij,bjh->bih", self.mix[:n, :n], h))
        out = h @ self.head + self.bias[:n]
        out[..., MASK] = -1e4
        return out


def llada(
    model,
    prompt: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    generator: torch.Generator | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    trace: list | None = None,
) -> torch.Tensor:
    """LLaDA's sampler at temperature 0, from the paper's description.

    ``x = [prompt, gen_length masks]``; the generated part is cut into blocks of
    ``block_length`` starting right after the prompt, each given ``steps / num_blocks`` steps;
    a block with ``n`` masked positions commits ``n // s`` tokens at each of its ``s`` steps
    and one more at each of the first ``n % s``. A step asks the model for logits (with
    guidance ``u + (w + 1)(c - u)``, ``u`` for the prompt masked), proposes the argmax at every
    masked position, scores it (its probability, or a uniform draw for ``"random"``), and
    commits the best-scored masked positions up to the end of the current block. ``trace``
    receives, per step, the committed positions of each row."""
    batch, p = prompt.shape
    x = torch.full((batch, p + gen_length), MASK, dtype=torch.long)
    x[:, :p] = prompt
    in_prompt = x != MASK
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        end = p + (b + 1) * block_length
        todo = (x[:, end - block_length : end] == MASK).sum(1).tolist()
        for j in range(per_block):
            if cfg_scale > 0:
                both = model(torch.cat([x, x.masked_fill(in_prompt, MASK)]))
                cond, uncond = both[:batch], both[batch:]
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x)
            if logits_eos_inf:
                logits[..., EOS] = NEG
            prob = torch.softmax(logits.double(), dim=-1)
            x0 = prob.argmax(-1)
            if remasking == "random":
                score = torch.rand(x.shape, generator=generator, dtype=torch.float64)
            else:
                score = prob.gather(-1, x0[..., None])[..., 0]
            committed = []
            for r in range(batch):
                k = todo[r] // per_block + (j < todo[r] % per_block)
                # EOS / EOT proposals last (leftmost first among them), else the best score
                keys = {
                    i: (1, 0.0, i)
                    if confidence_eos_eot_inf and int(x0[r, i]) in (EOS, EOT)
                    else (0, -float(score[r, i]), i)
                    for i in range(end)
                    if x[r, i] == MASK
                }
                chosen = sorted(keys, key=keys.get)[:k]
                x[r, chosen] = x0[r, chosen]
                committed.append(sorted(chosen))
            if trace is not None:
                trace.append(committed)
    return x


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V - 1, (batch, length), generator=g)
    return tokens + (tokens >= MASK).long()  # never the mask token


def trajectory_commits(start: torch.Tensor, trajectory: list[torch.Tensor]) -> list[list[list]]:
    """Per step, the positions each row committed (from a sampler trajectory)."""
    out, before = [], start
    for after in trajectory:
        changed = (before == MASK) & (after != MASK)
        out.append([row.nonzero().flatten().tolist() for row in changed])
        before = after
    return out


# (prompt length, block_length, gen_length, steps): prompts that are and are not multiples of
# the block length; one token per step, several per step, and uneven quotas (8 over 3 steps)
SETTINGS = [
    (p, block, gen, steps)
    for p in (3, 4, 5, 8)
    for block, gen, steps in ((4, 16, 16), (4, 16, 8), (4, 16, 4), (8, 32, 32), (8, 32, 12))
] + [(3, 8, 16, 6), (5, 16, 16, 5), (0, 4, 8, 4)]


@pytest.mark.parametrize("p, block, gen, steps", SETTINGS)
def test_generate_greedy_matches_llada(p, block, gen, steps):
    prompt = prompts(2, p)
    model = ToyLM()
    expected = llada(model, prompt, steps=steps, gen_length=gen, block_length=block)
    assert model.calls == steps
    model = ToyLM()
    out = generate(
        model,
        prompt,
        steps=steps,
        gen_length=gen,
        block_length=block,
        mask_id=MASK,
        vocab_size=V,
    )
    assert out.shape == (2, p + gen) and out.dtype == torch.int64
    assert torch.equal(out, expected)
    assert model.calls == steps and set(model.rows) == {2}  # LLaDA's calls, no extra step


@pytest.mark.parametrize("loop", ["python", "auto"])
@pytest.mark.parametrize("p, block, gen, steps", [(3, 4, 16, 8), (5, 8, 32, 12), (8, 4, 16, 16)])
def test_sample_confidence_greedy_matches_llada(p, block, gen, steps, loop):
    """``sample(method="confidence", block_length=...)`` with the prompt as its fixed prefix."""
    prompt = prompts(3, p, seed=2)
    model = ToyLM(3)
    expected = llada(model, prompt, steps=steps, gen_length=gen, block_length=block)
    init = torch.cat([prompt, torch.full((3, gen), MASK)], dim=1)
    model = ToyLM(3)
    res = sample(
        lambda x, sigma: model(x),
        init.shape,
        method="confidence",
        steps=steps,
        vocab_size=V,
        mask_id=MASK,
        init=init,
        block_length=block,
        loop=loop,
        return_trajectory=True,
    )
    assert torch.equal(res.tokens, expected)
    assert res.denoiser_calls == model.calls == steps


def test_scheduler_steps_match_llada_commit_by_commit():
    """The scheduler API step by step: the same commits at every step as LLaDA."""
    p, block, gen, steps = 5, 4, 16, 8
    prompt = prompts(2, p, seed=4)
    model = ToyLM(4)
    trace: list = []
    expected = llada(model, prompt, steps=steps, gen_length=gen, block_length=block, trace=trace)
    sched = ConfidenceScheduler(V, mask_id=MASK, block_length=block)
    sched.set_timesteps(steps)
    x = torch.cat([prompt, torch.full((2, gen), MASK)], dim=1)
    fixed = prefix_mask(x.shape, p)
    states = []
    for t in sched.timesteps:
        x = sched.step(model(x), t, x, seed=0, fixed=fixed).prev_sample
        states.append(x)
    assert torch.equal(x, expected)
    start = torch.cat([prompt, torch.full((2, gen), MASK)], dim=1)
    assert trajectory_commits(start, states) == trace


def test_rows_count_blocks_from_their_own_prompt():
    """Per row: blocks start at each row's first generated (non-fixed) position; row 0 has 4
    blocks (prompt 3, 16 generated), row 1 has 3 (prompt 7, 12 generated): steps 12 gives 3
    and 4 steps per block. The toy model treats rows independently."""
    model = ToyLM(5)
    rows = [prompts(1, 3, seed=6), prompts(1, 7, seed=7)]
    expected = [
        llada(model, rows[0], steps=12, gen_length=16, block_length=4),
        llada(model, rows[1], steps=12, gen_length=12, block_length=4),
    ]
    init = torch.full((2, 19), MASK)
    init[0, :3], init[1, :7] = rows[0][0], rows[1][0]
    out = sample(
        lambda x, sigma: model(x),
        init.shape,
        method="confidence",
        steps=12,
        vocab_size=V,
        mask_id=MASK,
        init=init,
        block_length=4,
        loop="python",
    )
    assert torch.equal(out, torch.cat(expected))
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        sample(
            lambda x, sigma: model(x),
            init.shape,
            method="confidence",
            steps=8,  # 8 is a multiple of row 0's 4 blocks, not of row 1's 3
            vocab_size=V,
            mask_id=MASK,
            init=init,
            block_length=4,
        )


@pytest.mark.parametrize("cfg_scale", [0.5, 2.0])
@pytest.mark.parametrize("p, block, gen, steps", [(3, 4, 16, 8), (8, 8, 16, 16)])
def test_cfg_matches_llada(p, block, gen, steps, cfg_scale):
    """LLaDA's guidance ``u + (w + 1)(c - u)``: one model call per step on the doubled batch
    (conditional rows, then the rows with the prompt masked), as LLaDA."""
    prompt = prompts(2, p, seed=8)
    model = ToyLM(8)
    expected = llada(
        model, prompt, steps=steps, gen_length=gen, block_length=block, cfg_scale=cfg_scale
    )
    plain = llada(ToyLM(8), prompt, steps=steps, gen_length=gen, block_length=block)
    assert not torch.equal(expected, plain)  # the guidance matters here
    model = ToyLM(8)
    out = generate(
        model,
        prompt,
        steps=steps,
        gen_length=gen,
        block_length=block,
        cfg_scale=cfg_scale,
        mask_id=MASK,
        vocab_size=V,
    )
    assert torch.equal(out, expected)
    assert model.calls == steps and set(model.rows) == {4}


def test_hf_style_model_and_attention_mask():
    """A model returning ``.logits`` with ``config.vocab_size``; the attention mask is extended
    with ones over the generated part (and doubled with the batch under guidance)."""
    toy = ToyLM(9)

    class HFModel:
        config = SimpleNamespace(vocab_size=V)

        def __call__(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=toy(input_ids, attention_mask=attention_mask))

    prompt = prompts(2, 5, seed=9)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = llada(ToyLM(9), prompt, steps=8, gen_length=8, block_length=4)
    out = generate(HFModel(), prompt, mask, steps=8, gen_length=8, block_length=4, mask_id=MASK)
    assert torch.equal(out, expected)
    full = torch.cat([mask, torch.ones(2, 8, dtype=mask.dtype)], dim=1)
    assert all(torch.equal(m, full) for m in toy.masks)
    toy.masks.clear()
    generate(
        HFModel(), prompt, mask, steps=4, gen_length=8, block_length=4, cfg_scale=1.0, mask_id=MASK
    )
    assert all(torch.equal(m, torch.cat([full, full])) for m in toy.masks)


def test_random_remasking_commits_llada_counts_inside_the_block():
    """remasking="random": at every step the same number of commits as LLaDA's schedule, all
    inside the current block, each the model's argmax there; the order depends on the seed."""
    p, block, gen, steps = 3, 4, 16, 8
    prompt = prompts(2, p, seed=10)
    trace: list = []
    llada(
        ToyLM(10),
        prompt,
        steps=steps,
        gen_length=gen,
        block_length=block,
        remasking="random",
        generator=torch.Generator().manual_seed(0),
        trace=trace,
    )
    init = torch.cat([prompt, torch.full((2, gen), MASK)], dim=1)
    model = ToyLM(10)
    finals = set()
    for seed in range(6):
        res = sample(
            lambda x, sigma: model(x),
            init.shape,
            method="confidence",
            steps=steps,
            vocab_size=V,
            mask_id=MASK,
            init=init,
            block_length=block,
            remasking="random",
            seed=seed,
            loop="python",
            return_trajectory=True,
        )
        commits = trajectory_commits(init, res.trajectory)
        assert [[len(c) for c in step] for step in commits] == [
            [len(c) for c in step] for step in trace
        ]
        before = init
        for i, (step, after) in enumerate(zip(commits, res.trajectory)):
            lo = p + (i // (steps // (gen // block))) * block
            assert all(lo <= j < lo + block for row in step for j in row)
            proposal = model(before).argmax(-1)
            changed = after != before
            assert torch.equal(after[changed], proposal[changed])
            before = after
        assert not bool((res.tokens == MASK).any())
        finals.add(tuple(res.tokens.flatten().tolist()))
    assert len(finals) > 1
    again = generate(
        ToyLM(10),
        prompt,
        steps=steps,
        gen_length=gen,
        block_length=block,
        mask_id=MASK,
        vocab_size=V,
        remasking="random",
        seed=3,
    )
    assert torch.equal(
        again,
        generate(
            ToyLM(10),
            prompt,
            steps=steps,
            gen_length=gen,
            block_length=block,
            mask_id=MASK,
            vocab_size=V,
            remasking="random",
            seed=3,
        ),
    )


def test_random_remasking_picks_uniformly_within_the_block():
    """First step of the first block (8 masked, 2 commits): over 200 seeds every position of
    the block is committed ``Binomial(200, 1/4)`` times (within 5 standard deviations), where
    low_confidence always commits the same two."""
    p, block, steps = 3, 8, 8
    prompt = prompts(1, p, seed=11)
    model = ToyLM(11)
    x = torch.cat([prompt, torch.full((1, 2 * block), MASK)], dim=1)
    fixed = prefix_mask(x.shape, p)
    out = model(x)
    counts = torch.zeros(x.shape[1])
    n = 200
    sched = ConfidenceScheduler(V, mask_id=MASK, block_length=block, remasking="random")
    sched.set_timesteps(steps)
    t0 = sched.timesteps[0]
    for seed in range(n):
        nxt = sched.step(out, t0, x, seed=seed, fixed=fixed).prev_sample
        counts += (nxt != x)[0]
    assert counts.sum() == 2 * n
    inside = counts[p : p + block]
    assert counts[p + block :].sum() == 0
    mean, sd = n / 4, math.sqrt(n * 0.25 * 0.75)
    assert bool(((inside - mean).abs() < 5 * sd).all()), inside


def test_logits_eos_inf_matches_llada():
    prompt = prompts(2, 3, seed=12)
    kw = dict(steps=8, gen_length=16, block_length=4)
    plain = llada(ToyLM(12, end_bias=4.0), prompt, **kw)
    assert bool((plain[:, 3:] == EOS).any())  # EOS would be generated
    expected = llada(ToyLM(12, end_bias=4.0), prompt, logits_eos_inf=True, **kw)
    out = generate(
        ToyLM(12, end_bias=4.0),
        prompt,
        mask_id=MASK,
        vocab_size=V,
        logits_eos_inf=True,
        eos_id=EOS,
        **kw,
    )
    assert torch.equal(out, expected)
    assert not bool((out[:, 3:] == EOS).any())


def test_confidence_eos_eot_inf_matches_llada():
    """EOS / EOT proposals commit after every other proposal of the step (when the quota
    reaches them), leftmost first among them."""
    prompt = prompts(2, 5, seed=13)
    kw = dict(steps=16, gen_length=16, block_length=8)
    plain_trace: list = []
    llada(ToyLM(13, end_bias=4.0), prompt, trace=plain_trace, **kw)
    trace: list = []
    expected = llada(
        ToyLM(13, end_bias=4.0), prompt, confidence_eos_eot_inf=True, trace=trace, **kw
    )
    assert trace != plain_trace  # the option changes the commit order here
    assert bool(((expected[:, 5:] == EOS) | (expected[:, 5:] == EOT)).any())
    out = generate(
        ToyLM(13, end_bias=4.0),
        prompt,
        mask_id=MASK,
        vocab_size=V,
        confidence_eos_eot_inf=True,
        eos_id=EOS,
        eot_id=EOT,
        **kw,
    )
    assert torch.equal(out, expected)


def test_confidence_eos_eot_inf_ranks_end_proposals_last_leftmost_first():
    """Block {2..5} with 2 steps (2 commits now). Proposals: EOS at 2 (p ~ 0.87), a token at 3
    (p ~ 0.25), EOT at 4 (p ~ 0.95), EOS at 5 (p ~ 0.71). Without the option the two most
    confident (2, 4) commit; with it the plain proposal (3) first, then the leftmost end
    proposal (2), not the most confident one (4)."""
    logits = torch.full((1, 6, V), -1.0)
    for j, (token, value) in {2: (EOS, 4.0), 3: (7, 1.0), 4: (EOT, 5.0), 5: (EOS, 3.0)}.items():
        logits[0, j, token] = value
    x = torch.tensor([[1, 2, MASK, MASK, MASK, MASK]])
    fixed = prefix_mask(x.shape, 2)

    def committed(**options):
        sched = ConfidenceScheduler(V, mask_id=MASK, block_length=4, **options)
        sched.set_timesteps(2)
        nxt = sched.step(logits, sched.timesteps[0], x, seed=0, fixed=fixed).prev_sample
        return (nxt != x)[0].nonzero().flatten().tolist()

    assert committed() == [2, 4]
    assert committed(confidence_eos_eot_inf=True, eos_id=EOS, eot_id=EOT) == [2, 3]
    assert committed(confidence_eos_eot_inf=True, eot_id=EOT) == [2, 5]  # EOT last only
    assert committed(confidence_eos_eot_inf=True, eos_id=EOS) == [3, 4]  # EOS last only


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(remasking="random", logits_eos_inf=True, eos_id=EOS),
        dict(confidence_eos_eot_inf=True, eos_id=EOS, eot_id=EOT, temperature=1.0),
    ],
)
def test_graphed_update_equals_update(options):
    """The CUDA-graph form of the step (step index and seed as tensors) computes the same step,
    with rows of different prompt lengths and blocks."""
    init = torch.full((2, 19), MASK)
    init[0, :3], init[1, :7] = prompts(1, 3)[0], prompts(1, 7)[0]
    model = ToyLM(14, end_bias=3.0)
    x, loop = build_loop(
        "confidence",
        init.shape,
        steps=12,
        vocab_size=V,
        mask_id=MASK,
        init=init,
        seed=5,
        block_length=4,
        **options,
    )
    for i in range(12):
        out = model(x)
        a = loop.update(out, x, i)
        assert torch.equal(a, loop.update_graphed(out, x, torch.tensor(i))), i
        x = a
    assert not bool((x == MASK).any())


def test_generate_on_kernels_matches_llada():
    """The Triton proposal kernel (float32 confidences; the interpreter without a GPU)."""
    prompt = prompts(2, 3, seed=15)
    expected = llada(ToyLM(15), prompt, steps=4, gen_length=8, block_length=4)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with backend.use_backend("triton"):
        out = generate(
            lambda x: ToyLM(15)(x.cpu()).to(x.device),
            prompt.to(device),
            steps=4,
            gen_length=8,
            block_length=4,
            mask_id=MASK,
            vocab_size=V,
        )
    assert torch.equal(out.cpu(), expected)


def test_llada_step_counts_accepted_for_any_prompt_length():
    """Prompt 3, block_length 4, 16 generated (19 positions): LLaDA's 4 blocks, so steps 4, 8,
    16 are accepted; 6 is not a multiple of 4."""
    init = torch.cat([prompts(1, 3), torch.full((1, 16), MASK)], dim=1)
    model = ToyLM()
    for steps in (4, 8, 16):
        res = sample(
            lambda x, sigma: model(x),
            init.shape,
            method="confidence",
            steps=steps,
            vocab_size=V,
            mask_id=MASK,
            init=init,
            block_length=4,
            return_trajectory=True,
        )
        assert res.denoiser_calls == steps
    with pytest.raises(ValueError, match=r"steps \(6\) must be a multiple of the number of blocks"):
        sample(
            lambda x, sigma: model(x),
            init.shape,
            method="confidence",
            steps=6,
            vocab_size=V,
            mask_id=MASK,
            init=init,
            block_length=4,
        )


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(steps=6), ValueError, r"steps \(6\) must be a multiple of the number of blocks"),
        (dict(gen_length=10), ValueError, r"gen_length \(10\) must be a multiple of block_length"),
        (dict(remasking="lowest"), ValueError, "remasking must be one of"),
        (dict(cfg_scale=-1.0), ValueError, "cfg_scale"),
        (dict(cfg_scale="2"), TypeError, "cfg_scale"),
        (dict(steps=0), ValueError, "steps"),
        (dict(block_length=2.0), TypeError, "block_length"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(logits_eos_inf=True), ValueError, "eos_id"),
        (dict(confidence_eos_eot_inf=True), ValueError, "eos_id"),
        (dict(logits_eos_inf=True, eos_id=V), ValueError, "eos_id"),
        (dict(logits_eos_inf=1, eos_id=EOS), TypeError, "logits_eos_inf"),
        (dict(vocab_size=None), ValueError, "vocab_size"),
        (dict(mask_id=V), ValueError, "mask_id"),
        (dict(loop="fast"), ValueError, "loop"),
    ],
)
def test_generate_bad_settings(kwargs, exc, match):
    model = ToyLM()
    args = dict(steps=8, gen_length=16, block_length=4, mask_id=MASK, vocab_size=V) | kwargs
    with pytest.raises(exc, match=match):
        generate(model, prompts(1, 3), **args)
    assert model.calls == 0  # checked before any model call


def test_generate_bad_prompts():
    model = ToyLM()
    kw = dict(steps=4, gen_length=8, block_length=4, mask_id=MASK, vocab_size=V)
    with pytest.raises(ValueError, match="mask token"):
        generate(model, torch.tensor([[1, MASK, 2]]), **kw)
    with pytest.raises(TypeError, match="prompt"):
        generate(model, torch.tensor([[1.0, 2.0]]), **kw)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, torch.tensor([1, 2]), **kw)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(model, prompts(1, 3), torch.ones(1, 4), **kw)
    with pytest.raises(TypeError, match="model"):
        generate(None, prompts(1, 3), **kw)
    assert model.calls == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(remasking="top"), "remasking must be one of"),
        (dict(remasking="random", threshold=0.9), "remasking='random'"),
        (dict(confidence_eos_eot_inf=True, eos_id=None, eot_id=None), "eos_id or eot_id"),
        (dict(eot_id=-1), "eot_id"),
    ],
)
def test_scheduler_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConfidenceScheduler(V, mask_id=MASK, **kwargs)
