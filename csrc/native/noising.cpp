// fastdiff_native::corrupt and corrupt_dense: forward noising of token rows in one pass
// (fastdiff/reference/noising.py), with the reference's Philox stream so the same seed gives the
// same tokens.
//
// - corrupt: absorbing / uniform noising, one Philox call per row (lanes.h, corrupt_rows).
// - corrupt_dense: x_t ~ Cat(Qbar[x0, :]) by the grouped race (race.h) in the ratio domain over
//   the float64 row Qbar[m_i, x0_i, :]; fixed rows keep x0.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "lanes.h"
#include "race.h"

namespace fastdiff::native {
namespace {

// An optional bool [n] mask, contiguous, or an undefined tensor.
at::Tensor checked_mask(const std::optional<at::Tensor>& mask, int64_t n, const char* name) {
  if (!mask.has_value()) return {};
  check_cpu(*mask, name);
  TORCH_CHECK(mask->scalar_type() == at::kBool && mask->numel() == n, "fastdiff_native: ", name,
              " must be bool [N]");
  return mask->reshape({-1}).contiguous();
}

at::Tensor checked_tokens(const at::Tensor& x0) {
  check_cpu(x0, "x0");
  TORCH_CHECK(x0.scalar_type() == at::kLong && x0.dim() == 1,
              "fastdiff_native: x0 must be int64 [N]");
  return x0.contiguous();
}

// x_t [N] int64 from x0 [N] int64, float64 sigma [N]: absorbing (absorb, x_t = mask_id) or
// uniform (x_t = K, the row's integer uniform on [0, vocab)) with probability 1 - e^-sigma.
at::Tensor corrupt(const at::Tensor& x0, const at::Tensor& sigma,
                   const std::optional<at::Tensor>& fixed, int64_t seed, int64_t offset,
                   bool absorb, int64_t vocab, int64_t mask_id) {
  const at::Tensor x = checked_tokens(x0);
  const int64_t n = x.numel();
  check_cpu(sigma, "sigma");
  TORCH_CHECK(sigma.numel() == n, "fastdiff_native: sigma must have N entries");
  const at::Tensor sig = sigma.reshape({-1}).to(at::kDouble).contiguous();
  const at::Tensor fix = checked_mask(fixed, n, "fixed");
  TORCH_CHECK(vocab >= 1 && vocab < (int64_t{1} << 31),
              "fastdiff_native: vocab must be in [1, 2^31)");
  TORCH_CHECK(!absorb || (mask_id >= 0 && mask_id < vocab),
              "fastdiff_native: mask_id out of range");
  at::Tensor out = at::empty({n}, x.options());
  const Stream s(seed, offset);
  const int64_t* xp = x.const_data_ptr<int64_t>();
  const double* sp = sig.const_data_ptr<double>();
  const bool* fp = fix.defined() ? fix.const_data_ptr<bool>() : nullptr;
  int64_t* op = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, n, row_grain(1), [&](int64_t begin, int64_t end) {
    corrupt_rows(s, xp, sp, fp, begin, end, vocab, absorb ? mask_id : -1, op);
  });
  return out;
}

// x_t[i] = the race over the weights Qbar[m_i, x0_i, :] (rows i < n, vocab columns); matrix m_i
// is matrix_index[i] or 0; fixed rows keep x0. The keys are the ratio keys w_j / E_j of race.h
// (no log per column): the weights are probabilities (<= 1, rows summing to 1), so w / E can
// neither overflow nor lose a positive weight, and the draw equals the reference's race over
// log Qbar except where two keys tie within rounding.
template <typename T>
void corrupt_dense_rows(const T* q, int64_t vocab, const int64_t* x0, const int64_t* matrix,
                        const bool* fixed, int64_t n, const Stream& s, int64_t* out) {
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    std::vector<double> w(vocab), sums(num_groups(vocab));
    for (int64_t i = begin; i < end; ++i) {
      if (fixed != nullptr && fixed[i]) {
        out[i] = x0[i];
        continue;
      }
      const int64_t m = matrix != nullptr ? matrix[i] : 0;
      const T* row = q + (m * vocab + x0[i]) * vocab;
      for (int64_t j = 0; j < vocab; ++j) w[j] = to_double(row[j]);
      out[i] = race_row_ratio(w.data(), vocab, s, i, sums.data());
    }
  });
}

// x_t [N] int64 ~ Cat(Qbar[x0, :]) for a transition [V, V] or [M, V, V] with matrix_index [N].
at::Tensor corrupt_dense(const at::Tensor& x0, const at::Tensor& transition,
                         const std::optional<at::Tensor>& matrix_index,
                         const std::optional<at::Tensor>& fixed, int64_t seed, int64_t offset) {
  const at::Tensor x = checked_tokens(x0);
  const int64_t n = x.numel();
  check_cpu(transition, "transition");
  const int64_t dims = transition.dim();
  TORCH_CHECK((dims == 2 || dims == 3) && transition.size(-1) == transition.size(-2),
              "fastdiff_native: transition must be [V, V] or [M, V, V]");
  TORCH_CHECK(dims == 2 || matrix_index.has_value(),
              "fastdiff_native: a [M, V, V] transition needs matrix_index");
  const at::Tensor q = transition.contiguous();
  const int64_t vocab = q.size(-1), matrices = dims == 3 ? q.size(0) : 1;
  TORCH_CHECK(vocab < (int64_t{1} << 31), "fastdiff_native: the race needs V < 2^31");
  at::Tensor mi;
  if (dims == 3) {
    check_cpu(*matrix_index, "matrix_index");
    TORCH_CHECK(matrix_index->scalar_type() == at::kLong && matrix_index->numel() == n,
                "fastdiff_native: matrix_index must be int64 [N]");
    mi = matrix_index->reshape({-1}).contiguous();
  }
  const at::Tensor fix = checked_mask(fixed, n, "fixed");
  // every gathered row must lie inside the table
  if (n > 0) {
    TORCH_CHECK(x.min().item<int64_t>() >= 0 && x.max().item<int64_t>() < vocab,
                "fastdiff_native: x0 out of range [0, V)");
    if (mi.defined()) {
      TORCH_CHECK(mi.min().item<int64_t>() >= 0 && mi.max().item<int64_t>() < matrices,
                  "fastdiff_native: matrix_index out of range [0, M)");
    }
  }
  at::Tensor out = at::empty({n}, x.options());
  const Stream s(seed, offset);
  FASTDIFF_DISPATCH_FLOATING(q.scalar_type(), "fastdiff_native::corrupt_dense", [&] {
    corrupt_dense_rows(q.const_data_ptr<scalar_t>(), vocab, x.const_data_ptr<int64_t>(),
                       mi.defined() ? mi.const_data_ptr<int64_t>() : nullptr,
                       fix.defined() ? fix.const_data_ptr<bool>() : nullptr, n, s,
                       out.mutable_data_ptr<int64_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdiff_native, m) {
  m.def(
      "corrupt(Tensor x0, Tensor sigma, Tensor? fixed, int seed, int offset, bool absorb, "
      "int vocab, int mask_id) -> Tensor");
  m.def(
      "corrupt_dense(Tensor x0, Tensor transition, Tensor? matrix_index, Tensor? fixed, int seed, "
      "int offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastdiff_native, CPU, m) {
  m.impl("corrupt", &corrupt);
  m.impl("corrupt_dense", &corrupt_dense);
}

}  // namespace fastdiff::native
