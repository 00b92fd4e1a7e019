"""The transformers integration (:mod:`fastdiff.hf`): a randomly initialised BERT built from a
config (nothing downloaded) trained a few steps with :class:`fastdiff.nn.MaskedDiffusionLoss`
on its own hidden states and MLM head, then sampled through :class:`fastdiff.hf.HFDenoiser`.

Checked: the fused loss (hidden states + decoder) equals the logits path to 1e-5 in value and
gradient; the training loss falls (mean of the last 5 steps below 0.7 x the mean of the first
5: the untrained model sits at ``ln 63 = 4.1`` nats / token, the byte marginal of the text alone
gives about 2.1, observed 2.04 after 60 steps); samples keep the prompt exactly and hold no mask
token; the adapter's attention mask, time conditioning and errors.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import fastdiff  # noqa: E402
import fastdiff.nn as fnn  # noqa: E402
from fastdiff.hf import HFDenoiser, TimeEmbedding, require_transformers  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"
TEXT = torch.tensor([ALPHABET.index(c) for c in "hello world. " * 60])
V, MASK, L, PROMPT = 64, 63, 16, 4  # the mask token: the last id of BERT's vocabulary


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bert(seed: int = 0, **overrides) -> transformers.BertForMaskedLM:
    """A 2-layer width-32 BERT with a 64-token vocabulary and no dropout."""
    config = transformers.BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=L,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **overrides,
    )
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(config)


def _windows(n: int, gen: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, TEXT.numel() - L, (n,), generator=gen)
    return TEXT[start[:, None] + torch.arange(L)]


def test_fused_loss_equals_the_logits_path():
    """Same times and noise: ``loss_fn(denoiser.hidden, x0)`` with the decoder as projection
    (BERT's head transform inside the hidden states) equals the loss of the full logits."""
    x0 = _windows(8, torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.95, 8)
    values, grads = [], []
    for fused in (False, True):
        denoiser = HFDenoiser(_bert())
        projection = denoiser.projection if fused else None
        loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=projection)
        loss = loss_fn(denoiser.hidden if fused else denoiser, x0, t=t, seed=3)
        loss.backward()
        values.append(loss.detach())
        grads.append({k: p.grad for k, p in denoiser.named_parameters() if p.grad is not None})
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    assert "model.cls.predictions.transform.dense.weight" in grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_training_lowers_the_loss_and_samples_keep_the_prompt():
    denoiser = HFDenoiser(_bert())
    loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=denoiser.projection)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(60):
        loss = loss_fn(denoiser.hidden, _windows(32, gen), generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.7 * first, (first, last)

    denoiser.eval()
    windows = _windows(4, torch.Generator().manual_seed(1))
    fixed = fastdiff.prefix_mask((4, L), PROMPT)
    init = torch.where(fixed, windows, MASK)
    for method in ("mdlm", "confidence"):
        with torch.no_grad():
            out = fastdiff.sample(
                denoiser, (4, L), method=method, steps=L - PROMPT, vocab_size=V,
                mask_id=MASK, init=init, fixed=fixed, seed=0,
            )  # fmt: skip
        assert out.shape == (4, L) and out.dtype == torch.int64
        assert torch.equal(out[:, :PROMPT], windows[:, :PROMPT])
        assert not bool((out == MASK).any()) and int(out.min()) >= 0


def test_hidden_states_are_the_decoder_input():
    """``hidden`` is the head transform's output (not the encoder's last hidden state), the
    projection is the decoder (weight tied to the input embeddings, bias the head's), and the
    output layer is restored after the call."""
    bert = _bert()
    denoiser = HFDenoiser(bert)
    x = _windows(2, torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.5, 1.0])
    hidden = denoiser.hidden(x, sigma)
    assert hidden.shape == (2, L, 32)
    decoder = bert.cls.predictions.decoder
    assert denoiser.projection is decoder and denoiser.vocab_size == V
    assert decoder.weight is bert.bert.embeddings.word_embeddings.weight
    logits = denoiser(x, sigma)
    torch.testing.assert_close(logits, F.linear(hidden, decoder.weight, decoder.bias))
    torch.testing.assert_close(logits, bert(input_ids=x).logits)
    encoder_out = bert.bert(input_ids=x).last_hidden_state
    assert not torch.allclose(hidden, encoder_out)
    assert "forward" not in decoder.__dict__


def test_attention_mask_and_time_embedding():
    bert = _bert()
    denoiser = HFDenoiser(bert)
    x = _windows(2, torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.2, 2.0])
    keep = torch.ones(2, L, dtype=torch.long)
    keep[:, -3:] = 0  # padding
    changed = x.clone()
    changed[:, -3:] = 5
    a = denoiser(x, sigma, attention_mask=keep)
    b = denoiser(changed, sigma, attention_mask=keep)
    torch.testing.assert_close(a[:, :-3], b[:, :-3])  # padding is not attended to
    assert not torch.allclose(denoiser(x, sigma)[:, :-3], denoiser(changed, sigma)[:, :-3])

    timed = HFDenoiser(bert, time_embedding=TimeEmbedding(32))
    torch.testing.assert_close(timed(x, sigma), denoiser(x, sigma))  # zero at the start
    torch.nn.init.normal_(timed.time_embedding.mlp[2].weight, std=0.5)
    out = timed(x, sigma)
    swapped = timed(x, sigma.flip(0))
    assert not torch.allclose(out, swapped)  # the output depends on sigma
    out.square().mean().backward()
    assert float(timed.time_embedding.mlp[0].weight.grad.abs().sum()) > 0
    assert any(p is q for p in timed.parameters() for q in bert.parameters())


def test_errors():
    bert = _bert()
    denoiser = HFDenoiser(bert)
    x = _windows(2, torch.Generator().manual_seed(4))
    sigma = torch.ones(2)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        HFDenoiser(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="output embeddings"):
        HFDenoiser(bert.bert)  # the encoder alone: no language-model head
    with pytest.raises(TypeError, match="time_embedding"):
        HFDenoiser(bert, time_embedding=lambda s: s)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        denoiser(x[0], sigma)
    with pytest.raises(ValueError, match="sigma"):
        denoiser(x, torch.ones(3))
    with pytest.raises(ValueError, match="attention_mask"):
        denoiser(x, sigma, attention_mask=torch.ones(2, L + 1))
    bert.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        denoiser.hidden(x, sigma)


def test_example_runs(monkeypatch, capsys):
    """``examples/hf_bert.py`` end to end with 3 training steps: it prints the loss and one
    sample per prompt, each starting with its prompt."""
    example = Path(__file__).resolve().parents[1] / "examples" / "hf_bert.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--steps", "3"])
    runpy.run_path(str(example), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step    3  loss")
    rows = lines[lines.index("prompt    -> sample") + 1 :]
    assert len(rows) == 4
    for row in rows:
        prompt, sample = (ast.literal_eval(part) for part in row.split(" -> "))
        assert sample.startswith(prompt) and len(sample) == 24 and "_" not in sample


def test_missing_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"fastdiff\[hf\]"):
        require_transformers()
