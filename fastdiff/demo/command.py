"""Train a small diffusion language model on the Python standard library's source, then sample
from it: unconditionally and by infilling (prefix and suffix given, middle generated).

Examples:

    fastdiff demo                                # masked diffusion (MDLM), < 5 min on a 2-core CPU
    fastdiff demo --objective sedd               # SEDD score entropy, absorbing graph
    fastdiff demo --objective sedd --graph uniform --steps 2000   # SEDD, uniform graph
    fastdiff demo --corpus notes.txt more_text/  # your own text (files or directories)
    fastdiff demo --resume demo_out/checkpoint.pt --steps 2000   # continue a run
    torchrun --nproc_per_node 2 -m fastdiff.demo # DistributedDataParallel (gloo / nccl)

Writes summary.json, loss.png and checkpoint.pt (also every --checkpoint-every steps) under
--out. The learning-rate schedule follows --steps, and every step's data and noise depend only
on (--seed, step, rank): resuming with the same --steps repeats the uninterrupted run exactly,
a larger --steps extends it. On CUDA the ops run as fastdiff's
Triton kernels and the model, batch and run are larger. (``python -m fastdiff.demo`` is the
same command.)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fastdiff import checks
from fastdiff.cli_support import execute, parser_text
from fastdiff.demo import corpus, objectives, report, train
from fastdiff.demo.model import ModelConfig

DEFAULT_OUT = Path("demo_out")
CPU_DEFAULTS = {
    "steps": 2000,
    "batch_size": 32,
    "seq_len": 64,
    "dim": 96,
    "depth": 3,
    "heads": 3,
    "lr": 2e-3,
    "sample_steps": 128,
    "num_samples": 4,
    "eval_windows": 64,
    "corpus_bytes": 4 << 20,
}
CUDA_DEFAULTS = {
    "steps": 5000,
    "batch_size": 64,
    "seq_len": 256,
    "dim": 384,
    "depth": 8,
    "heads": 6,
    "lr": 1e-3,
    "sample_steps": 256,
    "num_samples": 8,
    "eval_windows": 256,
    "corpus_bytes": 32 << 20,
}
EVAL_DRAWS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastdiff demo``; size options default by device (CPU / CUDA)."""
    cpu, gpu = CPU_DEFAULTS, CUDA_DEFAULTS

    def sized(flag: str, kind: type, text: str) -> None:
        key = flag.lstrip("-").replace("-", "_")
        parser.add_argument(
            flag, type=kind, help=f"{text} (default: {cpu[key]} on the CPU, {gpu[key]} on CUDA)"
        )

    parser.add_argument(
        "--objective",
        choices=objectives.OBJECTIVES,
        default="mdlm",
        help="mdlm: masked-diffusion cross entropy; sedd: SEDD score entropy (default: mdlm)",
    )
    parser.add_argument(
        "--graph",
        choices=objectives.GRAPHS,
        default="absorb",
        help="the noising graph of sedd (mdlm is absorbing; default: absorb)",
    )
    sized("--steps", int, "training steps")
    sized("--batch-size", int, "sequences per step and process")
    sized("--seq-len", int, "tokens (bytes) per sequence")
    sized("--dim", int, "model width")
    sized("--depth", int, "transformer blocks")
    sized("--heads", int, "attention heads")
    sized("--lr", float, "peak learning rate")
    sized("--sample-steps", int, "sampler steps")
    sized("--num-samples", int, "sequences sampled unconditionally and infilled")
    sized("--eval-windows", int, "held-out sequences to evaluate")
    sized("--corpus-bytes", int, "bytes of corpus to read")
    parser.add_argument(
        "--corpus",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="your own text files or directories (default: the Python standard library's source)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of everything (default: 0, or the resumed run's)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--resume", type=Path, metavar="CKPT", help="continue from a checkpoint")
    parser.add_argument(
        "--checkpoint-every", type=int, default=200, help="checkpoint period in steps (200)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace, device: torch.device, saved: dict | None = None) -> dict:
    """``args`` with the defaults filled in, checked: a resumed run's own settings (``saved``)
    where it has them, else the device's defaults. Sets ``args.seed`` the same way."""
    table = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    table = {**table, **{k: v for k, v in (saved or {}).items() if k in table}}
    if args.seed is None:
        args.seed = int((saved or {}).get("seed", 0))
    out = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in table.items()}
    for k, v in out.items():
        if v <= 0:
            raise ValueError(f"--{k.replace('_', '-')} must be > 0, got {v}")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``fastdiff demo`` with parsed arguments (under ``torchrun``: on every rank)."""
    start = time.perf_counter()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
    rank = train.setup_distributed(args.device)
    try:
        torch.set_num_threads(args.threads or threads)
        return _demo(args, rank, start)
    finally:
        torch.set_num_threads(threads)
        train.teardown_distributed()


def _saved_settings(ckpt: dict) -> dict:
    """The settings a checkpoint's run used (older checkpoints: those of its train config)."""
    keys = ("steps", "batch_size", "lr", "seed")
    return ckpt.get("settings") or {k: ckpt["train_config"][k] for k in keys}


def _say(rank: train.Dist, *lines: str) -> None:
    if rank.main:
        print(*lines, sep="\n", flush=True)


def _demo(args: argparse.Namespace, rank: train.Dist, start: float) -> int:
    objective = objectives.get(args.objective, args.graph)
    ckpt = None
    if args.resume is not None:
        ckpt = train.load_checkpoint(args.resume, rank.device)
        saved = (ckpt["objective"], ckpt.get("graph"))
        if saved != (objective.name, objective.graph):
            raise ValueError(
                f"--resume {args.resume}: checkpoint of the {saved[0]!r} objective on the "
                f"{saved[1]!r} graph, not {objective.label!r} (pass --objective {saved[0]} "
                f"--graph {saved[1]})"
            )
    s = _settings(args, rank.device, None if ckpt is None else _saved_settings(ckpt))
    model_cfg = ModelConfig(objective.vocab_size, s["seq_len"], s["dim"], s["depth"], s["heads"])
    if ckpt is not None:
        model_cfg = ModelConfig(**ckpt["model_config"])
        s.update(seq_len=model_cfg.max_len, dim=model_cfg.dim)
        s.update(depth=model_cfg.depth, heads=model_cfg.heads)
    cfg = train.TrainConfig(
        steps=s["steps"],
        batch_size=s["batch_size"],
        seq_len=s["seq_len"],
        lr=s["lr"],
        warmup=min(50, max(1, s["steps"] // 10)),
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    data = corpus.load(args.corpus, cfg.seq_len, s["corpus_bytes"])
    stream = corpus.shard(data.train, rank.rank, rank.world)
    eval_set = corpus.fixed_windows(data.heldout, s["eval_windows"], cfg.seq_len)
    state = train.build(model_cfg, cfg, rank.device)
    ops = "Triton kernels" if rank.device.type == "cuda" else "PyTorch reference ops"
    _say(
        rank,
        f"fastdiff demo: {objective.label} objective, {state.model.num_parameters():,} parameters "
        f"on {rank.device} x {rank.world} ({ops})",
        f"corpus: {data.source}: {data.files} files, {data.train.numel():,} training and "
        f"{data.heldout.numel():,} held-out bytes",
    )

    def evaluate() -> float:
        state.model.eval()
        value = objectives.heldout_loss(
            state.model, objective, eval_set, draws=EVAL_DRAWS, seed=args.seed + 1, batch=64
        )
        state.model.train()
        return value

    eval_start = time.perf_counter()
    untrained = evaluate() if rank.main else float("nan")
    eval_seconds = time.perf_counter() - eval_start
    if ckpt is not None:
        train.restore(state, ckpt)
        _say(rank, f"resumed from {args.resume} at step {state.step}")

    checkpoint_path = args.out / "checkpoint.pt"

    def checkpoint(st: train.State) -> None:
        if rank.main:
            train.save_checkpoint(
                checkpoint_path, st, model_cfg, cfg, objective, {**s, "seed": args.seed}
            )

    with checks.value_checks(rank.device.type != "cuda"):
        train.train(
            state,
            objective,
            stream,
            cfg,
            rank,
            progress=not args.no_progress,
            checkpoint=checkpoint,
        )
    checkpoint(state)
    if rank.main:
        _finish(args, s, state, objective, data, eval_set, untrained, eval_seconds, start)
    if rank.world > 1:
        dist.barrier()
    return 0


def _finish(
    args: argparse.Namespace,
    s: dict,
    state: train.State,
    objective: objectives.Objective,
    data: corpus.Corpus,
    eval_set: torch.Tensor,
    untrained: float,
    eval_seconds: float,
    start: float,
) -> None:
    """Rank 0, after training: evaluate, sample, print and write the outputs."""
    from fastdiff.demo import sampling

    model = state.model.eval()
    t0 = time.perf_counter()
    trained = objectives.heldout_loss(
        model, objective, eval_set, draws=EVAL_DRAWS, seed=args.seed + 1, batch=64
    )
    print(
        f"held-out loss (nats / token): untrained {untrained:.3f}, trained {trained:.3f} "
        f"({trained / untrained:.0%} of untrained)"
    )
    fresh = train.initial_model(model.config, args.seed, next(model.parameters()).device).eval()
    bound = {
        "untrained": objectives.likelihood_bound(fresh, objective, eval_set, seed=args.seed),
        "trained": objectives.likelihood_bound(model, objective, eval_set, seed=args.seed),
    }
    for key, b in bound.items():
        print(
            f"perplexity bound, {key}: {b['bits_per_token']:.3f} bits / byte "
            f"(+- {b['stderr_nats_per_token'] / math.log(2):.3f}), "
            f"perplexity {b['perplexity']:.2f}"
        )
    eval_seconds += time.perf_counter() - t0
    samples = sampling.run(
        model, objective, data.heldout, s, seed=args.seed, progress=not args.no_progress
    )
    print(report.rule(f"{len(samples['unconditional'])} unconditional samples"))
    for text in samples["unconditional"]:
        print(report.show(text), report.rule("").strip(), sep="\n")
    print(report.rule("infilling: [prefix] <generated middle> [suffix]"))
    for item in samples["infill"]:
        print(report.show(f"[{item['prefix']}]<{item['middle']}>[{item['suffix']}]"))
        print(report.rule("").strip())
    total = time.perf_counter() - start
    train_tokens = len(state.history) * s["batch_size"] * s["seq_len"]
    summary = {
        "settings": {
            "objective": objective.name,
            "graph": objective.graph,
            "sampler": objective.sampler,
            "parameters": model.num_parameters(),
            "device": str(next(model.parameters()).device),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "checkpoint_every": args.checkpoint_every,
            "resumed_from": None if args.resume is None else str(args.resume),
            **s,
        },
        "corpus": data.summary(),
        "final_train_loss": report.final_loss(state.history),
        "heldout": {
            "untrained": untrained,
            "trained": trained,
            "unit": "nats / token",
            "bound": bound,
        },
        "samples": {k: samples[k] for k in ("unconditional", "infill")},
        "timings": {
            "training": state.seconds,
            "evaluation": eval_seconds,
            "sampling": samples["seconds"],
            "total": total,
            "train_tokens_per_s": train_tokens / state.seconds if state.seconds else None,
            "sampling_tokens_per_s": samples["tokens_per_s"],
        },
        "history": [[step, loss] for step, loss in state.history],
    }
    print(
        f"\nsampling: {samples['tokens_per_s']:,.0f} tokens/s ({objective.sampler}, "
        f"{s['sample_steps']} steps); training {state.seconds:.0f} s, total {total:.0f} s"
    )
    print(f"JSON: {report.write_json(summary, args.out / 'summary.json')}")
    if not args.no_plot:
        print(f"PNG: {report.plot(summary, args.out / 'loss.png')}")
    print(f"checkpoint: {args.out / 'checkpoint.pt'}")


PARSER_TEXT = parser_text(__doc__)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastdiff.demo [options]``."""
    parser = argparse.ArgumentParser(prog="python -m fastdiff.demo", **PARSER_TEXT)
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return execute(parser, argv, ["python", "-m", "fastdiff.demo"])
