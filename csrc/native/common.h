// Shared helpers of the native CPU kernels: argument checks, dtype dispatch, row parallelism.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastdiff::native {

// Rows of `cols` columns per parallel task: about 64k elements per task, at least one row.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(cols, 1));
}

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fastdiff_native: ", name, " must be a CPU tensor, got ",
              t.device());
}

inline double to_double(float v) { return static_cast<double>(v); }
inline double to_double(double v) { return v; }
inline double to_double(c10::Half v) { return static_cast<double>(static_cast<float>(v)); }
inline double to_double(c10::BFloat16 v) { return static_cast<double>(static_cast<float>(v)); }

}  // namespace fastdiff::native

// float32, float64, float16 and bfloat16 inputs (the model output dtypes fastdiff accepts).
#define FASTDIFF_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
