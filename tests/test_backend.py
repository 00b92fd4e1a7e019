"""Backend selection: env var, set_backend, context manager, kernel registration, light import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastdiff
from fastdiff import backend


def _reference(*args):
    return "reference"


def _kernel(*args):
    return "kernel"


@pytest.fixture
def fake_kernel(monkeypatch):
    """Register a kernel for a made-up op (without touching the real registry)."""
    # import the real kernels first, under the interpreter the root conftest sets: imported
    # after the delenv below they would be compiled-mode kernels for the rest of the session
    backend.registered_kernels()
    monkeypatch.setitem(backend._kernels, "fake_op", _kernel)
    monkeypatch.setattr(backend, "_global_choice", None)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return "fake_op"


def _native(*args):
    return "native"


def test_default_is_auto_and_cpu_runs_the_reference_without_a_native_kernel(fake_kernel):
    assert fastdiff.get_backend() == "auto"
    impl = backend.resolve(fake_kernel, _reference, torch.device("cpu"))
    assert impl is _reference


def test_auto_on_cpu_runs_the_native_kernel_when_the_extension_is_built(fake_kernel, monkeypatch):
    monkeypatch.setitem(backend._natives, fake_kernel, _native)
    monkeypatch.setattr(backend, "_native_state", [True])
    assert backend.resolve(fake_kernel, _reference, torch.device("cpu")) is _native
    # CUDA tensors never reach a native kernel; the reference backend never does either
    assert backend.resolve(fake_kernel, _reference, torch.device("cuda", 0)) is _kernel
    with fastdiff.use_backend("reference"):
        assert backend.resolve(fake_kernel, _reference, torch.device("cpu")) is _reference


def test_auto_on_cpu_without_the_extension_warns_once_and_runs_the_reference(
    fake_kernel, monkeypatch
):
    from fastdiff import _extension

    monkeypatch.setitem(backend._natives, fake_kernel, _native)
    monkeypatch.setattr(backend, "_native_state", [False])
    monkeypatch.setattr(_extension, "_warned", False)
    monkeypatch.setattr(_extension, "_reason", "ImportError: simulated")
    with pytest.warns(RuntimeWarning, match="CPU ops run the PyTorch reference") as record:
        assert backend.resolve(fake_kernel, _reference, torch.device("cpu")) is _reference
        assert backend.resolve(fake_kernel, _reference, torch.device("cpu")) is _reference
    assert len(record) == 1


def test_forced_native_errors_are_clear(fake_kernel, monkeypatch):
    monkeypatch.setitem(backend._natives, fake_kernel, _native)
    monkeypatch.setattr(backend, "_native_state", [True])
    with fastdiff.use_backend("native"):
        assert backend.resolve(fake_kernel, _reference, torch.device("cpu")) is _native
        with pytest.raises(RuntimeError, match="native kernels run on CPU tensors"):
            backend.resolve(fake_kernel, _reference, torch.device("cuda", 0))
        with pytest.raises(NotImplementedError, match="has no native kernel"):
            backend.resolve("op_without_kernel", _reference, torch.device("cpu"))
        monkeypatch.setattr(backend, "_native_state", [False])
        with pytest.raises(RuntimeError, match=r"fastdiff\._C is not available"):
            backend.resolve(fake_kernel, _reference, torch.device("cpu"))


def test_auto_picks_the_kernel_for_cuda_tensors(fake_kernel):
    if not backend.triton_available():
        pytest.fail("triton is a dependency on Linux and must import")
    impl = backend.resolve(fake_kernel, _reference, torch.device("cuda", 0))
    assert impl is _kernel


def test_auto_falls_back_when_no_kernel_is_registered(fake_kernel):
    impl = backend.resolve("op_without_kernel", _reference, torch.device("cuda", 0))
    assert impl is _reference


def test_env_var_selects_backend(fake_kernel, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "reference")
    assert fastdiff.get_backend() == "reference"
    assert backend.resolve(fake_kernel, _reference, torch.device("cuda", 0)) is _reference
    monkeypatch.setenv(backend.ENV_VAR, "TRITON")
    assert fastdiff.get_backend() == "triton"


def test_set_backend_overrides_env_and_context_overrides_both(fake_kernel, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    fastdiff.set_backend("reference")
    assert fastdiff.get_backend() == "reference"
    with fastdiff.use_backend("auto"):
        assert fastdiff.get_backend() == "auto"
        with fastdiff.use_backend("triton"):
            assert fastdiff.get_backend() == "triton"
        assert fastdiff.get_backend() == "auto"
    assert fastdiff.get_backend() == "reference"


def test_context_manager_restores_on_error(fake_kernel):
    with pytest.raises(RuntimeError, match="boom"), fastdiff.use_backend("reference"):
        raise RuntimeError("boom")
    assert fastdiff.get_backend() == "auto"


def test_unknown_backend_names_are_rejected(fake_kernel, monkeypatch):
    with pytest.raises(ValueError, match="unknown fastdiff backend"):
        fastdiff.set_backend("cuda")
    with pytest.raises(ValueError, match="unknown fastdiff backend"), fastdiff.use_backend("x"):
        pass
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="unknown fastdiff backend"):
        fastdiff.get_backend()


def test_forced_triton_on_cpu_without_interpreter_raises(fake_kernel):
    with fastdiff.use_backend("triton"), pytest.raises(RuntimeError, match="CUDA tensors"):
        backend.resolve(fake_kernel, _reference, torch.device("cpu"))


def test_forced_triton_on_cpu_with_interpreter_runs_kernel(fake_kernel, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with fastdiff.use_backend("triton"):
        assert backend.resolve(fake_kernel, _reference, torch.device("cpu")) is _kernel


def test_forced_triton_without_kernel_raises(fake_kernel):
    with fastdiff.use_backend("triton"), pytest.raises(NotImplementedError, match="no Triton"):
        backend.resolve("op_without_kernel", _reference, torch.device("cuda", 0))


def test_public_ops_follow_the_backend_choice(monkeypatch):
    """A kernel registered under a real op name is what the public function calls."""
    calls = []

    def fake_corrupt(x0, sigma, fixed, seed, offset, graph, vocab, mask_id):
        calls.append(graph)
        return x0.clone()

    monkeypatch.setitem(backend._kernels, "corrupt", fake_corrupt)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x0 = torch.tensor([1, 2, 3])
    with fastdiff.use_backend("triton"):
        out = fastdiff.add_noise(x0, sigma=5.0, graph="absorb", vocab_size=5, mask_id=4, seed=0)
    assert calls == ["absorb"] and torch.equal(out, x0)
    with fastdiff.use_backend("reference"):
        out = fastdiff.add_noise(x0, sigma=50.0, graph="absorb", vocab_size=5, mask_id=4, seed=0)
    assert calls == ["absorb"] and torch.equal(out, torch.full_like(x0, 4))


def test_import_is_light_and_works_without_triton():
    """Importing fastdiff must not import triton, and must work when triton is missing."""
    code = (
        "import sys\n"
        "import fastdiff\n"
        "assert 'triton' not in sys.modules, 'fastdiff imported triton eagerly'\n"
        "sys.modules['triton'] = None  # make `import triton` fail from here on\n"
        "from fastdiff import backend\n"
        "backend.triton_available.cache_clear()\n"
        "backend._loaded.clear()\n"
        "assert not backend.triton_available()\n"
        "import torch\n"
        "x = fastdiff.add_noise(\n"
        "    torch.tensor([0, 1]), sigma=1.0, graph='uniform', vocab_size=3, seed=1\n"
        ")\n"
        "print(backend.resolve('score_entropy_absorb', print, torch.device('cuda')) is print)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (backend.ENV_VAR, "TRITON_INTERPRET")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "True"


def test_stream_draws_outside_the_ops_take_the_native_draw_on_cpu(monkeypatch):
    """Samplers and bounds draw their own noise through draw_function: native on the CPU
    (when built), the reference under the reference backend and for CUDA tensors."""
    from fastdiff import random as frandom

    monkeypatch.setitem(backend._natives, "uniform", _native)
    monkeypatch.setattr(backend, "_native_state", [True])
    cpu = torch.device("cpu")
    assert backend.draw_function("uniform", frandom.uniform, cpu) is _native
    assert backend.draw_function("uniform", frandom.uniform, torch.device("cuda", 0)) is (
        frandom.uniform
    )
    with fastdiff.use_backend("reference"):
        assert backend.draw_function("uniform", frandom.uniform, cpu) is frandom.uniform
    monkeypatch.setattr(backend, "_native_state", [False])
    assert backend.draw_function("uniform", frandom.uniform, cpu) is frandom.uniform
