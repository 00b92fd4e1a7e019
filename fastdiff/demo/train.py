"""The demo's training loop: AdamW with warm-up and cosine decay, one noising seed per
(run seed, step, rank) so a resumed run repeats exactly what the uninterrupted one would have
done, checkpoints, and DistributedDataParallel when launched by ``torchrun``.

Stopping: :func:`train` stops at the end of a step when its ``stop`` callable says so (the
demo's Ctrl-C), and raises :class:`Diverged` at the first non-finite loss; a checkpoint is
never written with non-finite weights.

Distributed runs: with ``WORLD_SIZE > 1`` in the environment (``torchrun`` sets it, with
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), :func:`setup_distributed` joins
the process group (``nccl`` on CUDA, ``gloo`` on the CPU), each rank trains on its own shard
of the training stream with the per-rank batch ``batch_size``, DDP averages the gradients,
and only rank 0 prints and writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from fastdiff.cli_support import one_line, parse_device, replacing
from fastdiff.demo import corpus
from fastdiff.demo.model import Denoiser, ModelConfig
from fastdiff.demo.objectives import AnyObjective

# what load_checkpoint requires of a checkpoint ("graph", "settings" and "objective_settings"
# are newer, optional)
CHECKPOINT_KEYS = frozenset(
    {
        "model",
        "optimizer",
        "step",
        "history",
        "seconds",
        "model_config",
        "train_config",
        "objective",
    }
)


class Diverged(Exception):
    """Training met a non-finite loss, or non-finite weights, at step ``step``."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} at step {step}")
        self.step = step
        self.what = what


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings; ``batch_size`` is per rank."""

    steps: int = 800
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True on the process that prints and writes (rank 0)."""
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the process group when ``WORLD_SIZE > 1`` (module docstring); else one process.

    On CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = parse_device(device)
    if world <= 1:
        if dev.type == "cuda" and dev.index is not None:
            # Triton launches on the current device: make it the one the tensors live on
            torch.cuda.set_device(dev)
        return Dist(0, 1, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


def teardown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def step_seed(seed: int, step: int, rank: int, stream: str) -> int:
    """A 62-bit seed that depends only on ``(seed, step, rank, stream)``."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@dataclasses.dataclass
class State:
    """What a checkpoint holds besides the settings: model, optimizer, next step, loss
    history ``[(step, loss)]`` and training seconds spent so far."""

    model: Denoiser
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def initial_model(
    model_cfg: ModelConfig,
    seed: int,
    device: torch.device,
    objective: AnyObjective | None = None,
) -> Denoiser:
    """The untrained model of a run: the same weights for the same seed (on every rank); the
    objective's model (``objective.build``), or a :class:`Denoiser` when ``None``."""
    torch.manual_seed(seed)
    model = Denoiser(model_cfg) if objective is None else objective.build(model_cfg)
    return model.to(device)


def build(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    device: torch.device,
    objective: AnyObjective | None = None,
) -> State:
    """A freshly initialized model (:func:`initial_model`) and its optimizer."""
    model = initial_model(model_cfg, cfg.seed, device, objective)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    return State(model, optimizer)


def weights_finite(model: nn.Module) -> bool:
    """True when every parameter of ``model`` is finite."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def save_checkpoint(
    path: Path,
    state: State,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    objective: AnyObjective,
    settings: dict | None = None,
) -> None:
    """Write the checkpoint atomically (a temporary file of this call renamed over ``path``);
    ``settings`` (the run's command-line settings) are what ``--resume`` continues with; the
    objective is recorded by name, graph and settings (``T`` and the fixed choices of the
    discrete-time objectives). Raises :class:`Diverged`, writing nothing, when a
    weight is not finite."""
    if not weights_finite(state.model):
        raise Diverged(state.step, "non-finite weights")
    with replacing(path) as tmp:
        torch.save(
            {
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "step": state.step,
                "history": state.history,
                "seconds": state.seconds,
                "model_config": dataclasses.asdict(model_cfg),
                "train_config": dataclasses.asdict(cfg),
                "objective": objective.name,
                "graph": objective.graph,
                "objective_settings": objective.settings,
                "settings": dict(settings or {}),
            },
            tmp,
        )


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` onto ``device`` (tensors and plain
    data only: ``torch.load(weights_only=True)``); a ``ValueError`` naming ``path`` when it is
    missing, unreadable or not such a checkpoint."""
    if not path.is_file():
        what = "a directory, not a checkpoint file" if path.is_dir() else "no such checkpoint"
        raise ValueError(f"--resume {path}: {what}")
    try:
        # torch >= 2.14 warns about the pickle protocol of a foreign file before it fails: the
        # one-line error below says what matters
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # whatever a truncated or foreign file makes the unpickler raise
        reason = one_line(err).split(". ")[0][:160]  # the first sentence: torch's run long
        what = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
        raise ValueError(
            f"--resume {path}: not a readable fastdiff demo checkpoint (truncated, corrupt or "
            f"another kind of file: {what})"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"--resume {path}: not a fastdiff demo checkpoint (a {type(ckpt).__name__})"
        )
    missing = sorted(CHECKPOINT_KEYS - set(ckpt))
    if missing:
        raise ValueError(
            f"--resume {path}: not a fastdiff demo checkpoint (keys missing: {', '.join(missing)})"
        )
    return ckpt


def restore(state: State, ckpt: dict) -> None:
    """Put a checkpoint's weights, optimizer moments, step and history into ``state``."""
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step = int(ckpt["step"])
    state.history = [(int(s), float(v)) for s, v in ckpt["history"]]
    state.seconds = float(ckpt["seconds"])


def train(
    state: State,
    objective: AnyObjective,
    stream: torch.Tensor,
    cfg: TrainConfig,
    rank: Dist,
    *,
    progress: bool,
    checkpoint: Callable[[State], None],
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Train from ``state.step`` to ``cfg.steps`` on this rank's ``stream`` (uint8 tokens);
    returns False when ``stop()`` ended it (even after the last step), else True.

    Each step draws ``batch_size`` random windows, then the objective's times (or discrete
    steps), from a generator seeded by :func:`step_seed`, and one noise seed from
    :func:`step_seed`, takes one optimizer step and appends ``(step, loss)`` (the loss
    averaged over ranks) to ``state.history``. ``checkpoint(state)`` is called every
    ``checkpoint_every`` steps (on every rank: the callee decides who writes). ``stop()`` is
    asked after every step (when any rank says so, every rank stops there). A non-finite loss,
    or a loss the value checks reject while a weight is not finite, raises :class:`Diverged`.
    """
    from tqdm import tqdm

    model: nn.Module = state.model
    if rank.world > 1:
        model = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[rank.device.index] if rank.device.type == "cuda" else None
        )
    model.train()
    tokens_per_step = cfg.batch_size * cfg.seq_len * rank.world
    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        desc=f"training ({objective.label})",
        unit="step",
        disable=not (progress and rank.main),
        dynamic_ncols=True,
    )
    smooth = None
    stopping = False
    try:
        while state.step < cfg.steps and not stopping:
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, state.step, rank.rank, "data"))
            x0 = corpus.random_windows(stream, cfg.batch_size, cfg.seq_len, gen).to(rank.device)
            noise_seed = step_seed(cfg.seed, state.step, rank.rank, "noise")
            for group in state.optimizer.param_groups:
                group["lr"] = learning_rate(cfg, state.step)
            try:
                loss = objective.step_loss(model, x0, gen, noise_seed)
            except ValueError:
                if weights_finite(state.model):
                    raise
                raise Diverged(state.step, "non-finite weights") from None
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
            state.optimizer.step()
            # the loss and this rank's wish to stop, summed over the ranks in one reduction
            value_t = loss.detach().float()
            packed = torch.stack([value_t, value_t.new_tensor(float(stop()))])
            if rank.world > 1:
                dist.all_reduce(packed)
            value, stopping = float(packed[0]) / rank.world, bool(packed[1] > 0)
            if not math.isfinite(value):
                raise Diverged(state.step, f"training loss {value}")
            state.history.append((state.step, value))
            state.step += 1
            elapsed = time.perf_counter() - start
            state.seconds += elapsed
            smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
            bar.set_postfix_str(f"loss {smooth:.3f}  {tokens_per_step / elapsed:,.0f} tok/s")
            bar.update()
            if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps and not stopping:
                checkpoint(state)
    finally:
        bar.close()
    return not stopping
