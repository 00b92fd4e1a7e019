// The vectorized loops of lanes.h: the Box-Muller row and the noising rows, compiled for
// AVX-512, AVX2 and the baseline ISA (picked at load time by the ifunc of target_clones). The
// Philox rounds and the square roots, which GCC does not vectorize well by itself (it unrolls
// the lanes into scalar code; sqrt keeps its errno branch), are written with intrinsics per ISA
// and picked once by CPU feature.
//
// No FMA contraction: every ISA rounds the same operations, so the noise does not depend on the
// machine.
//
// GCC 12 reports its own _mm512_undefined_* placeholders as uninitialized (a false positive,
// GCC bug 105593) at every AVX-512 intrinsic inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>

#pragma GCC optimize("fp-contract=off")

#include "lanes.h"

namespace fastdiff::native {
namespace {

constexpr uint64_t kTwo52Bits = 0x4330000000000000;  // the bits of 2^52

// Philox4x32-10 of kLanes counters (c0[l], c1[l]): the words of lane l to r0..r3[l].
using PhiloxLanes = void (*)(const Stream&, const uint32_t*, const uint32_t*, uint32_t*,
                             uint32_t*, uint32_t*, uint32_t*);
// v[l] = sqrt(v[l]) for the kLanes lanes (v[l] >= 0).
using SqrtLanes = void (*)(double*);

// AVX-512: 8 counters per register, one per 64-bit lane (vpmuludq multiplies the low 32 bits of
// each lane into 64). The high halves pick up junk (the products' high words ride along in c1, c3
// and are XORed into c0, c2) that vpmuludq ignores and the final narrowing to 32 bits drops. The
// kLanes / 8 registers go through each round together: independent chains hide the latency.
__attribute__((target("avx512f"))) void philox_avx512(const Stream& s, const uint32_t* c0_in,
                                                      const uint32_t* c1_in, uint32_t* r0,
                                                      uint32_t* r1, uint32_t* r2, uint32_t* r3) {
  constexpr int kRegs = kLanes / 8;
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  __m512i c0[kRegs], c1[kRegs], c2[kRegs], c3[kRegs];
  for (int g = 0; g < kRegs; ++g) {
    c0[g] = _mm512_cvtepu32_epi64(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0_in + 8 * g)));
    c1[g] = _mm512_cvtepu32_epi64(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c1_in + 8 * g)));
    c2[g] = _mm512_set1_epi64(s.off_lo);
    c3[g] = _mm512_set1_epi64(s.off_hi);
  }
  uint32_t a = s.k0, b = s.k1;
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r) {
      a += kPhiloxW0;
      b += kPhiloxW1;
    }
    const __m512i ka = _mm512_set1_epi64(a), kb = _mm512_set1_epi64(b);
    for (int g = 0; g < kRegs; ++g) {
      const __m512i p0 = _mm512_mul_epu32(c0[g], m0), p1 = _mm512_mul_epu32(c2[g], m1);
      // x ^ y ^ z: ternary logic 0x96
      c0[g] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[g], ka, 0x96);
      c2[g] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[g], kb, 0x96);
      c1[g] = p1;
      c3[g] = p0;
    }
  }
  for (int g = 0; g < kRegs; ++g) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r0 + 8 * g), _mm512_cvtepi64_epi32(c0[g]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r1 + 8 * g), _mm512_cvtepi64_epi32(c1[g]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r2 + 8 * g), _mm512_cvtepi64_epi32(c2[g]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r3 + 8 * g), _mm512_cvtepi64_epi32(c3[g]));
  }
}

// The low 32 bits of the four 64-bit lanes of x.
__attribute__((target("avx2"))) inline __m128i low_words_avx2(__m256i x) {
  const __m256i packed = _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0));
  return _mm256_castsi256_si128(packed);
}

// AVX2: as philox_avx512 with 4 counters per register.
__attribute__((target("avx2"))) void philox_avx2(const Stream& s, const uint32_t* c0_in,
                                                 const uint32_t* c1_in, uint32_t* r0, uint32_t* r1,
                                                 uint32_t* r2, uint32_t* r3) {
  constexpr int kRegs = kLanes / 4;
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  __m256i c0[kRegs], c1[kRegs], c2[kRegs], c3[kRegs];
  for (int g = 0; g < kRegs; ++g) {
    c0[g] = _mm256_cvtepu32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c0_in + 4 * g)));
    c1[g] = _mm256_cvtepu32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c1_in + 4 * g)));
    c2[g] = _mm256_set1_epi64x(s.off_lo);
    c3[g] = _mm256_set1_epi64x(s.off_hi);
  }
  uint32_t a = s.k0, b = s.k1;
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r) {
      a += kPhiloxW0;
      b += kPhiloxW1;
    }
    const __m256i ka = _mm256_set1_epi64x(a), kb = _mm256_set1_epi64x(b);
    for (int g = 0; g < kRegs; ++g) {
      const __m256i p0 = _mm256_mul_epu32(c0[g], m0), p1 = _mm256_mul_epu32(c2[g], m1);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[g]), ka);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[g]), kb);
      c1[g] = p1;
      c3[g] = p0;
    }
  }
  for (int g = 0; g < kRegs; ++g) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(r0 + 4 * g), low_words_avx2(c0[g]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(r1 + 4 * g), low_words_avx2(c1[g]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(r2 + 4 * g), low_words_avx2(c2[g]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(r3 + 4 * g), low_words_avx2(c3[g]));
  }
}

// Any CPU: Stream::philox lane by lane.
void philox_generic(const Stream& s, const uint32_t* c0, const uint32_t* c1, uint32_t* r0,
                    uint32_t* r1, uint32_t* r2, uint32_t* r3) {
  for (int l = 0; l < kLanes; ++l) {
    const Words w = s.philox(c0[l], c1[l]);
    r0[l] = w.r0;
    r1[l] = w.r1;
    r2[l] = w.r2;
    r3[l] = w.r3;
  }
}

__attribute__((target("avx512f"))) void sqrt_avx512(double* v) {
  for (int l = 0; l < kLanes; l += 8) {
    _mm512_storeu_pd(v + l, _mm512_sqrt_pd(_mm512_loadu_pd(v + l)));
  }
}

__attribute__((target("avx2"))) void sqrt_avx2(double* v) {
  for (int l = 0; l < kLanes; l += 4) {
    _mm256_storeu_pd(v + l, _mm256_sqrt_pd(_mm256_loadu_pd(v + l)));
  }
}

void sqrt_generic(double* v) {
  for (int l = 0; l < kLanes; ++l) v[l] = std::sqrt(v[l]);
}

// The Philox and sqrt of this CPU, chosen once.
struct LaneKernels {
  PhiloxLanes philox;
  SqrtLanes sqrt;
};

LaneKernels pick_lane_kernels() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {philox_avx512, sqrt_avx512};
  if (__builtin_cpu_supports("avx2")) return {philox_avx2, sqrt_avx2};
  return {philox_generic, sqrt_generic};
}

const LaneKernels kLaneKernels = pick_lane_kernels();

}  // namespace

void philox_block(const Stream& s, const uint32_t* c0, const uint32_t* c1, uint32_t* r0,
                  uint32_t* r1, uint32_t* r2, uint32_t* r3) {
  kLaneKernels.philox(s, c0, c1, r0, r1, r2, r3);
}

namespace {

// z[2l], z[2l + 1] of the kLanes pairs pair0 + l of `row` (pair i: counter (i, row)).
__attribute__((always_inline)) inline void normal_block(const Stream& s, uint32_t row,
                                                               uint32_t pair0, double* z) {
  uint32_t c0[kLanes], c1[kLanes], r0[kLanes], r1[kLanes], r2[kLanes], r3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    c0[l] = pair0 + static_cast<uint32_t>(l);
    c1[l] = row;
  }
  kLaneKernels.philox(s, c0, c1, r0, r1, r2, r3);
  double v[kLanes], c[kLanes], sn[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    // U = (k + 1/2) 2^-52 from the top 52 bits of r0:r1; the angle (r2 + 1/2) 2 pi 2^-32
    // (integers below 2^52 become doubles exactly through the bits of 2^52 + k)
    const uint64_t k = (static_cast<uint64_t>(r0[l]) << 20) | (r1[l] >> 12);
    const double u = ((as_double(kTwo52Bits | k) - 0x1p52) + 0.5) * 0x1p-52;
    v[l] = -2.0 * vlog_positive(u);
    const double angle = ((as_double(kTwo52Bits | r2[l]) - 0x1p52) + 0.5) * (2.0 * M_PI * 0x1p-32);
    sincos_angle(angle, c[l], sn[l]);
  }
  kLaneKernels.sqrt(v);
  for (int l = 0; l < kLanes; ++l) {
    z[2 * l] = v[l] * c[l];
    z[2 * l + 1] = v[l] * sn[l];
  }
}

}  // namespace

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

// corrupt_rows on the kLanes rows row0 + l; `fixed` holds 0 / 1 per lane. kAbsorb: moved rows
// take mask_id; else their integer uniform on [0, vocab).
template <bool kAbsorb>
__attribute__((always_inline)) inline void corrupt_block(const Stream& s, uint32_t row0,
                                                         const int64_t* x0, const double* sigma,
                                                         const uint8_t* fixed, uint32_t vocab,
                                                         int64_t mask_id, int64_t* out) {
  uint32_t c0[kLanes], c1[kLanes], r0[kLanes], r1[kLanes], r2[kLanes], r3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    c0[l] = 0;
    c1[l] = row0 + static_cast<uint32_t>(l);
  }
  kLaneKernels.philox(s, c0, c1, r0, r1, r2, r3);
  int64_t keep[kLanes];  // 0 / -1 masks (one width for every lane array: the loop vectorizes)
  for (int l = 0; l < kLanes; ++l) keep[l] = -static_cast<int64_t>(fixed[l] != 0);
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t k = (static_cast<uint64_t>(r0[l]) << 20) | (r1[l] >> 12);
    const double u = ((as_double(kTwo52Bits | k) - 0x1p52) + 0.5) * 0x1p-52;
    int64_t moved = mask_id;
    if constexpr (!kAbsorb) {
      // floor((r2 2^32 + r3) vocab / 2^64), exactly (32 x 32 -> 64-bit products)
      const uint64_t hi = static_cast<uint64_t>(r2[l]) * vocab;
      const uint64_t lo = static_cast<uint64_t>(r3[l]) * vocab;
      moved = static_cast<int64_t>((hi + (lo >> 32)) >> 32);
    }
    const int64_t move = -static_cast<int64_t>(u < one_minus_exp_neg(sigma[l])) & ~keep[l];
    out[l] = (moved & move) | (x0[l] & ~move);
  }
}

template <bool kAbsorb>
__attribute__((always_inline)) inline void corrupt_span(const Stream& s, const int64_t* x0,
                                                        const double* sigma, const bool* fixed,
                                                        int64_t begin, int64_t end, uint32_t vocab,
                                                        int64_t mask_id, int64_t* out) {
  uint8_t no_fixed[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    const uint8_t* f = fixed ? reinterpret_cast<const uint8_t*>(fixed + i) : no_fixed;
    corrupt_block<kAbsorb>(s, static_cast<uint32_t>(i), x0 + i, sigma + i, f, vocab, mask_id,
                           out + i);
  }
  if (i < end) {  // the last rows, through padded copies
    int64_t x0_tail[kLanes] = {}, out_tail[kLanes];
    double sigma_tail[kLanes] = {};
    uint8_t fixed_tail[kLanes] = {};
    const int64_t n = end - i;
    std::copy(x0 + i, x0 + end, x0_tail);
    std::copy(sigma + i, sigma + end, sigma_tail);
    if (fixed) std::copy(fixed + i, fixed + end, fixed_tail);
    corrupt_block<kAbsorb>(s, static_cast<uint32_t>(i), x0_tail, sigma_tail, fixed_tail, vocab,
                           mask_id, out_tail);
    std::copy(out_tail, out_tail + n, out + i);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void corrupt_rows(
    const Stream& s, const int64_t* x0, const double* sigma, const bool* fixed, int64_t begin,
    int64_t end, int64_t vocab, int64_t mask_id, int64_t* out) {
  const uint32_t v = static_cast<uint32_t>(vocab);
  if (mask_id >= 0) {
    corrupt_span<true>(s, x0, sigma, fixed, begin, end, v, mask_id, out);
  } else {
    corrupt_span<false>(s, x0, sigma, fixed, begin, end, v, mask_id, out);
  }
}

}  // namespace fastdiff::native
