// fastdiff_native::d3pm_step: one D3PM reverse step (fastdiff/reference/d3pm.py, d3pm_step).
//
// Per row i with matrices k = i / (N / M) (M = 1 for shared [V, V] matrices):
//   lw_j = safe_log(Q_t[k, j, x_i]) + safe_log(sum_l softmax(x0_logits_i)_l Qbar[k, l, j])
// in float64 (safe_log(a) = log a for a > 0, else -inf), then the race (no stay option). The
// softmax is computed here in torch's order (exp(l - max) * (1 / sum)); the mixture is ATen's
// float64 matmul, as in the reference; the logs and the race are fused per row. Fixed rows and
// rows whose lw are all -inf keep x_t.
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include <optional>

#include "reverse.h"

namespace fastdiff::native {
namespace {

// softmax of every row of scores [N, V] in float64: p_j = exp(l_j - max) * (1 / sum).
template <typename T>
at::Tensor softmax64(const T* scores, int64_t n, int64_t vocab, const at::TensorOptions& opts) {
  at::Tensor probs = at::empty({n, vocab}, opts.dtype(at::kDouble));
  double* p = probs.mutable_data_ptr<double>();
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double* row = p + r * vocab;
      load_row(scores + r * vocab, vocab, row);
      const double scale =
          1.0 / vecmath::exp_sum(row, vocab, -vecmath::row_max(row, vocab), row);
      for (int64_t j = 0; j < vocab; ++j) row[j] *= scale;
    }
  });
  return probs;
}

// probs @ Qbar in float64: [N, V] (one matrix per contiguous row group when Qbar is 3-D).
at::Tensor mixture(const at::Tensor& probs, const at::Tensor& qbar) {
  const at::Tensor q = qbar.to(at::kDouble);
  if (q.dim() == 2) return at::matmul(probs, q).contiguous();
  const int64_t m = q.size(0), v = q.size(-1);
  return at::bmm(probs.reshape({m, -1, v}), q).reshape({-1, v}).contiguous();
}

at::Tensor d3pm_step(const at::Tensor& x0_logits, const at::Tensor& x_t, const at::Tensor& q_step,
                     const at::Tensor& qbar_prev, const std::optional<at::Tensor>& fixed,
                     int64_t seed, int64_t offset) {
  const UpdateInputs in(x0_logits, x_t, fixed);
  check_cpu(q_step, "q_step");
  check_cpu(qbar_prev, "qbar_prev");
  const int64_t n = in.n, vocab = in.vocab;
  for (const at::Tensor* q : {&q_step, &qbar_prev}) {
    TORCH_CHECK((q->dim() == 2 || q->dim() == 3) && q->size(-1) == vocab &&
                    q->size(-2) == vocab,
                "fastdiff_native: the D3PM matrices must be [V, V] or [M, V, V] with V = ",
                vocab);
    TORCH_CHECK(q->dim() == 2 || (q->size(0) > 0 && n % q->size(0) == 0),
                "fastdiff_native: ", n, " rows do not split into ", q->size(0), " sequences");
  }
  if (n == 0) return in.x.clone();
  at::Tensor probs;
  FASTDIFF_DISPATCH_FLOATING(in.scores.scalar_type(), "fastdiff_native::d3pm_step", [&] {
    probs = softmax64(in.scores.const_data_ptr<scalar_t>(), n, vocab, in.scores.options());
  });
  const at::Tensor mix_t = mixture(probs, qbar_prev);
  // Q_t transposed: row x of matrix k holds the column Q_t[k, :, x], read contiguously; when
  // the rows outnumber the columns its safe_log is taken once here instead of once per row
  at::Tensor q_cols = q_step.to(at::kDouble).transpose(-1, -2).contiguous();
  const int64_t matrices = q_step.dim() == 3 ? q_step.size(0) : 1;
  const bool column_logs = n >= matrices * vocab;
  if (column_logs) {
    double* c = q_cols.mutable_data_ptr<double>();
    at::parallel_for(0, matrices * vocab, row_grain(vocab), [&](int64_t begin, int64_t end) {
      vecmath::log_clamped_affine(c + begin * vocab, (end - begin) * vocab, 0.0, 1.0);
    });
  }
  const double* mix = mix_t.const_data_ptr<double>();
  const double* cols = q_cols.const_data_ptr<double>();
  const int64_t* xs = in.x.const_data_ptr<int64_t>();
  const int64_t per = n / matrices;
  return race_active_rows(in, -1, seed, offset, 0, [&](int64_t r, RowScratch& sc) -> int64_t {
    const double* col = cols + ((r / per) * vocab + xs[r]) * vocab;
    double* lw = sc.lw.data();
    if (column_logs) {
      vecmath::add_log_clamped(col, mix + r * vocab, vocab, lw);
    } else {
      vecmath::log_sum2(col, mix + r * vocab, vocab, lw);
    }
    return -1;
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdiff_native, m) {
  m.def(
      "d3pm_step(Tensor x0_logits, Tensor x_t, Tensor q_step, Tensor qbar_prev, Tensor? fixed, "
      "int seed, int offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastdiff_native, CPU, m) { m.impl("d3pm_step", &d3pm_step); }

}  // namespace fastdiff::native
