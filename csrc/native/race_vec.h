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

#include <cstdint>

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

// -log E of the column words (a, b) in each 64-bit lane (values below 2^32).
inline __m512d neg_log_exponential(__m512i a, __m512i b) {
  const __m512i k = _mm512_or_si512(
      _mm512_slli_epi64(_mm512_and_si512(a, _mm512_set1_epi64(0x7FFFFFFF)), 32), b);
  const __m512d w = _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepi64_pd(k), _mm512_set1_pd(0.5)),
                                  _mm512_set1_pd(0x1p-64));
  const __mmask8 upper = _mm512_test_epi64_mask(a, _mm512_set1_epi64(0x80000000));
  const __m512d lower_e = _mm512_sub_pd(_mm512_setzero_pd(),
                                        Sleef_log1pd8_u10avx512f(_mm512_sub_pd(
                                            _mm512_setzero_pd(), w)));
  const __m512d upper_e = _mm512_sub_pd(_mm512_setzero_pd(), vecmath::Sleef_logd8_u10avx512f(w));
  const __m512d e = _mm512_mask_blend_pd(upper, lower_e, upper_e);
  return _mm512_sub_pd(_mm512_setzero_pd(), vecmath::Sleef_logd8_u10avx512f(e));
}

// argmax_j (lw[j] - log E_j) over columns [begin, end) (begin even), as race_columns.
inline Best race_columns(const double* lw, int64_t begin, int64_t end, const Stream& s,
                         int64_t row) {
  const __m512d neg_inf = _mm512_set1_pd(kNegInf);
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  // lanes of even / odd columns out of 16 consecutive doubles
  const __m512i even_idx = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd_idx = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
  const __m512i row_v = _mm512_set1_epi64(static_cast<uint32_t>(row));
  const __m512i off_lo = _mm512_set1_epi64(s.off_lo), off_hi = _mm512_set1_epi64(s.off_hi);
  __m512d best_key = neg_inf;
  __m512i best_col = _mm512_set1_epi64(begin);
  for (int64_t j0 = begin; j0 < end; j0 += 16) {
    const int64_t left = end - j0;
    const __mmask16 valid = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1u);
    const __m512d lo = _mm512_mask_loadu_pd(neg_inf, static_cast<__mmask8>(valid), lw + j0);
    const __m512d hi =
        _mm512_mask_loadu_pd(neg_inf, static_cast<__mmask8>(valid >> 8), lw + j0 + 8);
    const __m512d lw_even = _mm512_permutex2var_pd(lo, even_idx, hi);
    const __m512d lw_odd = _mm512_permutex2var_pd(lo, odd_idx, hi);
    // Philox of the pairs j0 / 2 + lane
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
    const __m512d key_even = _mm512_add_pd(lw_even, neg_log_exponential(c0, c1));
    const __m512d key_odd = _mm512_add_pd(lw_odd, neg_log_exponential(c2, c3));
    const __m512i col_even = _mm512_add_epi64(_mm512_set1_epi64(j0), _mm512_slli_epi64(lane, 1));
    // per lane the columns come in increasing order: a strictly larger key replaces the best
    __mmask8 win = _mm512_cmp_pd_mask(key_even, best_key, _CMP_GT_OQ);
    best_key = _mm512_mask_blend_pd(win, best_key, key_even);
    best_col = _mm512_mask_blend_epi64(win, best_col, col_even);
    win = _mm512_cmp_pd_mask(key_odd, best_key, _CMP_GT_OQ);
    best_key = _mm512_mask_blend_pd(win, best_key, key_odd);
    best_col = _mm512_mask_blend_epi64(
        win, best_col, _mm512_add_epi64(col_even, _mm512_set1_epi64(1)));
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
