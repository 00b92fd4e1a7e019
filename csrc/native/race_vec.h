// The race of race.h with its column loop in AVX-512: the same keys lw_j - log E_j, the same
// winner (lowest column among equal keys, -inf and NaN never win), 16 columns at a time.
//
// Eight Philox4x32-10 blocks run side by side in the 64-bit lanes of a vector (counter
// (pair, row, offset_lo, offset_hi), words r0..r3: column 2i takes (r0, r1), 2i + 1 (r2, r3));
// E = -log(W) or -log1p(-W) from the 63 low bits and bit 31 of the first word, W = (k + 1/2)
// 2^-64, exactly as fastdiff/random.py; log and log1p are SLEEF's 1-ulp functions, the ones
// torch's float64 CPU kernels call (so the keys equal the reference's more often than the C
// library's log does). race_row_fast is race_row with this column loop (the group log-sums,
// group race and stay key are race.h's); CPUs without AVX-512 run race_row itself.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "race.h"
#include "vecmath.h"

namespace fastdiff::native {

#if FASTDIFF_VECMATH_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
extern "C" __m512d Sleef_log1pd8_u10avx512f(__m512d);

namespace race512 {

// The race covers at most one group of columns: kRaceGroup columns, 2 * 8 per Philox block.
constexpr int64_t kMaxVectors = 2 * ((kRaceGroup + 15) / 16);

// W = (k + 1/2) 2^-64 of the column words (a, b) in each 64-bit lane (values below 2^32),
// k the 63 bits of (a & 0x7FFFFFFF):b; `upper` gets bit 31 of a (E = -log W, else -log1p(-W)).
inline __m512d exponential_w(__m512i a, __m512i b, __mmask8& upper) {
  const __m512i k = _mm512_or_si512(
      _mm512_slli_epi64(_mm512_and_si512(a, _mm512_set1_epi64(0x7FFFFFFF)), 32), b);
  upper = _mm512_test_epi64_mask(a, _mm512_set1_epi64(0x80000000));
  return _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepi64_pd(k), _mm512_set1_pd(0.5)),
                       _mm512_set1_pd(0x1p-64));
}

// argmax_j (lw[j] - log E_j) over columns [begin, end) (begin even, end - begin <=
// kRaceGroup), as race_columns of race.h. Three passes: Philox gives every column's W, the W of
// the upper halves are packed into one buffer and those of the lower halves into another (so
// each W costs one log or one log1p, not both), then E is unpacked in column order and raced.
inline Best race_columns(const double* lw, int64_t begin, int64_t end, const Stream& s,
                         int64_t row) {
  const __m512d neg_inf = _mm512_set1_pd(kNegInf), zero = _mm512_setzero_pd();
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  // lanes of even / odd columns out of 16 consecutive doubles
  const __m512i even_idx = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd_idx = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
  const __m512i row_v = _mm512_set1_epi64(static_cast<uint32_t>(row));
  const __m512i off_lo = _mm512_set1_epi64(s.off_lo), off_hi = _mm512_set1_epi64(s.off_hi);
  // packed W (then E) of the upper / lower halves, 8 spare lanes each for the last vector
  alignas(64) double packed_upper[kMaxVectors * 8 + 8], packed_lower[kMaxVectors * 8 + 8];
  __mmask8 upper_of[kMaxVectors];
  int64_t n_upper = 0, n_lower = 0, vectors = 0;
  // pass 1: W of the pairs j0 / 2 + lane (vector 2b: even columns of block b, 2b + 1: odd)
  for (int64_t j0 = begin; j0 < end; j0 += 16) {
    __m512i c0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<uint32_t>(j0 >> 1)), lane);
    __m512i c1 = row_v, c2 = off_lo, c3 = off_hi;
    uint32_t ka = s.k0, kb = s.k1;
    for (int r = 0; r < kPhiloxRounds; ++r) {
      if (r) {
        ka += kPhiloxW0;
        kb += kPhiloxW1;
      }
      const __m512i p0 = _mm512_mul_epu32(c0, m0), p1 = _mm512_mul_epu32(c2, m1);
      const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), c1),
                                          _mm512_set1_epi64(ka));
      const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), c3),
                                          _mm512_set1_epi64(kb));
      c1 = _mm512_and_si512(p1, low32);
      c3 = _mm512_and_si512(p0, low32);
      c0 = n0;
      c2 = n2;
    }
    for (const auto& [a, b] : {std::pair{c0, c1}, std::pair{c2, c3}}) {
      __mmask8 upper;
      const __m512d w = exponential_w(a, b, upper);
      _mm512_mask_compressstoreu_pd(packed_upper + n_upper, upper, w);
      _mm512_mask_compressstoreu_pd(packed_lower + n_lower, static_cast<__mmask8>(~upper), w);
      n_upper += __builtin_popcount(upper);
      n_lower += 8 - __builtin_popcount(upper);
      upper_of[vectors++] = upper;
    }
  }
  // pass 2: E = -log W (upper halves), -log1p(-W) (lower halves); spare lanes read as W = 1
  for (int64_t i = 0; i < n_upper; i += 8) {
    const __m512d w = _mm512_mask_loadu_pd(_mm512_set1_pd(1.0),
                                           static_cast<__mmask8>((1u << std::min<int64_t>(8, n_upper - i)) - 1u),
                                           packed_upper + i);
    _mm512_storeu_pd(packed_upper + i, _mm512_sub_pd(zero, vecmath::Sleef_logd8_u10avx512f(w)));
  }
  for (int64_t i = 0; i < n_lower; i += 8) {
    const __m512d w = _mm512_mask_loadu_pd(_mm512_set1_pd(1.0),
                                           static_cast<__mmask8>((1u << std::min<int64_t>(8, n_lower - i)) - 1u),
                                           packed_lower + i);
    _mm512_storeu_pd(packed_lower + i,
                     _mm512_sub_pd(zero, Sleef_log1pd8_u10avx512f(_mm512_sub_pd(zero, w))));
  }
  // pass 3: keys lw - log E in column order; per lane the columns come in increasing order, so
  // a strictly larger key replaces the lane's best
  __m512d best_key = neg_inf;
  __m512i best_col = _mm512_set1_epi64(begin);
  int64_t read_upper = 0, read_lower = 0;
  for (int64_t j0 = begin, v = 0; j0 < end; j0 += 16, v += 2) {
    const int64_t left = end - j0;
    const __mmask16 valid = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1u);
    const __m512d lo = _mm512_mask_loadu_pd(neg_inf, static_cast<__mmask8>(valid), lw + j0);
    const __m512d hi =
        _mm512_mask_loadu_pd(neg_inf, static_cast<__mmask8>(valid >> 8), lw + j0 + 8);
    const __m512i col_even = _mm512_add_epi64(_mm512_set1_epi64(j0), _mm512_slli_epi64(lane, 1));
    for (int half = 0; half < 2; ++half) {
      const __mmask8 upper = upper_of[v + half];
      const __m512d e = _mm512_mask_expandloadu_pd(
          _mm512_maskz_expandloadu_pd(static_cast<__mmask8>(~upper), packed_lower + read_lower),
          upper, packed_upper + read_upper);
      read_upper += __builtin_popcount(upper);
      read_lower += 8 - __builtin_popcount(upper);
      const __m512d lw_half = _mm512_permutex2var_pd(lo, half ? odd_idx : even_idx, hi);
      const __m512d key = _mm512_sub_pd(lw_half, vecmath::Sleef_logd8_u10avx512f(e));
      const __mmask8 win = _mm512_cmp_pd_mask(key, best_key, _CMP_GT_OQ);
      best_key = _mm512_mask_blend_pd(win, best_key, key);
      best_col = _mm512_mask_blend_epi64(
          win, best_col, half ? _mm512_add_epi64(col_even, _mm512_set1_epi64(1)) : col_even);
    }
  }
  // the largest key, the lowest column among the lanes holding it
  alignas(64) double keys[8];
  alignas(64) int64_t cols[8];
  _mm512_store_pd(keys, best_key);
  _mm512_store_si512(reinterpret_cast<__m512i*>(cols), best_col);
  Best best;
  best.index = begin;
  for (int i = 0; i < 8; ++i) {
    if (keys[i] > best.key || (keys[i] == best.key && keys[i] > kNegInf && cols[i] < best.index)) {
      best.key = keys[i];
      best.index = cols[i];
    }
  }
  return best;
}

}  // namespace race512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // FASTDIFF_VECMATH_X86

// race_row of race.h (same arguments, same draw) with the column race in AVX-512 where the CPU
// has it. `lw` is the caller's scratch row: lw[stay] is set to -inf while the winning group is
// raced and restored after.
inline int64_t race_row_fast(double* lw, int64_t vocab, const Stream& s, int64_t row,
                             int64_t stay, double* scratch) {
#if FASTDIFF_VECMATH_X86
  if (vecmath::isa_level() == 2) {
    if (vocab <= kRaceGroup) return race512::race_columns(lw, 0, vocab, s, row).index;
    group_log_sums(lw, vocab, stay, scratch);
    const Best group = race_groups(scratch, num_groups(vocab), s, row);
    const int64_t lo = group.index * kRaceGroup, hi = std::min(vocab, lo + kRaceGroup);
    const double stay_lw = stay >= 0 ? lw[stay] : kNegInf;
    const bool inside = stay >= lo && stay < hi;
    if (inside) lw[stay] = kNegInf;
    int64_t drawn = race512::race_columns(lw, lo, hi, s, row).index;
    if (inside) lw[stay] = stay_lw;
    if (stay >= 0 && stay_key(stay_lw, stay, s, row) > group.key) drawn = stay;
    return drawn;
  }
#endif
  return race_row(lw, vocab, s, row, stay, scratch);
}

}  // namespace fastdiff::native
