"""``fastdiff table``: every row trains, evaluates and samples under one tiny budget; the AR
likelihood is exact; finished rows are skipped and unfinished ones resume exactly; bad input
is a one-line error."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from fastdiff.demo.model import ModelConfig
from fastdiff.table import ROWS, TableConfig, run_table, systems
from fastdiff.table import command as table_command
from fastdiff.table.models import CausalLM, ar_nll
from fastdiff.table.report import ROW_KEYS, TABLE_KEYS

# a tiny budget: 30 steps of 8 x 16 bytes, enough to learn the byte frequencies
TINY = TableConfig(
    steps=30,
    batch_size=8,
    seq_len=16,
    dim=32,
    depth=1,
    heads=2,
    lr=1e-2,
    eval_windows=8,
    num_t=4,
    sample_steps=8,
    num_samples=2,
    d3pm_steps=16,
    gaussian_steps=20,
    gaussian_width=8,
    checkpoint_every=100,
)
CORPUS = Path(__file__).resolve().parents[1] / "fastdiff" / "nn.py"  # ~35 KB of text


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The whole tiny table, run once: (its out dir, the returned dict)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("table")
        result = run_table(TINY, out=out, corpus_paths=[CORPUS], progress=False, echo=_quiet)
    finally:
        torch.set_num_threads(before)
    return out, result


def _quiet(line: str) -> None:
    pass


def test_every_row_learns_and_its_bound_is_finite(table):
    _, result = table
    assert list(result["rows"]) == list(ROWS)
    assert result["this_run"] == {"trained": list(ROWS), "skipped": []}
    for name, row in result["rows"].items():
        for key in ("nats_per_byte", "stderr_nats_per_byte"):
            assert math.isfinite(row[key]), (name, key)
            assert math.isfinite(row["untrained"][key]), (name, key)
        assert row["bits_per_byte"] == pytest.approx(row["nats_per_byte"] / math.log(2))
        # trained below untrained (the gap is several nats; the s.e. at most ~1.3 here)
        assert row["nats_per_byte"] < row["untrained"]["nats_per_byte"], name
        assert row["train_tokens"] == TINY.steps * TINY.batch_size * TINY.seq_len
        assert len(row["history"]) == TINY.steps
        assert row["parameters"] > 0 and row["train_tokens_per_s"] > 0
        assert row["sampling_tokens_per_s"] > 0
        assert len(row["samples"]) == TINY.num_samples and isinstance(row["sample"], str)
    ar = result["rows"]["ar"]
    assert ar["kind"] == "exact NLL" and ar["stderr_nats_per_byte"] == 0.0
    # the untrained AR model (zero head) is uniform over the 256 bytes: exactly 8 bits / byte
    assert ar["untrained"]["bits_per_byte"] == pytest.approx(8.0, abs=1e-9)
    assert all(r["kind"] == "upper bound" for n, r in result["rows"].items() if n != "ar")


def test_outputs_json_markdown_png(table):
    out, _ = table
    data = json.loads((out / "table.json").read_text())
    assert set(TABLE_KEYS) <= set(data)
    assert set(data["rows"]) == set(ROWS)
    for row in data["rows"].values():
        assert set(ROW_KEYS) <= set(row)
        assert set(row["seconds"]) == {"training", "evaluation", "sampling", "wall"}
    assert data["settings"]["steps"] == TINY.steps
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AR (causal transformer)" in (out / "table.md").read_text()
    assert sorted(p.name for p in (out / "rows").glob("*.json")) == sorted(
        f"{r}.json" for r in ROWS
    )


def test_rerun_skips_finished_rows(table):
    out, _ = table
    before = {p.name: p.read_bytes() for p in (out / "rows").iterdir()}
    lines: list[str] = []
    result = run_table(
        TINY, rows="ar,d3pm", out=out, corpus_paths=[CORPUS], progress=False, echo=lines.append
    )
    assert result["this_run"] == {"trained": [], "skipped": ["ar", "d3pm"]}
    assert {p.name: p.read_bytes() for p in (out / "rows").iterdir()} == before
    assert list(result["rows"]) == list(ROWS)  # the table holds every finished row
    assert "D3PM absorbing" in lines[0]


def test_other_settings_are_refused(table):
    out, _ = table
    other = dataclasses.replace(TINY, steps=31)
    with pytest.raises(
        ValueError, match=r"holds rows run with other settings \(steps 30 there"
    ) as e:
        run_table(other, rows="ar", out=out, corpus_paths=[CORPUS], progress=False, echo=_quiet)
    assert "\n" not in str(e.value)


def test_interrupted_row_resumes_exactly(tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, steps=10, checkpoint_every=4)
    whole = run_table(
        config, rows="ar", out=tmp_path / "a", corpus_paths=[CORPUS], progress=False, echo=_quiet
    )
    calls = itertools.count()
    loss = systems.AR.loss

    def interrupted(self, *args, **kwargs):
        if next(calls) == 6:  # during step 6, after the checkpoint of step 4
            raise KeyboardInterrupt
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(systems.AR, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_table(
            config,
            rows="ar",
            out=tmp_path / "b",
            corpus_paths=[CORPUS],
            progress=False,
            echo=_quiet,
        )
    assert not (tmp_path / "b" / "rows" / "ar.json").exists()
    assert torch.load(tmp_path / "b" / "rows" / "ar.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(systems.AR, "loss", loss)
    resumed = run_table(
        config, rows="ar", out=tmp_path / "b", corpus_paths=[CORPUS], progress=False, echo=_quiet
    )
    a, b = whole["rows"]["ar"], resumed["rows"]["ar"]
    assert b["history"] == a["history"]
    assert b["nats_per_byte"] == a["nats_per_byte"]
    assert b["samples"] == a["samples"]


def test_ar_nll_is_exact_on_an_enumerable_toy():
    """vocab 3, length 3: the 27 windows' probabilities exp(-NLL) sum to 1, with every weight
    random (a model that saw the token it predicts could not normalize)."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=3, max_len=3, dim=8, depth=2, heads=2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    windows = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        probs = torch.exp(-ar_nll(model, windows))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(probs.min()) > 0 and float(probs.max()) < 0.9  # not a degenerate model
    # the first token's distribution is that of BOS alone: the marginal over the rest
    first = probs.reshape(3, 9).sum(-1)
    with torch.no_grad():
        logits = model(torch.full((1, 1), model.bos_id))[0, 0]
    assert torch.allclose(first, torch.softmax(logits, -1), atol=1e-9)


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"--rows: unknown row 'bogus'; expected some of ar,") as e:
        run_table(TINY, rows="ar,bogus", out=tmp_path / "x", progress=False, echo=_quiet)
    assert "\n" not in str(e.value)
    short = tmp_path / "short.txt"
    short.write_text("tiny\n")
    with pytest.raises(ValueError, match="too small for windows of 16 tokens") as e:
        run_table(TINY, out=tmp_path / "x", corpus_paths=[short], progress=False, echo=_quiet)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(ValueError, match=r"steps \(--steps\) must be >= 1, got 0"):
        dataclasses.replace(TINY, steps=0)
    with pytest.raises(ValueError, match="must be a multiple of 2 \\* heads"):
        dataclasses.replace(TINY, dim=30)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "ar,nope"], "--rows: unknown row 'nope'"),
        (["--steps", "0"], "steps (--steps) must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        table_command.main([*argv, "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert err.startswith("python -m fastdiff.table: error: ")


def test_cli_help_and_subcommand_registration(capsys):
    import argparse

    with pytest.raises(SystemExit) as e:
        table_command.main(["--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out
    # the budgets the help states are the configs' own
    d, q, doc = TableConfig(), table_command.QUICK, " ".join(table_command.__doc__.split())
    assert f"{d.steps} steps x {d.batch_size} windows x {d.seq_len} bytes" in doc
    assert f"width {d.dim}, depth {d.depth}, {d.heads} heads" in doc
    assert f"D3PM T = {d.d3pm_steps}; Gaussian T = {d.gaussian_steps}" in doc
    assert f"--quick: {q.steps} steps x {q.batch_size} x {q.seq_len} bytes" in doc
    assert f"width {q.dim}, depth {q.depth}, D3PM T = {q.d3pm_steps}" in doc
    assert f"Gaussian T = {q.gaussian_steps}" in doc
    parser = argparse.ArgumentParser(prog="fastdiff")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    table_command.register(sub)
    args = parser.parse_args(["table", "--quick", "--rows", "ar", "--rows", "mdlm,gaussian"])
    assert args.handler is table_command.run and args.command_parser.prog == "fastdiff table"
    assert table_command.config_of(args).steps == table_command.QUICK.steps
    assert args.rows == ["ar", "mdlm,gaussian"]
