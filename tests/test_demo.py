"""``fastdiff demo``: corpus split, model, objectives, a shortened training run that learns,
infilling, the JSON summary, checkpoints / resume and a 2-process DDP run (gloo, torchrun)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastdiff.demo import command, corpus, objectives, report, sampling, train
from fastdiff.demo.model import Denoiser, ModelConfig
from fastdiff.schedules import sample_times

TINY = ["--dim", "32", "--depth", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "8"]
QUICK = ["--sample-steps", "4", "--num-samples", "2", "--eval-windows", "8"]
QUICK += ["--corpus-bytes", "400000", "--no-progress", "--no-plot", "--threads", "1"]
LN256 = math.log(256)
KINDS = [("mdlm", "absorb"), ("sedd", "absorb"), ("sedd", "uniform")]  # (objective, graph)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one torch thread is as fast, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _demo(out: Path, *extra: str) -> dict:
    assert command.main(["--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


# --------------------------------------------------------------------------------------------
# corpus, model, objectives
# --------------------------------------------------------------------------------------------


def test_split_is_fixed_and_disjoint():
    n = corpus.CHUNK * corpus.HELDOUT_EVERY * 2 + 123
    stream = bytes(i % 251 for i in range(n))
    train_a, held_a = corpus.split(stream, 16)
    train_b, held_b = corpus.split(stream, 16)
    assert torch.equal(train_a, train_b) and torch.equal(held_a, held_b)
    assert train_a.numel() + held_a.numel() == n
    # held out: exactly the chunks 19 and 39 (0-based) of 16 KiB each
    assert held_a.numel() == 2 * corpus.CHUNK
    first = (corpus.HELDOUT_EVERY - 1) * corpus.CHUNK
    assert held_a[:5].tolist() == [(first + i) % 251 for i in range(5)]
    # a short stream holds out its tail
    _, held_s = corpus.split(stream[:4000], 16)
    assert held_s.numel() == 4000 // corpus.HELDOUT_EVERY
    assert bytes(held_s.tolist()) == stream[4000 - held_s.numel() : 4000]
    with pytest.raises(ValueError, match="too small"):
        corpus.split(stream[:300], 32)


def test_files_split_holds_out_whole_files():
    parts = [bytes([i]) * (10 + i) for i in range(2 * corpus.HELDOUT_EVERY + 3)]
    train, held = corpus.split_files(parts, 8)
    every = corpus.HELDOUT_EVERY
    held_ids = [i for i in range(len(parts)) if i % every == every - 1]  # files 19 and 39
    assert bytes(held.tolist()) == b"".join(parts[i] for i in held_ids)
    assert bytes(train.tolist()) == b"".join(p for i, p in enumerate(parts) if i not in held_ids)
    # fewer files than HELDOUT_EVERY: the chunk split of the joined stream
    few = parts[:3]
    assert torch.equal(corpus.split_files(few, 1)[1], corpus.split(b"".join(few), 1)[1])


def test_default_heldout_windows_are_not_training_text():
    """The demo's evaluation windows come from held-out files: at most 2 of the 64 may occur
    verbatim in the training stream (a licence header can; near-identical codec tables, which
    once made 18 of 64 repeat, are left out of the corpus)."""
    data = corpus.load(None, 64)
    train = bytes(data.train.numpy())
    windows = corpus.fixed_windows(data.heldout, 64, 64)
    repeated = sum(bytes(w.to(torch.uint8).numpy()) in train for w in windows)
    assert repeated <= 2


def test_default_corpus_is_the_stdlib_and_deterministic():
    a = corpus.load(None, 64, limit=200_000)
    b = corpus.load(None, 64, limit=200_000)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    assert a.files > 1 and a.train.numel() + a.heldout.numel() == 200_000
    text = corpus.decode(a.train[:20_000])
    assert "def " in text and "import " in text
    root = Path(corpus.sysconfig.get_paths()["stdlib"])
    for p in corpus.stdlib_files():
        assert p.suffix == ".py" and "test" not in p.relative_to(root).parts
    windows = corpus.fixed_windows(a.heldout, 5, 64)
    assert windows.shape == (5, 64) and windows.dtype == torch.int64
    assert int(windows.max()) < 256


def test_user_corpus_and_bad_path(tmp_path):
    (tmp_path / "a.txt").write_text("hello diffusion\n" * 400)
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "b.txt").write_text("x = 1\n" * 300)
    data = corpus.load([tmp_path / "a.txt", sub], 32)
    assert data.files == 2
    assert data.train.numel() + data.heldout.numel() == 16 * 400 + 6 * 300
    assert data.not_text == ()
    with pytest.raises(ValueError, match="no such file"):
        corpus.load([tmp_path / "missing.txt"], 32)
    # not text: read byte for byte, and listed; empty: an error naming the input
    (sub / "c.bin").write_bytes(b"\x00\xff" * 500)
    (sub / "d.txt").write_bytes("caf\u00e9\n".encode() * 100)
    data = corpus.load([sub], 32)
    assert data.not_text == (sub / "c.bin",) and data.files == 3
    assert data.train.numel() + data.heldout.numel() == 6 * 300 + 1000 + 600 + 1
    assert not corpus.is_text(b"\xc3") and not corpus.is_text(b"a\0") and corpus.is_text(b"")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="only empty files"):
        corpus.load([tmp_path / "empty.txt"], 32)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"--corpus .*none: no files"):
        corpus.load([tmp_path / "none"], 32)
    with pytest.raises(ValueError, match=r"--corpus .*a\.txt: the corpus has"):
        corpus.load([tmp_path / "a.txt"], 512)


def test_model_shapes_and_untrained_output():
    cfg = ModelConfig(vocab_size=257, max_len=16, dim=32, depth=2, heads=4)
    model = Denoiser(cfg)
    x = torch.randint(0, 257, (3, 16))
    sigma = torch.tensor([1e-3, 0.5, 7.0])
    logits = model(x, sigma)
    assert logits.shape == (3, 16, 257)
    assert model(x, sigma, hidden_only=True).shape == (3, 16, 32)
    assert torch.equal(logits, torch.zeros_like(logits))  # zero-initialized head: uniform
    with pytest.raises(ValueError, match="L <= 16"):
        model(torch.zeros(1, 17, dtype=torch.long), sigma[:1])
    with pytest.raises(ValueError, match="sigma"):
        model(x, sigma[:2])
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(dim=30, heads=4)


@pytest.mark.parametrize("name", ["mdlm", "sedd"])
def test_untrained_loss_is_the_uniform_nelbo(name):
    """The untrained model predicts uniformly over the 256 bytes; on the log-linear schedule
    both absorbing objectives then have expectation exactly ``(1 - eps) ln 256`` nats / token
    (mdlm: weight ``1/t`` times mask rate ``(1 - eps) t`` times ``ln 256``; absorbing score
    entropy: ``dsigma r ln(V - 1)`` per masked token, the same value). Estimate from 4096
    sequences of 32 tokens: standard deviation about 0.06 (the 1/t weight), bound 0.3."""
    obj = objectives.get(name)
    model = Denoiser(ModelConfig(vocab_size=257, max_len=32, dim=16, depth=1, heads=2))
    gen = torch.Generator().manual_seed(5)
    windows = torch.randint(0, 256, (4096, 32), generator=gen)
    est = objectives.heldout_loss(model, obj, windows, draws=1, seed=3, batch=1024)
    assert abs(est - (1 - 1e-3) * LN256) < 0.3


def test_objective_losses_are_differentiable_and_finite():
    torch.manual_seed(0)
    x0 = torch.randint(0, 256, (4, 16))
    t = sample_times(4, antithetic=True, generator=torch.Generator().manual_seed(0))
    for name, graph in KINDS:
        obj = objectives.get(name, graph)
        model = Denoiser(ModelConfig(vocab_size=obj.vocab_size, max_len=16, dim=16, heads=2))
        torch.nn.init.normal_(model.head.weight, std=0.1)
        loss = obj.loss(model, x0, t, seed=1)
        loss.backward()
        assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert float(model.head.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.get("ar")
    with pytest.raises(ValueError, match="needs the run's sizes"):
        objectives.get("gaussian")
    with pytest.raises(ValueError, match="--graph is an option of --objective sedd"):
        objectives.get("d3pm", "absorb")
    with pytest.raises(ValueError, match="absorbing"):
        objectives.get("mdlm", "uniform")
    with pytest.raises(ValueError, match="unknown graph"):
        objectives.get("sedd", "dense")


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "graph"), KINDS)
def test_infill_keeps_prefix_and_suffix(name, graph):
    obj = objectives.get(name, graph)
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=obj.vocab_size, max_len=32, dim=16, heads=2)).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # not uniform: non-trivial draws
    heldout = torch.randint(0, 256, (4000,), dtype=torch.uint8)
    s = {"num_samples": 3, "seq_len": 32, "sample_steps": 6}
    out = sampling.run(model, obj, heldout, s, seed=0, progress=False)
    free, filled = out["tokens"]
    windows, fixed = out["windows"], out["fixed"]
    assert free.shape == filled.shape == (3, 32)
    assert fixed[:, :8].all() and fixed[:, 24:].all() and not fixed[:, 8:24].any()
    assert torch.equal(filled[fixed], windows[fixed])  # prefix and suffix kept
    assert not torch.equal(filled[~fixed], windows[~fixed])  # the middle was generated
    assert int(free.max()) < 256 and int(filled.max()) < 256  # no mask token left
    for item, row in zip(out["infill"], windows):
        assert item["prefix"] == corpus.decode(row[:8])
        assert item["suffix"] == corpus.decode(row[24:])
    assert out["tokens_per_s"] > 0


# --------------------------------------------------------------------------------------------
# the command: learning, summary, resume
# --------------------------------------------------------------------------------------------


def test_short_demo_learns_and_writes_its_summary(tmp_path, capsys):
    """300 steps of a 2-block width-48 model on 48-byte windows of the standard library's
    source. Untrained, the model guesses uniformly: expected held-out NELBO ``(1 - eps) ln 256 =
    5.54`` nats / token (estimate from 32 windows x 4 draws: standard deviation about 0.2, bound
    0.6). Trained, it must fall below 0.7 of the untrained value (3.9 nats; observed 3.3, byte
    unigram statistics alone give about 3.1), in the demo's own estimate and in the perplexity
    bound; the final training loss too."""
    args = ["--dim", "48", "--depth", "2", "--heads", "2", "--seq-len", "48"]
    args += ["--batch-size", "16", "--steps", "300", "--lr", "3e-3", "--sample-steps", "8"]
    args += ["--num-samples", "2", "--eval-windows", "32", "--corpus-bytes", "600000"]
    summary = _demo(tmp_path, *args, "--no-progress", "--threads", "1")
    assert set(report.SUMMARY_KEYS) <= set(summary)
    held = summary["heldout"]
    assert abs(held["untrained"] - (1 - 1e-3) * LN256) < 0.6
    assert held["trained"] < 0.7 * held["untrained"]
    if held["bound"] is not None:
        b = held["bound"]
        assert b["trained"]["nats_per_token"] < 0.7 * b["untrained"]["nats_per_token"]
    assert summary["final_train_loss"] < 0.7 * LN256
    assert len(summary["history"]) == 300 and summary["history"][-1][0] == 299
    assert summary["settings"]["steps"] == 300 and summary["settings"]["world_size"] == 1
    assert len(summary["samples"]["unconditional"]) == 2
    assert all(len(t.encode("utf-8", "replace")) >= 40 for t in summary["samples"]["unconditional"])
    assert {"prefix", "middle", "suffix", "original_middle"} <= set(summary["samples"]["infill"][0])
    timings = summary["timings"]
    assert {"training", "evaluation", "sampling", "total", "sampling_tokens_per_s"} <= set(timings)
    assert timings["total"] >= timings["training"] > 0
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "checkpoint.pt").is_file()
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "tokens/s" in printed


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    """Training 6 steps, saving, and training 6 more from the checkpoint gives bit-identical
    weights and loss history to 12 uninterrupted steps (same per-step seeds)."""
    obj = objectives.get("mdlm")
    cfg = train.TrainConfig(steps=12, batch_size=4, seq_len=16, warmup=3, checkpoint_every=6)
    model_cfg = ModelConfig(max_len=16, dim=16, depth=1, heads=2)
    stream = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    single = train.Dist(0, 1, torch.device("cpu"))
    path = tmp_path / "ckpt.pt"

    def save(st):
        train.save_checkpoint(path, st, model_cfg, cfg, obj)

    full = train.build(model_cfg, cfg, single.device)
    train.train(full, obj, stream, cfg, single, progress=False, checkpoint=save)
    ckpt = train.load_checkpoint(path, single.device)
    assert ckpt["step"] == 6 and (ckpt["objective"], ckpt["graph"]) == ("mdlm", "absorb")
    resumed = train.build(model_cfg, cfg, single.device)
    train.restore(resumed, ckpt)
    train.train(resumed, obj, stream, cfg, single, progress=False, checkpoint=lambda st: None)
    assert resumed.history == full.history and len(full.history) == 12
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_resume_continues_and_checks_the_objective(tmp_path):
    first = _demo(tmp_path / "a", *TINY, *QUICK, "--steps", "5")
    ckpt = tmp_path / "a" / "checkpoint.pt"
    second = _demo(tmp_path / "b", *TINY, *QUICK, "--steps", "8", "--resume", str(ckpt))
    assert second["history"][:5] == first["history"]
    assert [s for s, _ in second["history"]] == list(range(8))
    assert second["settings"]["resumed_from"] == str(ckpt)
    assert second["heldout"]["untrained"] == first["heldout"]["untrained"]
    times = second["timings"]  # this run's training within this run's total; all runs beside
    assert times["training"] <= times["total"]
    assert times["training_all_runs"] == pytest.approx(
        times["training"] + first["timings"]["training_all_runs"]
    )
    # the resumed run keeps its own settings unless told otherwise: seed 7 and lr 3e-3 given
    # at the start and not repeated at --resume still hold (a changed seed would change data)
    a = _demo(tmp_path / "s", *TINY, *QUICK, "--steps", "4", "--seed", "7", "--lr", "3e-3")
    b = _demo(tmp_path / "t", *TINY, *QUICK, "--resume", str(tmp_path / "s" / "checkpoint.pt"))
    c = _demo(tmp_path / "u", *TINY, *QUICK, "--steps", "4", "--seed", "7", "--lr", "3e-3")
    assert b["settings"]["seed"] == 7 and b["settings"]["lr"] == 3e-3
    assert b["settings"]["steps"] == 4 and b["history"] == a["history"] == c["history"]
    with pytest.raises(SystemExit):
        command.main(["--out", str(tmp_path / "c"), *TINY, *QUICK, "--objective", "sedd",
                      "--resume", str(ckpt)])  # fmt: skip
    with pytest.raises(SystemExit):
        command.main(["--steps", "0", "--out", str(tmp_path / "d")])


def test_cli_subcommand_and_objectives(tmp_path):
    from fastdiff import cli

    for graph in ("absorb", "uniform"):
        out = tmp_path / graph
        argv = ["demo", "--objective", "sedd", "--graph", graph, "--out", str(out), *TINY]
        assert cli.main([*argv, *QUICK, "--steps", "3"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["objective"] == "sedd"
        assert summary["settings"]["graph"] == graph
        assert summary["settings"]["sampler"] == "sedd_analytic"
        assert all(math.isfinite(v) for _, v in summary["history"])


@pytest.mark.parametrize("name", objectives.DISCRETE_TIME)
def test_discrete_time_objectives_train_score_and_infill(tmp_path, capsys, name):
    """``--objective d3pm`` / ``gaussian`` through the command: 40 steps of a tiny model with
    ``T = 16``. The summary names the bound; the trained bound is finite and below the
    untrained one (gaussian: about 50 -> 27 bits / byte; d3pm: 16 -> 10, standard error about
    1.5, so a margin of several errors); infilling keeps the prefix and suffix; a resume
    asking for another objective, or another ``T``, is refused with one line."""
    out = tmp_path / name
    extra = ["--objective", name, "--timesteps", "16", "--steps", "40", "--lr", "3e-3"]
    summary = _demo(out, *TINY, *QUICK, *extra)
    assert set(report.SUMMARY_KEYS) <= set(summary)
    settings = summary["settings"]
    assert settings["objective"] == name and settings["graph"] is None
    assert settings["timesteps"] == 16
    assert settings["sampler"] == {"d3pm": "d3pm", "gaussian": "ddpm"}[name]
    held = summary["heldout"]
    assert "discrete-time" in held["bound_method"]
    assert ("stratified" if name == "d3pm" else "all T = 16") in held["bound_method"]
    assert held["trained"] < held["untrained"]
    untrained, trained = held["bound"]["untrained"], held["bound"]["trained"]
    assert all(math.isfinite(b["nats_per_token"]) for b in (untrained, trained))
    assert trained["nats_per_token"] < untrained["nats_per_token"]
    assert all(math.isfinite(v) for _, v in summary["history"]) and len(summary["history"]) == 40
    heldout = corpus.load(None, 32, 400_000).heldout
    windows = corpus.fixed_windows(heldout[16:], 2, 32)
    assert len(summary["samples"]["unconditional"]) == 2
    for item, row in zip(summary["samples"]["infill"], windows):
        assert item["prefix"] == corpus.decode(row[:8])
        assert item["suffix"] == corpus.decode(row[24:])
        assert item["original_middle"] == corpus.decode(row[8:24])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["objective"] == name and ckpt["objective_settings"]["timesteps"] == 16
    capsys.readouterr()
    other = "gaussian" if name == "d3pm" else "d3pm"
    resume = ["--resume", str(out / "checkpoint.pt"), "--out", str(tmp_path / "again")]
    for wrong, message in [
        (["--objective", other], f"a checkpoint of the '{name}' objective, not '{other}'"),
        (["--objective", "sedd", "--graph", "uniform"], "not 'sedd/uniform'"),
        (["--objective", name, "--timesteps", "8"], "trained with --timesteps 16, not 8"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            command.main([*resume, *TINY, *QUICK, *wrong])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err
    # continuing with the same objective keeps T (not given again) and the run's history
    more = _demo(tmp_path / "more", *QUICK, "--objective", name, "--steps", "42", *resume[:2])
    assert more["settings"]["timesteps"] == 16 and more["history"][:40] == summary["history"]


def test_graph_and_timesteps_belong_to_their_objectives(tmp_path, capsys):
    for argv, message in [
        (["--objective", "gaussian", "--graph", "absorb"], "--graph is an option of"),
        (["--objective", "mdlm", "--timesteps", "8"], "--timesteps is an option of"),
        (["--objective", "d3pm", "--timesteps", "0"], "--timesteps must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            command.main(["--out", str(tmp_path / "x"), *TINY, *QUICK, *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err


# --------------------------------------------------------------------------------------------
# DDP
# --------------------------------------------------------------------------------------------


def _simulated_ddp(ckpt: dict, steps: int, seed: int, data: corpus.Corpus) -> Denoiser:
    """Two ranks in one process: the mean of the per-rank losses (DDP averages gradients),
    each rank on its own shard and seeds, then the same clipping and optimizer step."""
    obj = objectives.get("mdlm")
    cfg = train.TrainConfig(**ckpt["train_config"])
    state = train.build(ModelConfig(**ckpt["model_config"]), cfg, torch.device("cpu"))
    for step in range(steps):
        losses = []
        for rank in range(2):
            gen = torch.Generator().manual_seed(train.step_seed(seed, step, rank, "data"))
            stream = corpus.shard(data.train, rank, 2)
            x0 = corpus.random_windows(stream, cfg.batch_size, cfg.seq_len, gen)
            t = sample_times(cfg.batch_size, antithetic=True, generator=gen)
            losses.append(obj.loss(state.model, x0, t, train.step_seed(seed, step, rank, "noise")))
        for group in state.optimizer.param_groups:
            group["lr"] = train.learning_rate(cfg, step)
        state.optimizer.zero_grad()
        (0.5 * (losses[0] + losses[1])).backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        state.optimizer.step()
    return state.model


def test_torchrun_two_process_gloo(tmp_path):
    """``torchrun --nproc_per_node 2 -m fastdiff.demo``: gradients averaged over the two ranks'
    shards give the weights of a one-process simulation of the same two ranks."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "fastdiff.demo", "--out", str(out), *TINY, *QUICK, "--steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("fastdiff demo:") == 1  # only rank 0 prints
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["world_size"] == 2 and len(summary["history"]) == 3
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    data = corpus.load(None, 32, 400_000)
    expect = _simulated_ddp(ckpt, 3, 0, data).state_dict()
    for name, value in ckpt["model"].items():
        torch.testing.assert_close(value, expect[name], rtol=1e-4, atol=1e-5, msg=name)
