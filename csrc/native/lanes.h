// Vectorized lane loops of the noising and Gaussian kernels (lanes.cpp): Philox4x32-10 over
// blocks of kLanes counters, and branch-free float64 log / expm1 / sincos for the Box-Muller
// normal and the noising threshold 1 - e^-sigma.
//
// The functions compute the numbers of fastdiff/random.py (same words, same float64 formulas);
// the transcendentals are polynomial (fdlibm / musl algorithms, under 1 ulp; log is vmath.h's) instead of torch's
// SLEEF, so a value can differ from the reference's in the last bit or two of float64. They are
// written without branches or calls so that a loop over kLanes lanes vectorizes.
#pragma once

#include <cstdint>

#include "philox.h"
#include "vmath.h"

namespace fastdiff::native {

// Counters per block of the lane loops (a multiple of 8: whole AVX-512 registers; 32 keeps four
// independent Philox chains in flight).
constexpr int kLanes = 32;

// -expm1(-sigma) = 1 - e^-sigma for sigma >= 0 (inf gives 1; NaN stays NaN): x = -sigma =
// k log 2 + r with |r| <= log(2)/2, expm1(x) = 2^k expm1(r) + (2^k - 1) (exact for k = 0), and
// expm1(r) by its Taylor series to r^14 (truncation below 1e-18 relative). Error under 1 ulp.
__attribute__((always_inline)) inline double one_minus_exp_neg(double sigma) {
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  constexpr double inv_ln2 = 1.44269504088896338700e+00;
  // below -60 the result is -1 to double precision; the clamp also keeps 2^k normal
  const double x = -sigma < -60.0 ? -60.0 : -sigma;
  const double kd = (x * inv_ln2 + 0x1.8p52) - 0x1.8p52;  // round(x / log 2)
  const double r = (x - kd * ln2_hi) - kd * ln2_lo;
  // P(r) = sum_{i=0..12} r^i / (i + 2)! by Estrin's scheme (short dependency chains)
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double q0 = 1.0 / 2.0 + r * (1.0 / 6.0), q1 = 1.0 / 24.0 + r * (1.0 / 120.0),
               q2 = 1.0 / 720.0 + r * (1.0 / 5040.0), q3 = 1.0 / 40320.0 + r * (1.0 / 362880.0),
               q4 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0),
               q5 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0), q6 = 1.0 / 87178291200.0;
  const double s0 = q0 + q1 * r2, s1 = q2 + q3 * r2, s2 = q4 + q5 * r2;
  const double p = (s0 + s1 * r4) + (s2 + q6 * r4) * r8;
  const double em1 = r + r2 * p;  // expm1(r) = r + r^2 P(r)
  // 2^k: k in [-87, 0] (x in [-60, 0]); the low bits of k + 1023 + 2^52 are the exponent field
  const double two_k = as_double(as_bits(kd + (0x1p52 + 1023.0)) << 52);
  return -(two_k * em1 + (two_k - 1.0));
}

// cos and sin of a Box-Muller angle a in (0, 2 pi): q = round(2a / pi) (0..4), r = a - q pi/2
// as a double-double (pi/2 in three parts of 33, 33 and 53 bits, so q p1 and q p2 are exact), then
// fdlibm's __kernel_cos / __kernel_sin on [-pi/4, pi/4] and the quadrant's signs. Error < 1 ulp.
__attribute__((always_inline)) inline void sincos_angle(double a, double& cos_out,
                                                      double& sin_out) {
  constexpr double two_over_pi = 6.36619772367581382433e-01;
  constexpr double p1 = 1.57079632673412561417e+00, p2 = 6.07710050630396597660e-11,
                   p2t = 2.02226624879595063154e-21;
  constexpr double s1 = -1.66666666666666324348e-01, s2 = 8.33333333332248946124e-03,
                   s3 = -1.98412698298579493134e-04, s4 = 2.75573137070700676789e-06,
                   s5 = -2.50507602534068634195e-08, s6 = 1.58969099521155010221e-10;
  constexpr double c1 = 4.16666666666666019037e-02, c2 = -1.38888888888741095749e-03,
                   c3 = 2.48015872894767294178e-05, c4 = -2.75573143513906633035e-07,
                   c5 = 2.08757232129817482790e-09, c6 = -1.13596475577881948265e-11;
  const double shifted = a * two_over_pi + 0x1.8p52;
  const double q = shifted - 0x1.8p52;
  const uint64_t quadrant = as_bits(shifted) & 3;
  // |t| >= 7e-10 > |q p2| (the angles sit half a step of 2 pi / 2^32 off every multiple of
  // pi/2), so the two-term sum below is exact
  const double t = a - q * p1;
  const double w = q * p2;
  const double hi = t - w;
  const double lo = ((t - hi) - w) - q * p2t;
  const double x = hi + lo;
  const double y = (hi - x) + lo;
  const double z = x * x;
  // __kernel_sin(x, y, 1)
  const double v = z * x;
  const double rs = s2 + z * (s3 + z * (s4 + z * (s5 + z * s6)));
  const double sn = x - ((z * (0.5 * y - v * rs) - y) - v * s1);
  // __kernel_cos(x, y)
  const double zz = z * z;
  const double rc = z * (c1 + z * (c2 + z * c3)) + zz * zz * (c4 + z * (c5 + z * c6));
  const double hz = 0.5 * z;
  const double one_hz = 1.0 - hz;
  const double cs = one_hz + (((1.0 - one_hz) - hz) + (z * rc - x * y));
  // quadrant n: (cos, sin) = (C, S), (-S, C), (-C, -S), (S, -C), as integer selects and sign
  // flips (vectorizable)
  const uint64_t odd = uint64_t{0} - (quadrant & 1);
  const uint64_t c_base = (as_bits(sn) & odd) | (as_bits(cs) & ~odd);
  const uint64_t s_base = (as_bits(cs) & odd) | (as_bits(sn) & ~odd);
  cos_out = as_double(c_base ^ (((quadrant + 1) & 2) << 62));
  sin_out = as_double(s_base ^ ((quadrant & 2) << 62));
}

// Philox4x32-10 of the kLanes counters (c0[l], c1[l], offset): the four words of lane l in
// r0..r3[l]. AVX-512 or AVX2 intrinsics (8 or 4 counters per register, chosen once by CPU
// feature) or Stream::philox lane by lane.
void philox_block(const Stream& s, const uint32_t* c0, const uint32_t* c1, uint32_t* r0,
                  uint32_t* r1, uint32_t* r2, uint32_t* r3);

// N(0, 1) of columns [0, n_cols) of `row` into z (Box-Muller of fastdiff.random.normal: pair i
// gives U from words (r0, r1) and the angle from r2; z[2i] = sqrt(-2 log U) cos, z[2i + 1] the
// sin). Vectorized over blocks of kLanes pairs; compiled for AVX-512, AVX2 and the baseline.
void normal_row(const Stream& s, int64_t row, int64_t n_cols, double* z);

// Absorbing / uniform noising of rows [begin, end) (fastdiff.reference.noising.corrupt): row i
// draws U and K on [0, vocab) from counter (0, i) (fastdiff.random.row_uniform_and_index) and
// moves when U < 1 - e^-sigma[i] and not fixed[i] (fixed may be null), to mask_id when
// mask_id >= 0 (absorbing) else to K (uniform); out[i] = x0[i] otherwise. vocab < 2^31.
void corrupt_rows(const Stream& s, const int64_t* x0, const double* sigma, const bool* fixed,
                  int64_t begin, int64_t end, int64_t vocab, int64_t mask_id, int64_t* out);

}  // namespace fastdiff::native
