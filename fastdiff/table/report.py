"""The table's outputs: the printed / Markdown table, ``table.json`` and ``table.png``.

``table.json`` (:data:`TABLE_KEYS`): ``settings`` (the shared budget, sizes, corpus and
device), ``corpus`` (source and sizes), ``columns`` (what each row field means) and ``rows``:
``{name: row}`` in table order, each row with the keys :data:`ROW_KEYS`:

- ``nats_per_byte`` / ``bits_per_byte``: the held-out NLL (AR, ``kind = "exact NLL"``) or its
  upper bound (the diffusion rows, ``kind = "upper bound"``); ``perplexity``: ``exp`` of the
  nats; ``stderr_*``: the Monte Carlo standard error of the bound (0 for the exact AR NLL);
- ``untrained``: the same number for the row's model before training;
- ``parameters``; ``train_tokens`` (``steps x batch x length``), ``train_tokens_per_s`` (over
  the training steps only), ``sampling_tokens_per_s`` (the unconditional samples' bytes over
  the sampler's seconds); ``seconds``: ``training``, ``evaluation`` (both bounds),
  ``sampling`` and ``wall`` (the row's whole time, resumed runs included);
- ``final_train_loss`` (mean of the last 10% of steps), ``history`` ``[[step, loss]]``: each
  row's own training loss (AR: NLL per byte; MDLM / SEDD: the NELBO estimate per byte; D3PM:
  one uniformly drawn step's KL term plus ``0.01`` cross entropy; Gaussian: Diffusion-LM's
  MSE + prior + rounding loss per position, not in nats);
- ``sample`` (the first unconditional sample, ``repr``-escaped and truncated), ``samples``
  (all of them, decoded text), ``settings``.

``table.png``: bits per byte of every row as bars with +-2 standard error bars (the
untrained model's value as a marker), and every row's smoothed training curve against
training tokens on one log axis.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fastdiff.cli_support import replacing

TABLE_KEYS = ("settings", "corpus", "columns", "rows")
ROW_KEYS = (
    "name",
    "label",
    "kind",
    "nats_per_byte",
    "bits_per_byte",
    "perplexity",
    "stderr_nats_per_byte",
    "stderr_bits_per_byte",
    "untrained",
    "parameters",
    "train_tokens",
    "train_tokens_per_s",
    "sampling_tokens_per_s",
    "seconds",
    "final_train_loss",
    "sample",
    "samples",
    "history",
    "settings",
)
COLUMNS = {
    "nats_per_byte": "held-out NLL (AR, exact) or its upper bound (diffusion), nats / byte",
    "bits_per_byte": "the same in bits / byte",
    "perplexity": "exp(nats_per_byte), per byte",
    "stderr_bits_per_byte": "Monte Carlo standard error of the bound (0: exact)",
    "untrained": "the same numbers for the untrained model",
    "parameters": "trainable parameters",
    "train_tokens_per_s": "training throughput (bytes / s)",
    "sampling_tokens_per_s": "unconditional sampling throughput (bytes / s)",
    "seconds": "training, evaluation, sampling and wall seconds of the row",
}
SNIPPET = 60
CURVE_NOTES = {"d3pm": " (one step's KL term)", "gaussian": " (MSE + rounding, not nats)"}


def final_loss(history: list[tuple[int, float]]) -> float:
    """Mean training loss over the last 10% of the steps (at least one)."""
    tail = history[-max(1, len(history) // 10) :]
    return sum(v for _, v in tail) / len(tail)


def snippet(text: str, width: int = SNIPPET) -> str:
    """``repr`` of ``text`` without its quotes, cut to ``width`` characters (``...`` added)."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def table(settings: dict, corpus: dict, rows: dict[str, dict]) -> dict:
    """The table dict (keys :data:`TABLE_KEYS`)."""
    return {"settings": settings, "corpus": corpus, "columns": COLUMNS, "rows": rows}


def _num(value: float | None, spec: str) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None else str(value)
    return format(value, spec)


def _lines(data: dict) -> tuple[list[str], list[list[str]]]:
    header = [
        "row",
        "kind",
        "nats/B",
        "bits/B",
        "+-s.e.",
        "ppl",
        "untrained",
        "params",
        "train B/s",
        "sample B/s",
        "wall s",
    ]
    body = []
    for r in data["rows"].values():
        body.append(
            [
                r["label"],
                r["kind"],
                _num(r["nats_per_byte"], ".3f"),
                _num(r["bits_per_byte"], ".3f"),
                _num(r["stderr_bits_per_byte"], ".3f"),
                _num(r["perplexity"], ".2f"),
                _num(r["untrained"]["bits_per_byte"], ".3f"),
                f"{r['parameters']:,}",
                _num(r["train_tokens_per_s"], ",.0f"),
                _num(r["sampling_tokens_per_s"], ",.0f"),
                _num(r["seconds"]["wall"], ".0f"),
            ]
        )
    return header, body


def format_table(data: dict) -> str:
    """The table as aligned text, then one unconditional sample per row."""
    header, body = _lines(data)
    if not body:
        return "(no finished rows)"
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    s = data["settings"]
    out = [
        f"held-out windows of {s['seq_len']} bytes ({s['eval_windows']} windows); "
        f"{s['steps']} steps x {s['batch_size']} x {s['seq_len']} training bytes per row; "
        f"dim {s['dim']}, depth {s['depth']}, heads {s['heads']}; seed {s['seed']}; "
        f"{s['device']}",
        line(header),
        line(["-" * w for w in widths]),
        *(line(row) for row in body),
        "",
        "unconditional samples (repr, truncated):",
    ]
    label_width = max(len(r["label"]) for r in data["rows"].values())
    out += [f"  {r['label']:<{label_width}}  {r['sample']}" for r in data["rows"].values()]
    return "\n".join(out)


def write_json(data: dict, path: Path) -> Path:
    """Write the table dict as indented JSON, atomically."""
    missing = [k for k in TABLE_KEYS if k not in data]
    if missing:
        raise ValueError(f"the table lacks {missing}")
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_markdown(data: dict, path: Path) -> Path:
    """Write the table as Markdown, atomically."""
    header, body = _lines(data)
    rows = [header, ["---"] * len(header), *body]
    text = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    samples = "\n".join(f"- {r['label']}: `{r['sample']}`" for r in data["rows"].values())
    with replacing(path) as tmp:
        tmp.write_text(f"{text}\n\nUnconditional samples:\n\n{samples}\n")
    return path


def _smooth(values: list[float], keep: float = 0.97) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else keep * acc + (1.0 - keep) * v
        out.append(acc)
    return out


def plot(data: dict, path: Path) -> Path:
    """Bits per byte with error bars, and the training curves (module docstring), written
    atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(data["rows"].values())
    s = data["settings"]
    fig, (bar_ax, curve_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = list(range(len(rows)))
    colors = [f"C{i}" for i in x]
    bar_ax.bar(
        x,
        [r["bits_per_byte"] for r in rows],
        yerr=[2.0 * r["stderr_bits_per_byte"] for r in rows],
        color=colors,
        capsize=4,
        label="trained (+-2 s.e.)",
    )
    trained = [r["bits_per_byte"] + 2.0 * r["stderr_bits_per_byte"] for r in rows]
    untrained = [r["untrained"]["bits_per_byte"] for r in rows]
    high = max([v for v in trained if math.isfinite(v)], default=1.0)
    near = [v for v in untrained if math.isfinite(v) and v <= 2.5 * high]
    top = 1.3 * max([high, *near])
    shown = [min(v, 0.97 * top) if math.isfinite(v) else 0.97 * top for v in untrained]
    bar_ax.scatter(x, shown, marker="_", s=300, color="black", label="untrained", zorder=3)
    for i, (r, u, v) in enumerate(zip(rows, untrained, shown)):
        bar_ax.annotate(
            f"{r['bits_per_byte']:.2f}",
            (i, r["bits_per_byte"]),
            ha="center",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=8,
        )
        if v < u:  # off the chart: marked at the top, with its value
            bar_ax.annotate(
                f"untrained {u:.0f}",
                (i, v),
                ha="center",
                va="top",
                xytext=(0, -4),
                textcoords="offset points",
                fontsize=7,
            )
    bar_ax.set_ylim(0.0, top)
    bar_ax.set_xticks(x, [r["name"] for r in rows], rotation=20)
    bar_ax.set_ylabel("held-out bits / byte (AR exact, others upper bounds)")
    bar_ax.set_title("held-out likelihood")
    bar_ax.grid(axis="y", alpha=0.3)
    bar_ax.legend(loc="upper left", ncol=2, fontsize=8)
    per_step = s["batch_size"] * s["seq_len"]
    for r, color in zip(rows, colors):
        steps = [(step + 1) * per_step for step, _ in r["history"]]
        losses = [max(v, 1e-6) for _, v in r["history"]]
        name = r["name"] + CURVE_NOTES.get(r["name"], "")
        curve_ax.plot(steps, _smooth(losses), color=color, lw=1.5, label=name)
    curve_ax.set_yscale("log")
    curve_ax.set_xlabel("training bytes")
    curve_ax.set_ylabel("training loss (each row's own objective, smoothed)")
    curve_ax.set_title("training curves")
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(loc="center", fontsize=8)
    fig.suptitle(
        f"fastdiff table: dim {s['dim']}, depth {s['depth']}, {s['steps']} steps x "
        f"{s['batch_size']} x {s['seq_len']} bytes per row"
    )
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
