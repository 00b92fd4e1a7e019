// The transforms of fastdiff/random.py as ops (fastdiff_native::philox_draw, group_exponential,
// row_uniform_and_index): the same numbers as the reference for every (seed, offset, row,
// column), uniforms and integer indices bit for bit, exponentials and normals to the last bit or
// two of float64 (C library / polynomial transcendentals instead of torch's).
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common.h"
#include "lanes.h"

namespace fastdiff::native {
namespace {

// Row indices [n] as int64, contiguous; they key the noise as the Philox counter word c1.
at::Tensor checked_rows(const at::Tensor& rows) {
  check_cpu(rows, "rows");
  TORCH_CHECK(rows.scalar_type() == at::kLong, "fastdiff_native: rows must be int64");
  return rows.reshape({-1}).contiguous();
}

enum class Kind { kUniform, kExponential, kNormal };

Kind parse_kind(c10::string_view kind) {
  if (kind == "uniform") return Kind::kUniform;
  if (kind == "exponential") return Kind::kExponential;
  TORCH_CHECK(kind == "normal",
              "fastdiff_native: kind must be uniform, exponential or normal, got ",
              std::string(kind));
  return Kind::kNormal;
}

// out[i, j] = transform of column j of row rows[i] for kind "uniform" (U(0, 1), 52 bits),
// "exponential" (Exp(1), exact tails) or "normal" (Box-Muller N(0, 1)); float64 [n, n_cols].
at::Tensor philox_draw(int64_t seed, int64_t offset, const at::Tensor& rows, int64_t n_cols,
                       c10::string_view kind) {
  const at::Tensor r = checked_rows(rows);
  TORCH_CHECK(n_cols >= 0, "fastdiff_native: n_cols must be >= 0");
  const Kind k = parse_kind(kind);
  const int64_t n = r.numel();
  at::Tensor out = at::empty({n, n_cols}, r.options().dtype(at::kDouble));
  const int64_t* row = r.const_data_ptr<int64_t>();
  double* o = out.mutable_data_ptr<double>();
  const Stream s(seed, offset);
  at::parallel_for(0, n, row_grain(n_cols), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double* dst = o + i * n_cols;
      if (k == Kind::kNormal) {
        normal_row(s, row[i], n_cols, dst);
        continue;
      }
      const bool uniform = k == Kind::kUniform;
      for (int64_t j = 0; j < n_cols; j += 2) {  // columns j, j + 1 share a Philox call
        const Words w = s.philox(static_cast<uint32_t>(j >> 1), static_cast<uint32_t>(row[i]));
        dst[j] = uniform ? uniform_from_words(w.r0, w.r1) : exponential_from_words(w.r0, w.r1);
        if (j + 1 < n_cols) {
          dst[j + 1] =
              uniform ? uniform_from_words(w.r2, w.r3) : exponential_from_words(w.r2, w.r3);
        }
      }
    }
  });
  return out;
}

// Exp(1) [n, n_groups] of the race's group draws: words (r0, r1) of counter (2^30 + g, row).
at::Tensor group_exponential(int64_t seed, int64_t offset, const at::Tensor& rows,
                             int64_t n_groups) {
  const at::Tensor r = checked_rows(rows);
  TORCH_CHECK(n_groups >= 0, "fastdiff_native: n_groups must be >= 0");
  const int64_t n = r.numel();
  at::Tensor out = at::empty({n, n_groups}, r.options().dtype(at::kDouble));
  const int64_t* row = r.const_data_ptr<int64_t>();
  double* o = out.mutable_data_ptr<double>();
  const Stream s(seed, offset);
  at::parallel_for(0, n, row_grain(n_groups), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t g = 0; g < n_groups; ++g) {
        const Words w = s.philox(kGroupCounterBase + static_cast<uint32_t>(g),
                                 static_cast<uint32_t>(row[i]));
        o[i * n_groups + g] = exponential_from_words(w.r0, w.r1);
      }
    }
  });
  return out;
}

// Per row (counter (0, row)): U(0, 1) from words (r0, r1) and floor((r2:r3) high / 2^64), the
// integer uniform on [0, high), computed exactly as (r2 high + (r3 high >> 32)) >> 32.
std::tuple<at::Tensor, at::Tensor> row_uniform_and_index(int64_t seed, int64_t offset,
                                                         const at::Tensor& rows, int64_t high) {
  const at::Tensor r = checked_rows(rows);
  TORCH_CHECK(high >= 1 && high < (int64_t{1} << 31),
              "fastdiff_native: high must be in [1, 2^31), got ", high);
  const int64_t n = r.numel();
  at::Tensor u = at::empty({n}, r.options().dtype(at::kDouble));
  at::Tensor index = at::empty({n}, r.options());
  const int64_t* row = r.const_data_ptr<int64_t>();
  double* uo = u.mutable_data_ptr<double>();
  int64_t* io = index.mutable_data_ptr<int64_t>();
  const Stream s(seed, offset);
  const uint64_t h = static_cast<uint64_t>(high);
  at::parallel_for(0, n, row_grain(1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Words w = s.philox(0, static_cast<uint32_t>(row[i]));
      uo[i] = uniform_from_words(w.r0, w.r1);
      io[i] = static_cast<int64_t>((w.r2 * h + ((w.r3 * h) >> 32)) >> 32);
    }
  });
  return {u.view(rows.sizes()), index.view(rows.sizes())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdiff_native, m) {
  m.def("philox_draw(int seed, int offset, Tensor rows, int n_cols, str kind) -> Tensor");
  m.def("group_exponential(int seed, int offset, Tensor rows, int n_groups) -> Tensor");
  m.def(
      "row_uniform_and_index(int seed, int offset, Tensor rows, int high) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastdiff_native, CPU, m) {
  m.impl("philox_draw", &philox_draw);
  m.impl("group_exponential", &group_exponential);
  m.impl("row_uniform_and_index", &row_uniform_and_index);
}

}  // namespace fastdiff::native
