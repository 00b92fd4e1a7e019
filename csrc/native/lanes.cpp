// The vectorized loops of normal.h: the Box-Muller row and the noising threshold, each compiled
// for AVX-512, AVX2 and the baseline ISA (picked at load time by the ifunc of target_clones).
//
// No FMA contraction: every ISA rounds the same operations, so the noise does not depend on the
// machine.
#pragma GCC optimize("fp-contract=off")

#include "lanes.h"

#include <algorithm>
#include <cmath>

namespace fastdiff::native {

constexpr uint64_t kTwo52Bits = 0x4330000000000000;  // the bits of 2^52

// z[2l], z[2l + 1] of the kLanes pairs pair0 + l of `row` (pair i: counter (i, row)).
__attribute__((always_inline)) static inline void normal_block(const Stream& s, uint32_t row, uint32_t pair0, double* z) {
  uint32_t c0[kLanes], c1[kLanes], r0[kLanes], r1[kLanes], r2[kLanes], r3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    c0[l] = pair0 + static_cast<uint32_t>(l);
    c1[l] = row;
  }
  philox_lanes(s, c0, c1, r0, r1, r2, r3);
  double v[kLanes], c[kLanes], sn[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    // U = (k + 1/2) 2^-52 from the top 52 bits of r0:r1; the angle (r2 + 1/2) 2 pi 2^-32
    // (integers below 2^52 become doubles exactly through the bits of 2^52 + k)
    const uint64_t k = (static_cast<uint64_t>(r0[l]) << 20) | (r1[l] >> 12);
    const double u = ((as_double(kTwo52Bits | k) - 0x1p52) + 0.5) * 0x1p-52;
    v[l] = -2.0 * log_positive(u);
    const double angle = ((as_double(kTwo52Bits | r2[l]) - 0x1p52) + 0.5) * (2.0 * M_PI * 0x1p-32);
    sincos_angle(angle, c[l], sn[l]);
  }
  // sqrt in its own loop: with errno semantics it does not vectorize, and it would stop the
  // loop above from vectorizing
  for (int l = 0; l < kLanes; ++l) v[l] = std::sqrt(v[l]);
  for (int l = 0; l < kLanes; ++l) {
    z[2 * l] = v[l] * c[l];
    z[2 * l + 1] = v[l] * sn[l];
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void normal_row(const Stream& s,
                                                                            int64_t row,
                                                                            int64_t n_cols,
                                                                            double* z) {
  const uint32_t r = static_cast<uint32_t>(row);
  const int64_t full = n_cols / (2 * kLanes) * (2 * kLanes);
  for (int64_t j = 0; j < full; j += 2 * kLanes) {
    normal_block(s, r, static_cast<uint32_t>(j >> 1), z + j);
  }
  if (full < n_cols) {
    double tail[2 * kLanes];
    normal_block(s, r, static_cast<uint32_t>(full >> 1), tail);
    std::copy(tail, tail + (n_cols - full), z + full);
  }
}

// corrupt_rows on the kLanes rows row0 + l; `fixed` holds 0 / 1 per lane.
__attribute__((always_inline)) static inline void corrupt_block(const Stream& s, uint32_t row0,
                                                                const int64_t* x0,
                                                                const double* sigma,
                                                                const uint8_t* fixed,
                                                                uint64_t vocab, int64_t mask_id,
                                                                int64_t* out) {
  uint32_t c0[kLanes], c1[kLanes], r0[kLanes], r1[kLanes], r2[kLanes], r3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    c0[l] = 0;
    c1[l] = row0 + static_cast<uint32_t>(l);
  }
  philox_lanes(s, c0, c1, r0, r1, r2, r3);
  int64_t keep[kLanes];  // 0 / -1 masks (one width for every lane array: the loop vectorizes)
  for (int l = 0; l < kLanes; ++l) keep[l] = -static_cast<int64_t>(fixed[l] != 0);
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t k = (static_cast<uint64_t>(r0[l]) << 20) | (r1[l] >> 12);
    const double u = ((as_double(kTwo52Bits | k) - 0x1p52) + 0.5) * 0x1p-52;
    // floor((r2 2^32 + r3) vocab / 2^64), exactly
    const int64_t index = static_cast<int64_t>((r2[l] * vocab + ((r3[l] * vocab) >> 32)) >> 32);
    const int64_t moved = mask_id >= 0 ? mask_id : index;
    const int64_t move = -static_cast<int64_t>(u < one_minus_exp_neg(sigma[l])) & ~keep[l];
    out[l] = (moved & move) | (x0[l] & ~move);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void corrupt_rows(
    const Stream& s, const int64_t* x0, const double* sigma, const bool* fixed, int64_t begin,
    int64_t end, int64_t vocab, int64_t mask_id, int64_t* out) {
  const uint64_t v = static_cast<uint64_t>(vocab);
  uint8_t no_fixed[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    const uint8_t* f = fixed ? reinterpret_cast<const uint8_t*>(fixed + i) : no_fixed;
    corrupt_block(s, static_cast<uint32_t>(i), x0 + i, sigma + i, f, v, mask_id, out + i);
  }
  if (i < end) {  // the last rows, through padded copies
    int64_t x0_tail[kLanes] = {}, out_tail[kLanes];
    double sigma_tail[kLanes] = {};
    uint8_t fixed_tail[kLanes] = {};
    const int64_t n = end - i;
    std::copy(x0 + i, x0 + end, x0_tail);
    std::copy(sigma + i, sigma + end, sigma_tail);
    if (fixed) std::copy(fixed + i, fixed + end, fixed_tail);
    corrupt_block(s, static_cast<uint32_t>(i), x0_tail, sigma_tail, fixed_tail, v, mask_id,
                  out_tail);
    std::copy(out_tail, out_tail + n, out + i);
  }
}

}  // namespace fastdiff::native
