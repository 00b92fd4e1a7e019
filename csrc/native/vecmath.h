// Vectorized float64 row kernels of the reverse updates (exp / log per element with SLEEF's
// 1-ulp functions, the ones torch's own CPU kernels call, row tails included, so values match
// torch.exp / torch.log). Compiled for AVX-512 and AVX2 with target pragmas and chosen at run
// time; other CPUs (and non-x86 builds) use a scalar fallback. Sums are accumulated lane-wise, so they can differ
// from a sequential sum (and from torch's) in the last bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTDIFF_VECMATH_X86 1
#include <immintrin.h>
#else
#define FASTDIFF_VECMATH_X86 0
#endif

namespace fastdiff::native::vecmath {

#if FASTDIFF_VECMATH_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq")
// GCC 12 flags the undefined pass-through operand inside its own _mm512_max_pd
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
extern "C" __m512d Sleef_expd8_u10avx512f(__m512d);
extern "C" __m512d Sleef_logd8_u10avx512f(__m512d);
namespace avx512 {
constexpr int64_t kWidth = 8;
using Vec = __m512d;
inline Vec load(const double* p) { return _mm512_loadu_pd(p); }
inline void store(double* p, Vec v) { _mm512_storeu_pd(p, v); }
inline __mmask8 first(int64_t k) { return static_cast<__mmask8>((1u << k) - 1u); }
inline Vec load_n(const double* p, int64_t k) {
  return _mm512_mask_loadu_pd(_mm512_set1_pd(-std::numeric_limits<double>::infinity()),
                              first(k), p);
}
inline void store_n(double* p, Vec v, int64_t k) { _mm512_mask_storeu_pd(p, first(k), v); }
inline Vec set1(double v) { return _mm512_set1_pd(v); }
inline Vec add(Vec a, Vec b) { return _mm512_add_pd(a, b); }
inline Vec sub_(Vec a, Vec b) { return _mm512_sub_pd(a, b); }
inline Vec mul_(Vec a, Vec b) { return _mm512_mul_pd(a, b); }
// max(a, b) with b returned when either is NaN
inline Vec max(Vec a, Vec b) { return _mm512_max_pd(a, b); }
inline Vec exp(Vec a) { return Sleef_expd8_u10avx512f(a); }
inline Vec log(Vec a) { return Sleef_logd8_u10avx512f(a); }
// v where p > 0, else 0
inline Vec select_positive(Vec p, Vec v) {
  return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(p, _mm512_setzero_pd(), _CMP_GT_OQ), v);
}
// bit i set where lane i of a equals lane i of b
inline uint32_t equal_mask(Vec a, Vec b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
inline double reduce_add(Vec v) {
  alignas(64) double a[8];
  _mm512_store_pd(a, v);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
inline double reduce_max(Vec v) {
  alignas(64) double a[8];
  _mm512_store_pd(a, v);
  double top = a[0];
  for (int i = 1; i < 8; ++i) top = a[i] > top ? a[i] : top;
  return top;
}
#include "vecmath_body.inc"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
extern "C" __m256d Sleef_expd4_u10avx2(__m256d);
extern "C" __m256d Sleef_logd4_u10avx2(__m256d);
namespace avx2 {
constexpr int64_t kWidth = 4;
using Vec = __m256d;
inline Vec load(const double* p) { return _mm256_loadu_pd(p); }
inline void store(double* p, Vec v) { _mm256_storeu_pd(p, v); }
inline Vec load_n(const double* p, int64_t k) {
  alignas(32) double a[4];
  for (int64_t i = 0; i < 4; ++i) a[i] = i < k ? p[i] : -std::numeric_limits<double>::infinity();
  return _mm256_load_pd(a);
}
inline void store_n(double* p, Vec v, int64_t k) {
  alignas(32) double a[4];
  _mm256_store_pd(a, v);
  for (int64_t i = 0; i < k; ++i) p[i] = a[i];
}
inline Vec set1(double v) { return _mm256_set1_pd(v); }
inline Vec add(Vec a, Vec b) { return _mm256_add_pd(a, b); }
inline Vec sub_(Vec a, Vec b) { return _mm256_sub_pd(a, b); }
inline Vec mul_(Vec a, Vec b) { return _mm256_mul_pd(a, b); }
inline Vec max(Vec a, Vec b) { return _mm256_max_pd(a, b); }
inline Vec exp(Vec a) { return Sleef_expd4_u10avx2(a); }
inline Vec log(Vec a) { return Sleef_logd4_u10avx2(a); }
inline Vec select_positive(Vec p, Vec v) {
  return _mm256_and_pd(_mm256_cmp_pd(p, _mm256_setzero_pd(), _CMP_GT_OQ), v);
}
inline uint32_t equal_mask(Vec a, Vec b) {
  return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ)));
}
inline double reduce_add(Vec v) {
  alignas(32) double a[4];
  _mm256_store_pd(a, v);
  return (a[0] + a[1]) + (a[2] + a[3]);
}
inline double reduce_max(Vec v) {
  alignas(32) double a[4];
  _mm256_store_pd(a, v);
  double top = a[0];
  for (int i = 1; i < 4; ++i) top = a[i] > top ? a[i] : top;
  return top;
}
#include "vecmath_body.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif  // FASTDIFF_VECMATH_X86

// The scalar fallback: the same kernels one element at a time.
namespace scalar {
constexpr int64_t kWidth = 1;
struct Vec {
  double v;
};
inline Vec load(const double* p) { return {*p}; }
inline void store(double* p, Vec v) { *p = v.v; }
inline Vec load_n(const double* p, int64_t) { return {*p}; }
inline void store_n(double* p, Vec v, int64_t) { *p = v.v; }
inline Vec set1(double v) { return {v}; }
inline Vec add(Vec a, Vec b) { return {a.v + b.v}; }
inline Vec sub_(Vec a, Vec b) { return {a.v - b.v}; }
inline Vec mul_(Vec a, Vec b) { return {a.v * b.v}; }
inline Vec max(Vec a, Vec b) { return {a.v > b.v ? a.v : b.v}; }
inline Vec exp(Vec a) { return {std::exp(a.v)}; }
inline Vec log(Vec a) { return {std::log(a.v)}; }
inline Vec select_positive(Vec p, Vec v) { return {p.v > 0.0 ? v.v : 0.0}; }
inline uint32_t equal_mask(Vec a, Vec b) { return a.v == b.v ? 1u : 0u; }
inline double reduce_add(Vec v) { return v.v; }
inline double reduce_max(Vec v) { return v.v; }
#include "vecmath_body.inc"
}  // namespace scalar

#if FASTDIFF_VECMATH_X86
// The widest instruction set of this CPU: 2 (AVX-512), 1 (AVX2 + FMA) or 0.
inline int isa_level() {
  static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
                               ? 2
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                                              : 0;
  return level;
}

#define FASTDIFF_VECMATH_DISPATCH(NAME)                                                  \
  template <typename... Args>                                                            \
  inline auto NAME(Args... args) {                                                       \
    switch (isa_level()) {                                                               \
      case 2:                                                                            \
        return avx512::NAME(args...);                                                    \
      case 1:                                                                            \
        return avx2::NAME(args...);                                                      \
      default:                                                                           \
        return scalar::NAME(args...);                                                    \
    }                                                                                    \
  }
#else
#define FASTDIFF_VECMATH_DISPATCH(NAME)                         \
  template <typename... Args>                                   \
  inline auto NAME(Args... args) {                              \
    return scalar::NAME(args...);                               \
  }
#endif

FASTDIFF_VECMATH_DISPATCH(row_max)
FASTDIFF_VECMATH_DISPATCH(exp_sum)
FASTDIFF_VECMATH_DISPATCH(log_clamped_affine)
FASTDIFF_VECMATH_DISPATCH(log_sum2)
FASTDIFF_VECMATH_DISPATCH(add_log_clamped)
FASTDIFF_VECMATH_DISPATCH(first_equal)
FASTDIFF_VECMATH_DISPATCH(plogp_sum)
#undef FASTDIFF_VECMATH_DISPATCH

}  // namespace fastdiff::native::vecmath
