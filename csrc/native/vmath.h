// Branch-free float64 log and exp written so that GCC vectorizes loops that call them (no
// library calls, no branches: bit manipulation through memcpy, selects through ?:).
//
// Both follow fdlibm's algorithms (e_log.c, e_exp.c: the same reductions and minimax
// polynomials), accurate to about 1 ulp, like the C library's and torch's (Sleef u10) float64
// log / exp: a result may differ from torch's in the last bit, which moves a race's draw only
// where two keys tie within a few ulps.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace fastdiff::native {

#define FASTDIFF_INLINE inline __attribute__((always_inline))

FASTDIFF_INLINE uint64_t as_bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

FASTDIFF_INLINE double as_double(uint64_t u) {
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// The 2^52 + 2^51 magic number: adding it to a double of magnitude below 2^51 rounds to an
// integer held in the low bits (and back), which vectorizes without int64 <-> double converts.
constexpr double kMagic = 0x1.8p52;
constexpr uint64_t kMagicBits = 0x4338000000000000ull;

// int64 -> double exactly for |k| < 2^51.
FASTDIFF_INLINE double small_int_to_double(int64_t k) {
  return as_double(kMagicBits + static_cast<uint64_t>(k)) - kMagic;
}

// log(x) for a positive normal finite x (fdlibm e_log.c without its branches): x = 2^k m with
// m in [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f),
// log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), plus k log 2 in two parts. Error < 1 ulp.
FASTDIFF_INLINE double vlog_positive(double x) {
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  constexpr double lg1 = 6.666666666666735130e-01, lg2 = 3.999999999940941908e-01,
                   lg3 = 2.857142874366239149e-01, lg4 = 2.222219843214978396e-01,
                   lg5 = 1.818357216161805012e-01, lg6 = 1.531383769920937332e-01,
                   lg7 = 1.479819860511658591e-01;
  // adding 1 - sqrt(2)/2 (in the high word) carries into the exponent exactly when m >= sqrt(2)
  const uint64_t shifted = as_bits(x) + (uint64_t{0x3ff00000 - 0x3fe6a09e} << 32);
  // k + 2^52 + 1023 as a double from the biased exponent bits, then k exactly
  const double dk = as_double(uint64_t{0x4330000000000000} | (shifted >> 52)) - (0x1p52 + 1023.0);
  const double m =
      as_double((shifted & uint64_t{0x000fffffffffffff}) + (uint64_t{0x3fe6a09e} << 32));
  const double f = m - 1.0;
  const double hfsq = 0.5 * f * f;
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double t1 = w * (lg2 + w * (lg4 + w * lg6));
  const double t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)));
  const double r = t2 + t1;
  return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}

// log(x) for any x >= 0 (log 0 = -inf, log inf = inf, subnormals scaled by 2^54 first; x < 0
// or NaN gives NaN).
FASTDIFF_INLINE double vlog(double x) {
  const bool tiny = x < 0x1p-1022;
  const double y = vlog_positive(tiny ? x * 0x1p54 : x) - (tiny ? 54.0 * 0x1.62E42FEFA39EFp-1 : 0.0);
  const double inf = std::numeric_limits<double>::infinity();
  const double special =
      x == 0.0 ? -inf : (x == inf ? inf : std::numeric_limits<double>::quiet_NaN());
  return (x > 0.0 && x < inf) ? y : special;
}

// exp(x) (exp(-inf) = 0, exp(inf) = inf; NaN gives NaN); subnormal results are rounded once.
FASTDIFF_INLINE double vexp(double x) {
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  constexpr double inv_ln2 = 1.44269504088896338700e+00;
  constexpr double P1 = 1.66666666666666019037e-01, P2 = -2.77777777770155933842e-03,
                   P3 = 6.61375632143793436117e-05, P4 = -1.65339022054652515390e-06,
                   P5 = 4.13813679705723846039e-08;
  const double xc = x < -746.0 ? -746.0 : (x > 710.0 ? 710.0 : x);  // NaN passes through
  const double shifted = xc * inv_ln2 + kMagic;  // round to nearest: k in the low bits
  const double kd = shifted - kMagic;
  const double hi = xc - kd * ln2_hi, lo = kd * ln2_lo;
  const double r = hi - lo, t = r * r;
  const double c = r - t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))));
  const double y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi);
  // y 2^k as y 2^k1 2^k2 with k1 = k / 2: both factors normal, one rounding at the end
  const int64_t k = static_cast<int64_t>(as_bits(shifted) - kMagicBits);
  const int64_t k1 = k >> 1, k2 = k - k1;
  const double out = y * as_double(static_cast<uint64_t>(k1 + 1023) << 52) *
                     as_double(static_cast<uint64_t>(k2 + 1023) << 52);
  const double inf = std::numeric_limits<double>::infinity();
  return x < -745.2 ? 0.0 : (x > 709.79 ? inf : (x == x ? out : x));
}

// uint32 -> double exactly, through the 2^52 magic number (vectorizes without int64 converts).
FASTDIFF_INLINE double u32_to_double(uint32_t u) {
  return as_double(0x4330000000000000ull | u) - 0x1p52;
}

}  // namespace fastdiff::native
