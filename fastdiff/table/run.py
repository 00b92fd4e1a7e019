"""Train and evaluate the table's rows under one budget, resumably.

Every row gets the same model width / depth / heads, the same training windows in the same
order (step ``s`` draws its ``batch_size`` windows of ``seq_len`` bytes from a generator
seeded by ``(seed, s)``, whichever the row), the same number of training tokens
(``steps x batch_size x seq_len``), the same initial seed, AdamW with the demo's
warm-up and cosine decay, and the same held-out windows (``eval_windows`` windows spread
evenly over the held-out stream of :mod:`fastdiff.demo.corpus`).

**Files under ``out``.** ``settings.json``: the settings every row in the folder was run with;
a run with other settings is refused (one-line ``ValueError``), so rows of different budgets
never end up in one table. ``rows/<row>.json``: a finished row's result (skipped on a rerun);
``rows/<row>.pt``: its checkpoint (weights, optimizer, step, loss history, seconds), written
every ``checkpoint_every`` steps and at the end, from which an unfinished row resumes (the
data and noise of step ``s`` depend only on ``(seed, s)``, so a resumed row trains exactly as
an uninterrupted one). ``table.json``, ``table.md`` and ``table.png`` hold every finished
row of the folder (:mod:`fastdiff.table.report`). Every file is written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from fastdiff.cli_support import Failure, one_line, replacing
from fastdiff.demo import corpus
from fastdiff.demo.train import learning_rate, step_seed
from fastdiff.table import report
from fastdiff.table.systems import ROWS, SYSTEMS, Sizes, System, batches_of, bits

SETTINGS_FILE = "settings.json"


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """The budget and sizes shared by every row (defaults: the CPU table, about 3 minutes of
    training per row on a 2-core CPU; :data:`QUICK` is the first-look preset).

    ``steps x batch_size x seq_len`` bytes of training per row; the model is ``depth`` blocks
    of width ``dim`` with ``heads`` heads; ``eval_windows`` held-out windows; ``num_t`` times
    (or steps) per likelihood estimate, two independent repeats (the Gaussian row sums all
    its ``gaussian_steps``: :mod:`fastdiff.table.systems`); ``sample_steps`` sampler
    steps (D3PM: at most ``d3pm_steps``) for ``num_samples`` unconditional windows;
    ``d3pm_steps`` = D3PM's ``T``; ``gaussian_steps`` = the Gaussian row's ``T`` and
    ``gaussian_width`` its embedding width ``H``; ``corpus_bytes`` of corpus read.
    """

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 64
    dim: int = 96
    depth: int = 3
    heads: int = 3
    lr: float = 2e-3
    eval_windows: int = 64
    num_t: int = 8
    sample_steps: int = 64
    num_samples: int = 4
    d3pm_steps: int = 128
    gaussian_steps: int = 200
    gaussian_width: int = 16
    corpus_bytes: int = 4 << 20
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "lr":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"lr ({flag}) must be a number, got {value!r}")
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"lr ({flag}) must be > 0 and finite, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{f.name} ({flag}) must be an int, got {value!r}")
            elif f.name != "seed" and value < 1:
                raise ValueError(f"{f.name} ({flag}) must be >= 1, got {value}")
        if self.dim % (2 * self.heads):
            raise ValueError(
                f"dim ({self.dim}) must be a multiple of 2 * heads ({2 * self.heads}): the head "
                "width must be even for the rotary embedding"
            )

    @property
    def warmup(self) -> int:
        """Warm-up steps of the learning rate (the demo's rule: ``min(50, steps // 10)``)."""
        return min(50, max(1, self.steps // 10))

    @property
    def grad_clip(self) -> float:
        return 1.0

    def sizes(self) -> Sizes:
        return Sizes(
            seq_len=self.seq_len,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            d3pm_steps=self.d3pm_steps,
            gaussian_steps=self.gaussian_steps,
            gaussian_width=self.gaussian_width,
            num_t=self.num_t,
            sample_steps=self.sample_steps,
        )


QUICK = TableConfig(
    steps=400,
    batch_size=16,
    seq_len=64,
    dim=64,
    depth=2,
    heads=2,
    lr=3e-3,
    eval_windows=32,
    num_t=8,
    sample_steps=32,
    num_samples=2,
    d3pm_steps=64,
    gaussian_steps=100,
    corpus_bytes=1 << 20,
    checkpoint_every=100,
)
"""``--quick``: a first look, the whole table in under 3 minutes on a 2-core CPU."""


def parse_rows(rows: Sequence[str] | str | None) -> tuple[str, ...]:
    """Row names from a sequence of names or comma lists (``None``: every row), in table order;
    a ``ValueError`` naming an unknown one."""
    if rows is None:
        return ROWS
    items = [rows] if isinstance(rows, str) else list(rows)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"--rows: unknown row {unknown[0]!r}; expected some of {', '.join(ROWS)}")
    if not names:
        raise ValueError(f"--rows: no row named; expected some of {', '.join(ROWS)}")
    return tuple(r for r in ROWS if r in names)


def settings_of(config: TableConfig, data: corpus.Corpus, device: torch.device) -> dict:
    """What must be equal for rows to share a table: the config, the corpus and the device."""
    return {
        **dataclasses.asdict(config),
        "corpus": data.source,
        "corpus_files": data.files,
        "train_bytes": int(data.train.numel()),
        "heldout_bytes": int(data.heldout.numel()),
        "device": str(device),
    }


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse an ``out`` whose rows were run with other settings; record them in a new one."""
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise Failure(f"--out {out}: unreadable {SETTINGS_FILE} ({one_line(err)})") from None
        differ = [k for k in settings if saved.get(k) != settings[k]]
        if differ:
            shown = ", ".join(
                f"{k} {saved.get(k)!r} there, {settings[k]!r} here" for k in differ[:3]
            )
            if len(differ) > 3:
                shown += f", and {len(differ) - 3} more"
            raise ValueError(
                f"--out {out} holds rows run with other settings ({shown}): rerun with the same "
                "settings, or choose another --out"
            )
        return
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def _optimizer(model: nn.Module, config: TableConfig) -> torch.optim.Optimizer:
    """AdamW as the demo's (weight decay 0.01 on matrices only, betas 0.9 / 0.98)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )


def _initial(system: System, config: TableConfig, device: torch.device) -> nn.Module:
    """The row's untrained model: the same seed for every row (and every rebuild)."""
    torch.manual_seed(config.seed)
    return system.build().to(device)


@dataclasses.dataclass
class _State:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # training seconds, all runs
    wall: float = 0.0  # wall seconds of earlier runs of this row


def _save(path: Path, state: _State, settings: dict, wall: float) -> None:
    with replacing(path) as tmp:
        torch.save(
            {
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "step": state.step,
                "history": [[s, v] for s, v in state.history],
                "seconds": state.seconds,
                "wall": wall,
                "settings": settings,
            },
            tmp,
        )


def _restore(path: Path, state: _State, settings: dict) -> None:
    try:
        device = next(state.model.parameters()).device
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if ckpt["settings"] != settings:
            raise ValueError("other settings")
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
    except Exception as err:  # a truncated or foreign file: whatever the unpickler raises
        raise Failure(
            f"{path}: not a checkpoint of this table run ({one_line(err)[:120]}): delete it to "
            "train the row from the start"
        ) from None
    state.step = int(ckpt["step"])
    state.history = [(int(s), float(v)) for s, v in ckpt["history"]]
    state.seconds = float(ckpt["seconds"])
    state.wall = float(ckpt["wall"])


def _train(
    system: System,
    state: _State,
    config: TableConfig,
    stream: torch.Tensor,
    device: torch.device,
    *,
    progress: bool,
    checkpoint: Callable[[], None],
) -> None:
    """Train ``state`` up to ``config.steps`` (module docstring), checkpointing every
    ``checkpoint_every`` steps; a non-finite loss is a :class:`Failure`."""
    from tqdm import tqdm

    model = state.model.train()
    tokens = config.batch_size * config.seq_len
    bar = tqdm(
        total=config.steps,
        initial=state.step,
        desc=f"{system.name:>12}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        leave=True,
    )
    smooth = None
    try:
        while state.step < config.steps:
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(step_seed(config.seed, state.step, 0, "data"))
            x0 = corpus.random_windows(stream, config.batch_size, config.seq_len, gen).to(device)
            for group in state.optimizer.param_groups:
                group["lr"] = learning_rate(config, state.step)
            loss = system.loss(model, x0, gen, step_seed(config.seed, state.step, 0, "noise"))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise Failure(
                    f"row {system.name}: training loss {value} at step {state.step} (a smaller "
                    "--lr may help; delete its checkpoint to start the row again)"
                )
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            state.optimizer.step()
            state.history.append((state.step, value))
            state.step += 1
            elapsed = time.perf_counter() - start
            state.seconds += elapsed
            smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
            bar.set_postfix_str(f"loss {smooth:.3f}  {tokens / elapsed:,.0f} tok/s")
            bar.update()
            if state.step % config.checkpoint_every == 0 and state.step < config.steps:
                checkpoint()
    finally:
        bar.close()
    model.eval()


def _row(
    system: System,
    config: TableConfig,
    data: corpus.Corpus,
    heldout: torch.Tensor,
    settings: dict,
    folder: Path,
    device: torch.device,
    *,
    progress: bool,
) -> dict:
    """Train (or resume) one row, evaluate it and sample from it; its result dict."""
    start = time.perf_counter()
    model = _initial(system, config, device)
    state = _State(model, _optimizer(model, config))
    ckpt = folder / f"{system.name}.pt"
    if ckpt.exists():
        _restore(ckpt, state, settings)

    def checkpoint() -> None:
        _save(ckpt, state, settings, state.wall + time.perf_counter() - start)

    _train(system, state, config, data.train, device, progress=progress, checkpoint=checkpoint)
    checkpoint()
    batches = batches_of(heldout, device)
    eval_seed = step_seed(config.seed, 0, 0, "eval")
    t0 = time.perf_counter()
    nats, stderr = system.nll(state.model, batches, eval_seed)
    fresh = _initial(system, config, device).eval()
    untrained, untrained_err = system.nll(fresh, batches, eval_seed)
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = system.sample(state.model, config.num_samples, step_seed(config.seed, 0, 0, "sample"))
    sample_seconds = time.perf_counter() - t0
    texts = [corpus.decode(row) for row in tokens.cpu()]
    train_tokens = config.steps * config.batch_size * config.seq_len
    return {
        "name": system.name,
        "label": system.label,
        "kind": "exact NLL" if system.exact else "upper bound",
        "nats_per_byte": nats,
        "bits_per_byte": bits(nats),
        "perplexity": math.exp(nats) if nats < 709.0 else math.inf,
        "stderr_nats_per_byte": stderr,
        "stderr_bits_per_byte": bits(stderr),
        "untrained": {
            "nats_per_byte": untrained,
            "bits_per_byte": bits(untrained),
            "stderr_nats_per_byte": untrained_err,
        },
        "parameters": sum(p.numel() for p in state.model.parameters() if p.requires_grad),
        "train_tokens": train_tokens,
        "train_tokens_per_s": train_tokens / state.seconds if state.seconds > 0 else None,
        "sampling_tokens_per_s": tokens.numel() / sample_seconds if sample_seconds > 0 else None,
        "seconds": {
            "training": state.seconds,
            "evaluation": eval_seconds,
            "sampling": sample_seconds,
            "wall": state.wall + time.perf_counter() - start,
        },
        "final_train_loss": report.final_loss(state.history),
        "sample": report.snippet(texts[0]),
        "samples": texts,
        "history": [[s, v] for s, v in state.history],
        "settings": settings,
    }


def run_table(
    config: TableConfig = TableConfig(),
    *,
    rows: Sequence[str] | str | None = None,
    out: Path | str = Path("table_out"),
    corpus_paths: Sequence[Path | str] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    plot: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train, evaluate and sample every row of ``rows`` (default: all of :data:`ROWS`) under
    ``config`` into ``out`` (module docstring), skipping the rows already finished there; then
    write and print the table of every finished row in ``out``.

    ``corpus_paths``: text files or directories (default: the standard library's source).
    Returns the table dict written to ``table.json`` (:mod:`fastdiff.table.report`) with
    ``"this_run": {"trained": [...], "skipped": [...]}`` added.
    Bad settings raise a one-line ``ValueError`` before any training.
    """
    if not isinstance(config, TableConfig):
        raise TypeError(f"config must be a TableConfig, got {type(config).__name__}")
    names = parse_rows(rows)
    device = torch.device(device)
    out = Path(out)
    data = corpus.load(
        [Path(p) for p in corpus_paths] if corpus_paths else None,
        config.seq_len,
        config.corpus_bytes,
    )
    heldout = corpus.fixed_windows(data.heldout, config.eval_windows, config.seq_len)
    settings = settings_of(config, data, device)
    _check_settings(out, settings)
    folder = out / "rows"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = config.sizes()
    ran: dict[str, list[str]] = {"trained": [], "skipped": []}
    for name in names:
        path = folder / f"{name}.json"
        if path.exists():
            ran["skipped"].append(name)
            continue
        result = _row(
            SYSTEMS[name](sizes),
            config,
            data,
            heldout,
            settings,
            folder,
            device,
            progress=progress,
        )
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        ran["trained"].append(name)
    finished = {}
    for name in ROWS:
        path = folder / f"{name}.json"
        if path.exists():
            finished[name] = json.loads(path.read_text())
    table = report.table(settings, data.summary(), finished)
    echo(report.format_table(table))
    echo(f"JSON: {report.write_json(table, out / 'table.json')}")
    echo(f"Markdown: {report.write_markdown(table, out / 'table.md')}")
    if plot:
        echo(f"PNG: {report.plot(table, out / 'table.png')}")
    return {**table, "this_run": ran}
