"""The command line as a new user meets it, through real processes (``python -m fastdiff``): no
work lost (an earlier run's outputs, a folder in use, Ctrl-C, a diverging run, a resume with
other model sizes) and every error one line on stderr with a non-zero exit status and no
traceback (bad checkpoints, corpora, devices, thread counts, ``bench --compare`` files, an
unwritable ``--out``). Tiny models and a handful of steps: about a minute on two cores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastdiff.cli_support import replacing

REPO = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--dim", "32", "--depth", "1", "--heads", "2", "--seq-len", "32"]
TINY += ["--batch-size", "8", "--sample-steps", "4", "--num-samples", "2", "--eval-windows", "8"]
TINY += ["--corpus-bytes", "200000", "--no-progress", "--no-plot", "--threads", "1"]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
}


def _default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it (a background parent may ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m fastdiff ARGV``, finished, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fastdiff", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=120,
    )


def _start(*argv: str | Path, stderr: Path) -> subprocess.Popen:
    """``python -m fastdiff ARGV`` in the background, stderr to the file ``stderr``."""
    with open(stderr, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fastdiff", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=ENV,
            preexec_fn=_default_sigint,
        )


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _error(proc: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """The one stderr line of a failed command: exit ``status``, no traceback, no usage block,
    the line naming each of ``words``."""
    assert proc.returncode == status, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(("fastdiff demo: ", "fastdiff bench: ")), line
    for word in words:
        assert word in line, (word, line)
    return line


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding a finished 3-step run (checkpoint.pt, summary.json): tests copy it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    _ok(_run("demo", "--out", out, *TINY, "--steps", "3"))
    return out


def _copy(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


# --------------------------------------------------------------------------------------------
# no lost work
# --------------------------------------------------------------------------------------------


def test_an_earlier_runs_outputs_are_refused_unless_resumed_or_overwritten(trained, tmp_path):
    out = _copy(trained, tmp_path / "run")
    ckpt = out / "checkpoint.pt"
    before = ckpt.read_bytes()
    line = _error(_run("demo", "--out", out, *TINY, "--steps", "3"), 1, "--overwrite")
    assert f"--resume {ckpt}" in line and "checkpoint.pt" in line
    assert ckpt.read_bytes() == before
    # --resume of that folder's own checkpoint needs no --overwrite
    resumed = _ok(_run("demo", "--out", out, *TINY, "--steps", "4", "--resume", ckpt))
    summary = json.loads((out / "summary.json").read_text())
    assert [s for s, _ in summary["history"]] == [0, 1, 2, 3]
    timings = summary["timings"]  # this run's wall time holds this run's training time
    assert timings["training"] <= timings["total"]
    assert timings["training_all_runs"] > timings["training"] > 0
    assert "training in all runs" in resumed.stdout
    _ok(_run("demo", "--out", out, *TINY, "--steps", "2", "--overwrite"))
    assert len(json.loads((out / "summary.json").read_text())["history"]) == 2


def test_an_unwritable_out_is_reported_before_any_work(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anyway: a path under a regular file
            (tmp_path / "a-file").write_text("x")
            out = tmp_path / "a-file" / "sub"
        else:
            out = folder / "sub"
        proc = _run("demo", "--out", out, *TINY, "--steps", "3")
        _error(proc, 1, f"--out {out}", "cannot write")
        assert "corpus:" not in proc.stdout  # failed before loading the data
        assert not out.exists()
    finally:
        folder.chmod(0o755)


def test_a_folder_in_use_is_refused_and_ctrl_c_saves_a_run_that_resumes(tmp_path):
    """One run trains into ``out``: a second one into the same folder fails with one line;
    Ctrl-C stops the first at the end of a step with exit status 130, a checkpoint and the
    command that continues it, which then completes."""
    out = tmp_path / "run"
    stderr = tmp_path / "stderr.txt"
    with_bar = [a for a in TINY if a != "--no-progress"]  # the bar says when training runs
    first = _start("demo", "--out", out, *with_bar, "--steps", "100000", stderr=stderr)
    try:
        lock = out / ".fastdiff-demo.lock"
        _wait_for(lambda: lock.is_file() and lock.read_text().strip(), "the first run's lock")
        _error(_run("demo", "--out", out, *TINY, "--steps", "3"), 1, "in use", str(first.pid))
        _wait_for(lambda: "training (" in stderr.read_text(), "the training bar")
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    text = stderr.read_text()
    assert first.returncode == 130, text[-2000:]
    assert "Traceback" not in text
    ckpt = out / "checkpoint.pt"
    line = text.strip().splitlines()[-1]
    assert line.startswith("fastdiff demo: interrupted at step") and f"--resume {ckpt}" in line
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 1 <= step < 100000 and not lock.exists()
    # the printed command continues the run (here shortened to two more steps)
    command = line.split("continue with: ", 1)[1].split()
    assert command[:2] == ["fastdiff", "demo"] and command[-2:] == ["--resume", str(ckpt)]
    _ok(_run(*command[1:], "--steps", str(step + 2)))
    summary = json.loads((out / "summary.json").read_text())
    assert [s for s, _ in summary["history"]] == list(range(step + 2))


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path):
    out = _copy(trained, tmp_path / "run")
    ckpt = out / "checkpoint.pt"
    before = ckpt.read_bytes()
    argv = ["demo", "--out", out, *TINY, "--resume", ckpt, "--steps", "20", "--lr", "inf"]
    line = _error(_run(*argv, "--checkpoint-every", "1"), 1, "diverged", "--lr")
    assert f"last good checkpoint is {ckpt} (step 3)" in line
    assert ckpt.read_bytes() == before
    # a new run that diverges before its first checkpoint writes none
    fresh = tmp_path / "fresh"
    line = _error(_run("demo", "--out", fresh, *TINY, "--steps", "20", "--lr", "inf"), 1)
    assert "diverged" in line and "no checkpoint was written" in line
    assert not (fresh / "checkpoint.pt").exists()


def test_resume_with_other_model_sizes_is_refused(trained, tmp_path):
    ckpt = trained / "checkpoint.pt"
    argv = ["demo", "--out", tmp_path / "b", *TINY, "--resume", ckpt, "--dim", "64", "--depth", "1"]
    line = _error(_run(*argv), 2, "--dim 32", "--dim 64")
    assert "--depth" not in line  # the same depth is not a difference


def test_replacing_writes_whole_files_under_names_of_their_own(tmp_path):
    path = tmp_path / "out.json"
    with replacing(path) as a, replacing(path) as b:
        assert a != b and a.parent == b.parent == tmp_path
        a.write_text("a")
        b.write_text("b")
    assert path.read_text() == "a"  # the outer block ends last: its file stays
    with pytest.raises(RuntimeError), replacing(path) as c:
        c.write_text("partial")
        raise RuntimeError
    assert path.read_text() == "a" and sorted(tmp_path.iterdir()) == [path]


# --------------------------------------------------------------------------------------------
# one line per error
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "JSON", "empty", "folder"])
def test_a_bad_checkpoint_is_one_line(kind, trained, tmp_path):
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        data = (trained / "checkpoint.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        bad.write_bytes(os.urandom(4096))
    elif kind == "JSON":
        bad.write_text(json.dumps({"model": [1, 2]}))
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.mkdir()
    line = _error(_run("demo", "--out", tmp_path / "o", *TINY, "--resume", bad), 2)
    assert f"--resume {bad}" in line


@pytest.mark.parametrize("kind", ["empty file", "empty folder", "folder of empty files"])
def test_an_empty_corpus_is_one_line(kind, tmp_path):
    corpus = tmp_path / "corpus"
    if kind == "empty file":
        corpus.write_bytes(b"")
    else:
        corpus.mkdir()
        if kind == "folder of empty files":
            (corpus / "a.txt").write_bytes(b"")
    line = _error(_run("demo", "--out", tmp_path / "o", *TINY, "--corpus", corpus), 2)
    assert f"--corpus {corpus}" in line and "nothing to train on" in line


def test_a_binary_corpus_trains_with_one_warning(tmp_path):
    text, binary = tmp_path / "notes.txt", tmp_path / "image.bin"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 60)
    binary.write_bytes(bytes(range(256)) * 8)  # NUL bytes, invalid UTF-8
    proc = _ok(
        _run("demo", "--out", tmp_path / "o", *TINY, "--steps", "1", "--corpus", text, binary)
    )
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("warning: --corpus: 1 of 2 files") and str(binary) in line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--device", "tpu"], ["--device tpu"]),
        (["--threads", "-3"], ["--threads", "-3"]),
        (["--steps", "0"], ["--steps", "0"]),
    ],
)
def test_a_bad_demo_setting_is_one_line_of_the_demo(argv, words, tmp_path):
    proc = _run("demo", "--out", tmp_path / "o", *argv)
    line = _error(proc, 2, *words)
    assert line.startswith("fastdiff demo: error: ") and "usage: fastdiff [-h]" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["missing", "folder", "bad JSON", "JSON list"])
def test_bench_compare_of_a_bad_file_is_one_line(kind, tmp_path):
    bad = tmp_path / "b.json"
    if kind == "folder":
        bad.mkdir()
    elif kind == "bad JSON":
        bad.write_text('{"schema_version": 1,')
    elif kind == "JSON list":
        bad.write_text("[]")
    _error(_run("bench", "--compare", bad, bad), 2, f"--compare {bad}")


def test_bench_quick_writes_into_the_current_directory(tmp_path):
    results = REPO / "benchmarks" / "results"
    before = sorted(results.iterdir()) if results.is_dir() else []
    argv = ["bench", "--quick", "--ops", "add_noise_absorb", "--providers", "reference"]
    proc = _ok(_run(*argv, "--device", "cpu", "--no-plot", "--no-progress", cwd=tmp_path))
    (written,) = (tmp_path / "fastdiff_bench").glob("cpu-quick-*.json")
    assert f"JSON: {written.relative_to(tmp_path)}" in proc.stdout
    assert (sorted(results.iterdir()) if results.is_dir() else []) == before
