// Shared machinery of the reverse (sampling) updates: argument preparation, row loading and the
// per-row loop that races each active row's float64 log-weights (updates.cpp, d3pm.cpp).
//
// The loop is the native form of `_draw` in fastdiff/reference/updates.py: a row is active
// when it is not fixed and (for the masked-only updates) holds the mask id; its log-weights
// lw[V] are raced with race.h's race_row keyed by the global row index, the stay column taken
// out of its group when V > 256; a row whose log-weights are all -inf (or NaN) keeps its token.
// Inactive rows are copied and never read.
#pragma once

#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "common.h"
#include "race.h"
#include "race.h"
#include "vecmath.h"

namespace fastdiff::native {

constexpr double kPosInf = std::numeric_limits<double>::infinity();

// A float64 contiguous [n] tensor of per-row scalars (the reference keeps them float64).
inline at::Tensor row_scalars(const at::Tensor& t, int64_t n, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "fastdiff_native: ", name, " must be [", n,
              "], got ", t.sizes());
  return t.to(at::kDouble).contiguous();
}

// The validated tensors of an update: scores [N, V] contiguous, tokens x [N] int64 contiguous,
// fixed [N] bool contiguous (undefined when absent).
struct UpdateInputs {
  at::Tensor scores, x, fixed;
  int64_t n, vocab;

  UpdateInputs(const at::Tensor& scores_in, const at::Tensor& x_in,
               const std::optional<at::Tensor>& fixed_in) {
    check_cpu(scores_in, "model_output");
    check_cpu(x_in, "x");
    TORCH_CHECK(scores_in.dim() == 2, "fastdiff_native: model_output must be [N, V]");
    n = scores_in.size(0);
    vocab = scores_in.size(1);
    TORCH_CHECK(x_in.dim() == 1 && x_in.size(0) == n, "fastdiff_native: x must be [", n, "]");
    scores = scores_in.contiguous();
    x = x_in.to(at::kLong).contiguous();
    if (fixed_in.has_value()) {
      check_cpu(*fixed_in, "fixed");
      TORCH_CHECK(fixed_in->dim() == 1 && fixed_in->size(0) == n,
                  "fastdiff_native: fixed must be [", n, "]");
      fixed = fixed_in->to(at::kBool).contiguous();
    }
    check_tokens();
  }

  // A mask id in [0, V) (the absorbing updates write its column).
  void check_mask_id(int64_t mask_id) const {
    TORCH_CHECK(mask_id >= 0 && mask_id < vocab, "fastdiff_native: mask_id ", mask_id,
                " is outside [0, ", vocab, ")");
  }

  // Every token in [0, V): the kernels index rows with them.
  void check_tokens() const {
    const int64_t* xs = x.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < n; ++r)
      TORCH_CHECK(xs[r] >= 0 && xs[r] < vocab, "fastdiff_native: token ", xs[r], " at row ", r,
                  " is outside [0, ", vocab, ")");
  }

  const bool* fixed_ptr() const {
    return fixed.defined() ? fixed.const_data_ptr<bool>() : nullptr;
  }
};

// Converts a row of the model output to float64: dst[j] = src[j].
template <typename T>
inline void load_row(const T* src, int64_t vocab, double* dst) {
  for (int64_t j = 0; j < vocab; ++j) dst[j] = to_double(src[j]);
}

// Per-thread scratch of the row loop: the log-weights lw[V], the group log-sums of the race and
// `extra` doubles for the op's own use.
struct RowScratch {
  std::vector<double> lw, sums, extra;
  RowScratch(int64_t vocab, int64_t extra_size)
      : lw(vocab), sums(num_groups(vocab)), extra(extra_size) {}
};

// out[r] for every row r: x[r] for inactive rows; for active rows `fill(r, scratch)` writes the
// row's log-weights into scratch.lw and returns its stay column (-1: none), then the race (or
// x[r] when no log-weight is above -inf). `mask_id` >= 0 restricts the update to rows with
// x[r] == mask_id.
template <typename Fill>
at::Tensor race_active_rows(const UpdateInputs& in, int64_t mask_id, int64_t seed,
                            int64_t offset, int64_t extra_size, const Fill& fill) {
  at::Tensor out = at::empty_like(in.x);
  const int64_t* x = in.x.const_data_ptr<int64_t>();
  const bool* fixed = in.fixed_ptr();
  int64_t* dst = out.mutable_data_ptr<int64_t>();
  const int64_t vocab = in.vocab;
  const Stream s(seed, offset);
  at::parallel_for(0, in.n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    RowScratch scratch(vocab, extra_size);
    for (int64_t r = begin; r < end; ++r) {
      const bool active = (mask_id < 0 || x[r] == mask_id) && !(fixed != nullptr && fixed[r]);
      if (!active) {
        dst[r] = x[r];
        continue;
      }
      const int64_t stay = fill(r, scratch);
      double* lw = scratch.lw.data();
      dst[r] = vecmath::row_max(lw, vocab) > kNegInf
                   ? race_row(lw, vocab, s, r, stay, scratch.sums.data())
                   : x[r];
    }
  });
  return out;
}

}  // namespace fastdiff::native
