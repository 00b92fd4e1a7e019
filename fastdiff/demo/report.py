"""The demo's outputs: the JSON summary, the loss-curve PNG and the printed samples.

JSON summary (``summary.json``), top-level keys (:data:`SUMMARY_KEYS`):

- ``settings``: the command line's settings (objective, model and training sizes, seed,
  device, world size, sampler and its steps; d3pm and gaussian: ``timesteps`` ``T`` and the
  objective's fixed choices) and the model's parameter count,
- ``corpus``: source, file count, train / held-out bytes,
- ``final_train_loss``: mean training loss (nats / token) over the last 10% of the steps,
- ``heldout``: ``{"untrained": x, "trained": y}``, the held-out negative-ELBO estimate in
  nats / token of the model before and after training (same windows, times and noise),
  ``bound`` (``{"untrained": ..., "trained": ...}``, each the ``to_dict()`` of a
  :class:`fastdiff.likelihood.LikelihoodBound`: an upper bound on the held-out NLL) and
  ``bound_method`` (which bound, in words: continuous-time for mdlm / sedd, discrete-time at
  stratified steps for d3pm, over all ``T`` steps for gaussian),
- ``samples``: ``{"unconditional": [text, ...], "infill": [{"prefix", "middle", "suffix",
  "original_middle"}, ...]}``,
- ``timings``: seconds of this run's ``training``, ``evaluation``, ``sampling`` and ``total``
  (its wall time), ``training_all_runs`` (training seconds including the runs a ``--resume``
  continued), ``train_tokens_per_s`` (over all runs) and ``sampling_tokens_per_s``,
- ``history``: ``[[step, loss], ...]``, the training curve.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastdiff.cli_support import replacing

SUMMARY_KEYS = (
    "settings",
    "corpus",
    "final_train_loss",
    "heldout",
    "samples",
    "timings",
    "history",
)


def final_loss(history: list[tuple[int, float]]) -> float:
    """Mean training loss over the last 10% of the steps (at least one)."""
    tail = history[-max(1, len(history) // 10) :]
    return sum(v for _, v in tail) / len(tail)


def write_json(summary: dict, path: Path) -> Path:
    """Write ``summary`` (keys :data:`SUMMARY_KEYS`) as indented JSON, atomically."""
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"summary lacks {missing}")
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def plot(summary: dict, path: Path) -> Path:
    """The training curve (raw and smoothed) with the held-out losses as horizontal lines,
    written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in summary["history"]]
    losses = [v for _, v in summary["history"]]
    smooth, acc = [], None
    for v in losses:
        acc = v if acc is None else 0.97 * acc + 0.03 * v
        smooth.append(acc)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="training loss")
    ax.plot(steps, smooth, color="tab:blue", lw=1.8, label="training loss (smoothed)")
    held = summary["heldout"]
    ax.axhline(held["untrained"], color="tab:red", ls="--", label="held-out, untrained")
    ax.axhline(held["trained"], color="tab:green", ls="--", label="held-out, trained")
    s = summary["settings"]
    name = s["objective"] if s["objective"] != "sedd" else f"{s['objective']}/{s['graph']}"
    ax.set_title(f"fastdiff demo: {name} objective, {s['parameters']:,} parameters")
    ax.set_xlabel("step")
    ax.set_ylabel("negative ELBO estimate (nats / token)")
    top = max(held["untrained"], min(losses[: max(1, len(losses) // 20)], default=0.0))
    ax.set_ylim(0.0, 1.1 * top if top > 0 else None)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def show(text: str) -> str:
    """Text for the terminal: control characters other than newline and tab made visible."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else "\N{REPLACEMENT CHARACTER}" for c in text
    )


def rule(title: str) -> str:
    """A section heading line."""
    return f"\n{'-' * 8} {title} {'-' * max(4, 70 - len(title))}"
