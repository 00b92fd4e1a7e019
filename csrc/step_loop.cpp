// fastdiff._C: the sampler step loop in C++ (see fastdiff/samplers/loop.py for the contract).
//
// One translation unit: the loop itself (ATen only, no Python) and its pybind11 binding, which
// wraps Python callables so that each call takes the GIL and nothing else does. The Python
// engine `_python_loop` in loop.py runs the same statements in the same order; the tests check
// that both give identical tokens, step counts, call counts and trajectories.

#include <torch/extension.h>
#include <torch/script.h>

#include <cstring>
#include <functional>
#include <optional>
#include <vector>

namespace py = pybind11;

namespace fastdiff {

using Denoiser = std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>;
using Update = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>;
using Final = std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>;
using Callback = std::function<void(int64_t, const at::Tensor&)>;

struct LoopSpec {
  at::Tensor inputs;  // [steps] time input of each step
  at::Tensor fixed;   // undefined, or bool broadcastable to x (trailing dims of size 1)
  std::optional<int64_t> mask_id;
  bool cache = false;
  std::optional<double> final_input;
  bool trajectory = false;
  int64_t check_every = 1;
};

struct LoopOutput {
  at::Tensor x;
  int64_t steps_run = 0;
  int64_t denoiser_calls = 0;
  std::vector<at::Tensor> trajectory;
};

namespace {

bool cpu_contiguous(const at::Tensor& t) { return t.device().is_cpu() && t.is_contiguous(); }

// Whether some non-fixed position of x equals mask_id: ((x == m) & ~fixed).any().
bool any_masked(const at::Tensor& x, const at::Tensor& fixed, int64_t m) {
  const bool fixed_ok = !fixed.defined() || (cpu_contiguous(fixed) && fixed.numel() == x.numel());
  if (cpu_contiguous(x) && x.scalar_type() == at::kLong && fixed_ok) {
    const int64_t* p = x.const_data_ptr<int64_t>();
    const bool* f = fixed.defined() ? fixed.const_data_ptr<bool>() : nullptr;
    for (int64_t k = 0, n = x.numel(); k < n; ++k) {
      if (p[k] == m && !(f != nullptr && f[k])) return true;
    }
    return false;
  }
  at::Tensor masked = x.eq(m);
  if (fixed.defined()) masked = masked.logical_and(fixed.logical_not());
  return masked.any().item<bool>();
}

// torch.where(fixed, x0, xn): a byte copy per fixed row on the CPU, at::where elsewhere.
at::Tensor apply_fixed(const at::Tensor& fixed, const at::Tensor& x0, const at::Tensor& xn) {
  if (cpu_contiguous(fixed) && cpu_contiguous(x0) && cpu_contiguous(xn) &&
      x0.sizes() == xn.sizes() && x0.scalar_type() == xn.scalar_type() && fixed.numel() > 0 &&
      xn.numel() % fixed.numel() == 0) {
    at::Tensor out = at::empty_like(xn, at::MemoryFormat::Contiguous);
    const size_t row = static_cast<size_t>(xn.numel() / fixed.numel()) * xn.element_size();
    const bool* f = fixed.const_data_ptr<bool>();
    const char* a = static_cast<const char*>(x0.const_data_ptr());
    const char* b = static_cast<const char*>(xn.const_data_ptr());
    char* o = static_cast<char*>(out.mutable_data_ptr());
    for (int64_t k = 0, n = fixed.numel(); k < n; ++k) {
      std::memcpy(o + k * row, (f[k] ? a : b) + k * row, row);
    }
    return out;
  }
  return at::where(fixed, x0, xn);
}

// Sequences (dim 0) whose tokens differ from `seen`: (x != seen).reshape(B, -1).any(1).
at::Tensor changed_rows(const at::Tensor& x, const at::Tensor& seen) {
  if (cpu_contiguous(x) && cpu_contiguous(seen) && x.sizes() == seen.sizes() &&
      x.scalar_type() == seen.scalar_type() && at::isIntegralType(x.scalar_type(), false)) {
    const int64_t batch = x.size(0);
    at::Tensor out = at::empty({batch}, x.options().dtype(at::kBool));
    const size_t row = static_cast<size_t>(batch > 0 ? x.numel() / batch : 0) * x.element_size();
    const char* a = static_cast<const char*>(x.const_data_ptr());
    const char* b = static_cast<const char*>(seen.const_data_ptr());
    bool* o = out.mutable_data_ptr<bool>();
    for (int64_t k = 0; k < batch; ++k) o[k] = std::memcmp(a + k * row, b + k * row, row) != 0;
    return out;
  }
  return x.ne(seen).reshape({x.size(0), -1}).any(1);
}

void check_next(const at::Tensor& xn, const at::Tensor& x, const char* who) {
  TORCH_CHECK_VALUE(xn.sizes() == x.sizes() && xn.scalar_type() == x.scalar_type() &&
                        xn.device() == x.device(),
                    who, " must return a tensor shaped like x ", x.sizes(), " (", x.scalar_type(),
                    ", ", x.device(), "), got ", xn.sizes(), " (", xn.scalar_type(), ", ",
                    xn.device(), ")");
}

void check_batch(const at::Tensor& out, int64_t batch) {
  TORCH_CHECK_VALUE(out.dim() >= 1 && out.size(0) == batch,
                    "with cache=True the denoiser output must have the batch (dim 0) of its "
                    "input, ",
                    batch, ", got shape ", out.sizes());
}

}  // namespace

LoopOutput run_step_loop(const Denoiser& denoiser, const Update& update, const Final& final_fn,
                         const Callback& callback, at::Tensor x, const LoopSpec& spec) {
  at::NoGradGuard no_grad;
  const int64_t steps = spec.inputs.size(0);
  const int64_t batch = x.size(0);
  const at::Tensor x0 = x;
  const at::Tensor times = spec.inputs.unsqueeze(1).expand({steps, batch});  // row i: time of step i
  LoopOutput res;
  at::Tensor cached, seen;  // model output for the whole batch, and the tokens it was computed on
  for (int64_t i = 0; i < steps; ++i) {
    if (spec.mask_id && i % spec.check_every == 0 && !any_masked(x, spec.fixed, *spec.mask_id)) {
      break;
    }
    const at::Tensor time = times.select(0, i);
    at::Tensor out;
    if (!spec.cache || !cached.defined()) {
      out = denoiser(x, time);
      ++res.denoiser_calls;
      if (spec.cache) {
        check_batch(out, batch);
        cached = out;
        seen = x;
      }
    } else {
      const at::Tensor idx = changed_rows(x, seen).nonzero().squeeze(1);
      const int64_t n = idx.size(0);
      if (n == batch) {
        cached = denoiser(x, time);
        check_batch(cached, batch);
        ++res.denoiser_calls;
      } else if (n > 0) {
        const at::Tensor part = denoiser(x.index_select(0, idx), time.narrow(0, 0, n));
        check_batch(part, n);
        ++res.denoiser_calls;
        cached = cached.index_copy(0, idx, part);
      }
      seen = x;
      out = cached;
    }
    at::Tensor xn = update(out, x, i);
    check_next(xn, x, "update");
    if (spec.fixed.defined()) xn = apply_fixed(spec.fixed, x0, xn);
    x = xn;
    res.steps_run = i + 1;
    if (callback) callback(i, x);
    if (spec.trajectory) res.trajectory.push_back(x.clone());
  }
  if (final_fn) {
    const at::Tensor time = at::full({batch}, *spec.final_input, spec.inputs.options());
    const at::Tensor out = denoiser(x, time);
    ++res.denoiser_calls;
    at::Tensor xn = final_fn(out, x);
    check_next(xn, x, "final");
    if (spec.fixed.defined()) xn = apply_fixed(spec.fixed, x0, xn);
    x = xn;
    if (spec.trajectory) res.trajectory.push_back(x.clone());
  }
  res.x = x;
  return res;
}

namespace {

at::Tensor to_tensor(const py::object& r, const char* who) {
  if (!THPVariable_Check(r.ptr())) {
    throw py::type_error(std::string(who) + " must return a torch.Tensor, got " +
                         std::string(py::str(py::type::of(r).attr("__name__"))));
  }
  return THPVariable_Unpack(r.ptr());
}

// Binding: Python callables are held by the caller's frame for the whole call; every call into
// Python takes the GIL, the loop itself runs without it. A scripted / traced denoiser is passed
// as its C++ module (`module._c`) and runs without the GIL.
py::tuple run_loop_py(const py::object& denoiser, bool scripted, at::Tensor x, at::Tensor inputs,
                      const py::object& update, std::optional<at::Tensor> fixed,
                      std::optional<int64_t> mask_id, bool cache, const py::object& final_fn,
                      std::optional<double> final_input, const py::object& callback,
                      bool trajectory, int64_t check_every) {
  LoopSpec spec;
  spec.inputs = std::move(inputs);
  if (fixed) spec.fixed = *fixed;
  spec.mask_id = mask_id;
  spec.cache = cache;
  spec.final_input = final_input;
  spec.trajectory = trajectory;
  spec.check_every = check_every;
  TORCH_CHECK_VALUE(check_every >= 1, "check_every must be >= 1, got ", check_every);
  TORCH_CHECK_VALUE(spec.inputs.dim() == 1, "inputs must be 1-D [steps]");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have a batch dimension");
  TORCH_CHECK_VALUE(final_fn.is_none() || final_input.has_value(),
                    "final needs final_input");

  Denoiser den;
  std::optional<torch::jit::Module> module;
  if (scripted) {
    module = denoiser.cast<torch::jit::Module>();
    den = [&module](const at::Tensor& a, const at::Tensor& t) {
      const c10::IValue r = module->forward({a, t});
      TORCH_CHECK_TYPE(r.isTensor(), "denoiser must return a torch.Tensor, got ", r.tagKind());
      return r.toTensor();
    };
  } else {
    den = [&denoiser](const at::Tensor& a, const at::Tensor& t) {
      py::gil_scoped_acquire gil;
      return to_tensor(denoiser(a, t), "denoiser");
    };
  }
  const Update upd = [&update](const at::Tensor& out, const at::Tensor& a, int64_t i) {
    py::gil_scoped_acquire gil;
    return to_tensor(update(out, a, i), "update");
  };
  Final fin;
  if (!final_fn.is_none()) {
    fin = [&final_fn](const at::Tensor& out, const at::Tensor& a) {
      py::gil_scoped_acquire gil;
      return to_tensor(final_fn(out, a), "final");
    };
  }
  Callback cb;
  if (!callback.is_none()) {
    cb = [&callback](int64_t i, const at::Tensor& a) {
      py::gil_scoped_acquire gil;
      callback(i, a);
    };
  }
  LoopOutput res;
  {
    py::gil_scoped_release nogil;
    res = run_step_loop(den, upd, fin, cb, std::move(x), spec);
  }
  py::object traj = py::none();
  if (trajectory) traj = py::cast(res.trajectory);
  return py::make_tuple(res.x, res.steps_run, res.denoiser_calls, traj);
}

}  // namespace

}  // namespace fastdiff

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdiff C++ step loop (see fastdiff.samplers.loop)";
  m.def("run_loop", &fastdiff::run_loop_py, py::arg("denoiser"), py::arg("scripted"),
        py::arg("x"), py::arg("inputs"), py::arg("update"), py::arg("fixed"),
        py::arg("mask_id"), py::arg("cache"), py::arg("final"), py::arg("final_input"),
        py::arg("callback"), py::arg("trajectory"), py::arg("check_every"),
        "Run the sampler step loop; returns (x, steps_run, denoiser_calls, trajectory).");
}
