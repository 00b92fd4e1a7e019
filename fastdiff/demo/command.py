"""Train a small diffusion language model on the Python standard library's source, then sample
from it: unconditionally and by infilling (prefix and suffix given, middle generated).

Examples:

    fastdiff demo                                # masked diffusion (MDLM), < 5 min on a 2-core CPU
    fastdiff demo --objective sedd               # SEDD score entropy, absorbing graph
    fastdiff demo --objective sedd --graph uniform --steps 2000   # SEDD, uniform graph
    fastdiff demo --objective d3pm               # D3PM absorbing, T = 128 discrete steps
    fastdiff demo --objective gaussian --timesteps 100   # Diffusion-LM, Gaussian embeddings
    fastdiff demo --corpus notes.txt more_text/  # your own text (files or directories)
    fastdiff demo --resume demo_out/checkpoint.pt --steps 2000   # continue a run
    torchrun --nproc_per_node 2 -m fastdiff.demo # DistributedDataParallel (gloo / nccl)

Writes summary.json, loss.png and checkpoint.pt (also every --checkpoint-every steps) under
--out, each whole or not at all. An --out that holds an earlier run's outputs is refused unless
--overwrite is given or --resume names its checkpoint, and one run at a time may use an --out.
summary.json holds the held-out value of the training loss and an upper bound on the held-out
negative log-likelihood (bits per byte, perplexity) of the untrained and the trained model:
mdlm and sedd the continuous-time ELBO, d3pm the discrete-time one at 8 stratified of its T
steps, gaussian the discrete-time one summed over all T steps.
The learning-rate schedule follows --steps, and every step's data and noise depend only
on (--seed, step, rank): resuming with the same --steps repeats the uninterrupted run exactly,
a larger --steps extends it. Ctrl-C during training saves the checkpoint at the end of the step
and prints the command that continues the run (exit status 130; a second Ctrl-C stops at once).
A non-finite training loss (a too large --lr) stops the run and saves nothing after it: the last
good checkpoint stays. A corpus file that is not UTF-8 text is trained on as bytes, with a
warning. On CUDA the ops run as fastdiff's Triton kernels and the model, batch and run are
larger. Errors are one line on stderr: exit status 2 for a bad setting, 1 for a failure (an
unreadable or unwritable file, a diverged run). (``python -m fastdiff.demo`` is the same
command.)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist

from fastdiff import checks
from fastdiff.cli_support import (
    INTERRUPTED,
    Failure,
    Interrupted,
    check_writable,
    execute,
    parser_text,
)
from fastdiff.demo import corpus, objectives, report, train
from fastdiff.demo.model import ModelConfig
from fastdiff.table.systems import Sizes

try:
    import fcntl
except ImportError:  # Windows: no advisory lock, the refusal of earlier outputs remains
    fcntl = None

DEFAULT_OUT = Path("demo_out")
OUTPUTS = ("checkpoint.pt", "summary.json", "loss.png")
LOCK_NAME = ".fastdiff-demo.lock"  # held (flock) by the run writing into --out
MODEL_SIZES = {"seq_len": "max_len", "dim": "dim", "depth": "depth", "heads": "heads"}
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
        help="mdlm: masked-diffusion cross entropy; sedd: SEDD score entropy; d3pm: D3PM "
        "absorbing, discrete time; gaussian: Diffusion-LM, Gaussian diffusion of learned byte "
        "embeddings (default: mdlm)",
    )
    parser.add_argument(
        "--graph",
        choices=objectives.GRAPHS,
        help="the noising graph of sedd (mdlm is absorbing; default: absorb)",
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        metavar="T",
        help="discrete diffusion steps of d3pm and gaussian (default: "
        + ", ".join(f"{k} {v}" for k, v in objectives.TIMESTEPS.items())
        + ", or the resumed run's)",
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
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT}); one holding an earlier run's outputs "
        "is refused unless --overwrite, or --resume of its checkpoint.pt",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue from a checkpoint (the model sizes are the checkpoint's)",
    )
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
        with _output_folder(args, rank.main):
            return _demo(args, rank, start)
    finally:
        torch.set_num_threads(threads)
        train.teardown_distributed()


def _saved_settings(ckpt: dict) -> dict:
    """The settings a checkpoint's run used (older checkpoints: those of its train config)."""
    keys = ("steps", "batch_size", "lr", "seed")
    return ckpt.get("settings") or {k: ckpt["train_config"][k] for k in keys}


def _say(rank: train.Dist, *lines: str, file: IO[str] | None = None) -> None:
    if rank.main:
        print(*lines, sep="\n", flush=True, file=file or sys.stdout)


@contextlib.contextmanager
def _output_folder(args: argparse.Namespace, main: bool) -> Iterator[None]:
    """Claim ``--out`` for this run before any work: writable (else :class:`Failure`), not in
    use by another run (rank 0 holds the lock file's ``flock`` until the block ends), and not
    holding an earlier run's outputs unless ``--overwrite`` or ``--resume`` of its checkpoint.
    A folder this claim created and the run left empty is removed."""
    out: Path = args.out
    check_writable(out)
    created = not out.exists()
    lock = _lock(out) if main else None
    try:
        _refuse_earlier_outputs(args)
        yield
    finally:
        if lock is not None:
            (out / LOCK_NAME).unlink(missing_ok=True)
            lock.close()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty


def _lock(out: Path) -> IO[str]:
    """The open lock file of ``out``, locked for this process, its pid written in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (kept open: the lock's lifetime)
    except OSError as err:
        raise Failure(f"--out {out}: cannot write there ({err.strerror})") from None
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            pid = f" (pid {owner})" if owner else ""
            raise Failure(
                f"--out {out} is in use by another fastdiff demo{pid}: wait for it, "
                "or choose another --out"
            ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _refuse_earlier_outputs(args: argparse.Namespace) -> None:
    """:class:`Failure` when ``--out`` holds outputs this run would replace, unless
    ``--overwrite`` or ``--resume`` names its ``checkpoint.pt``."""
    out: Path = args.out
    existing = [name for name in OUTPUTS if (out / name).exists()]
    ckpt = out / "checkpoint.pt"
    continuing = args.resume is not None and ckpt.exists() and args.resume.exists()
    if not existing or args.overwrite or (continuing and os.path.samefile(args.resume, ckpt)):
        return
    resume = f", or --resume {ckpt} to continue that run" if ckpt.exists() else ""
    raise Failure(
        f"--out {out} already holds {', '.join(existing)} of an earlier run: pass --overwrite "
        f"to replace them{resume}, or choose another --out"
    )


def _check_model_sizes(args: argparse.Namespace, ckpt: dict) -> None:
    """A ``ValueError`` when a model size given on the command line differs from the resumed
    checkpoint's (the checkpoint's model is what continues)."""
    saved = {key: ckpt["model_config"][field] for key, field in MODEL_SIZES.items()}
    given = {key: getattr(args, key) for key in MODEL_SIZES if getattr(args, key) is not None}
    differ = [key for key, value in given.items() if value != saved[key]]
    if differ:

        def flags(values: dict) -> str:
            return " ".join(f"--{key.replace('_', '-')} {values[key]}" for key in differ)

        raise ValueError(
            f"--resume {args.resume}: the checkpoint's model has {flags(saved)}, not "
            f"{flags(given)} (leave the model sizes out to continue it)"
        )


@contextlib.contextmanager
def _ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """Within the block, the first Ctrl-C (SIGINT) only sets the flag this yields (a callable
    returning it) and a second one interrupts at once. Outside the main thread, where Python
    cannot catch signals, or where SIGINT is ignored (a background job), the flag stays unset."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield lambda: False
        return
    hits: list[int] = []
    restore = previous if previous is not None else signal.default_int_handler

    def handler(signum: int, frame: object) -> None:
        hits.append(signum)
        signal.signal(signal.SIGINT, restore)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, restore)


def _resume_command(args: argparse.Namespace, path: Path) -> str:
    """This run's command line with ``--resume path`` in place of any ``--resume``."""
    words: list[str] = []
    skip = False
    for word in args.command_line:
        if skip or word == "--resume" or word.startswith("--resume="):
            skip = word == "--resume"
            continue
        words.append(word)
    return shlex.join([*words, "--resume", str(path)])


def _check_objective(args: argparse.Namespace, graph: str | None, ckpt: dict) -> None:
    """A one-line ``ValueError`` when the resumed checkpoint was trained with another objective
    or graph than ``--objective`` / ``--graph`` ask for."""
    saved = (ckpt["objective"], ckpt.get("graph"))
    if saved != (args.objective, graph):
        flags = f"--objective {saved[0]}" + (f" --graph {saved[1]}" if saved[0] == "sedd" else "")
        raise ValueError(
            f"--resume {args.resume}: a checkpoint of the "
            f"{objectives.label_of(*saved)!r} objective, not "
            f"{objectives.label_of(args.objective, graph)!r} (pass {flags})"
        )


def _timesteps(args: argparse.Namespace, ckpt: dict | None) -> int | None:
    """``T`` of a discrete-time objective: ``--timesteps``, else the resumed checkpoint's, else
    the default; ``None`` for the others. A one-line ``ValueError`` for ``--timesteps`` with
    another objective, below 1, or unlike the resumed checkpoint's."""
    given = args.timesteps
    if args.objective not in objectives.DISCRETE_TIME:
        if given is not None:
            raise ValueError(
                f"--timesteps is an option of --objective d3pm / gaussian, not of {args.objective}"
            )
        return None
    if given is not None and given < 1:
        raise ValueError(f"--timesteps must be >= 1, got {given}")
    saved = None if ckpt is None else ckpt.get("objective_settings", {}).get("timesteps")
    if given is not None and saved is not None and given != saved:
        raise ValueError(
            f"--resume {args.resume}: the checkpoint's model was trained with --timesteps "
            f"{saved}, not {given} (leave --timesteps out to continue it)"
        )
    return given or saved or objectives.TIMESTEPS[args.objective]


def _objective(
    args: argparse.Namespace, graph: str | None, s: dict, ckpt: dict | None
) -> objectives.AnyObjective:
    """The run's objective, built for its sizes ``s``; a one-line ``ValueError`` when it
    differs from the resumed checkpoint's (``objective_settings``)."""
    steps = _timesteps(args, ckpt)
    sizes = None
    if steps is not None:
        sizes = Sizes(
            seq_len=s["seq_len"],
            dim=s["dim"],
            depth=s["depth"],
            heads=s["heads"],
            d3pm_steps=steps,
            gaussian_steps=steps,
            gaussian_width=objectives.EMBEDDING_WIDTH,
            num_t=objectives.BOUND_NUM_T,
            sample_steps=s["sample_steps"],
        )
    objective = objectives.get(args.objective, graph, sizes)
    saved = None if ckpt is None else ckpt.get("objective_settings", {})
    if saved is not None and saved != objective.settings:
        raise ValueError(
            f"--resume {args.resume}: the checkpoint's {objective.label} objective has the "
            f"settings {saved}, this version's {objective.settings}"
        )
    return objective


def _demo(args: argparse.Namespace, rank: train.Dist, start: float) -> int:
    graph = objectives.resolve_graph(args.objective, args.graph)
    ckpt = None
    if args.resume is not None:
        ckpt = train.load_checkpoint(args.resume, rank.device)
        _check_objective(args, graph, ckpt)
        _check_model_sizes(args, ckpt)
    s = _settings(args, rank.device, None if ckpt is None else _saved_settings(ckpt))
    if ckpt is not None:
        saved_cfg = ckpt["model_config"]
        s.update(seq_len=saved_cfg["max_len"], dim=saved_cfg["dim"])
        s.update(depth=saved_cfg["depth"], heads=saved_cfg["heads"])
    objective = _objective(args, graph, s, ckpt)
    model_cfg = ModelConfig(objective.vocab_size, s["seq_len"], s["dim"], s["depth"], s["heads"])
    if ckpt is not None:
        model_cfg = ModelConfig(**ckpt["model_config"])
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
    state = train.build(model_cfg, cfg, rank.device, objective)
    ops = "Triton kernels" if rank.device.type == "cuda" else "PyTorch reference ops"
    _say(
        rank,
        f"fastdiff demo: {objective.label} objective, {state.model.num_parameters():,} parameters "
        f"on {rank.device} x {rank.world} ({ops})",
        f"corpus: {data.source}: {data.files} files, {data.train.numel():,} training and "
        f"{data.heldout.numel():,} held-out bytes",
    )
    if data.not_text:
        _say(
            rank,
            f"warning: --corpus: {len(data.not_text)} of {data.files} files are not UTF-8 text "
            f"(first: {data.not_text[0]}); their bytes are trained on as they are",
            file=sys.stderr,
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
    earlier_seconds = state.seconds

    checkpoint_path = args.out / "checkpoint.pt"
    # the last checkpoint with finite weights on disk: (path, step), None before the first
    last_good = None if ckpt is None else (args.resume, state.step)

    def checkpoint(st: train.State) -> None:
        nonlocal last_good
        if rank.main:
            train.save_checkpoint(
                checkpoint_path, st, model_cfg, cfg, objective, {**s, "seed": args.seed}
            )
            last_good = (checkpoint_path, st.step)

    try:
        with checks.value_checks(rank.device.type != "cuda"):
            with _ctrl_c_stops() as interrupted:
                finished = train.train(
                    state,
                    objective,
                    stream,
                    cfg,
                    rank,
                    progress=not args.no_progress,
                    checkpoint=checkpoint,
                    stop=interrupted,
                )
            checkpoint(state)
    except train.Diverged as err:
        kept = "no checkpoint was written"
        if last_good is not None:
            kept = f"the last good checkpoint is {last_good[0]} (step {last_good[1]})"
        raise Failure(
            f"training diverged: {err.what} at step {err.step} (try a lower --lr); nothing was "
            f"saved after it, {kept}"
        ) from None
    if rank.world > 1:
        dist.barrier()
    if not finished:  # Ctrl-C: every rank stopped after the same step
        if not rank.main:
            return INTERRUPTED
        raise Interrupted(
            f"interrupted at step {state.step} of {cfg.steps}: saved {checkpoint_path}; "
            f"continue with: {_resume_command(args, checkpoint_path)}"
        )
    if rank.main:
        seconds = {"start": start, "eval": eval_seconds, "earlier_training": earlier_seconds}
        _finish(args, s, state, objective, data, eval_set, untrained, seconds)
    if rank.world > 1:
        dist.barrier()
    return 0


def _finish(
    args: argparse.Namespace,
    s: dict,
    state: train.State,
    objective: objectives.AnyObjective,
    data: corpus.Corpus,
    eval_set: torch.Tensor,
    untrained: float,
    seconds: dict[str, float],
) -> None:
    """Rank 0, after training: evaluate, sample, print and write the outputs. ``seconds``:
    ``start`` (the run's ``perf_counter`` at its start), ``eval`` (evaluation so far) and
    ``earlier_training`` (training seconds of the runs this one resumed)."""
    from fastdiff.demo import sampling

    model = state.model.eval()
    t0 = time.perf_counter()
    eval_seconds = seconds["eval"]
    trained = objectives.heldout_loss(
        model, objective, eval_set, draws=EVAL_DRAWS, seed=args.seed + 1, batch=64
    )
    print(
        f"held-out loss (nats / token): untrained {untrained:.3f}, trained {trained:.3f} "
        f"({trained / untrained:.0%} of untrained)"
    )
    device = next(model.parameters()).device
    fresh = train.initial_model(model.config, args.seed, device, objective).eval()
    bound = {
        "untrained": objective.bound(fresh, eval_set, seed=args.seed),
        "trained": objective.bound(model, eval_set, seed=args.seed),
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
    total = time.perf_counter() - seconds["start"]
    this_run = state.seconds - seconds["earlier_training"]
    train_tokens = len(state.history) * s["batch_size"] * s["seq_len"]
    summary = {
        "settings": {
            "objective": objective.name,
            "graph": objective.graph,
            "sampler": objective.sampler,
            **objective.settings,
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
            "bound_method": objective.bound_method,
        },
        "samples": {k: samples[k] for k in ("unconditional", "infill")},
        "timings": {
            "training": this_run,
            "training_all_runs": state.seconds,
            "evaluation": eval_seconds,
            "sampling": samples["seconds"],
            "total": total,
            "train_tokens_per_s": train_tokens / state.seconds if state.seconds else None,
            "sampling_tokens_per_s": samples["tokens_per_s"],
        },
        "history": [[step, loss] for step, loss in state.history],
    }
    resumed = f" ({state.seconds:.0f} s of training in all runs)" if args.resume else ""
    print(
        f"\nsampling: {samples['tokens_per_s']:,.0f} tokens/s ({objective.sampler}, "
        f"{s['sample_steps']} steps); this run: training {this_run:.0f} s, total {total:.0f} s"
        f"{resumed}"
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
