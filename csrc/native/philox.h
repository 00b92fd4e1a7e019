// Counter-based randomness of fastdiff in C++: the same numbers as fastdiff/random.py.
//
// Every draw is a pure function of (seed, offset, row, column): Philox4x32-10 with key
// (seed_lo, seed_hi) and counter (column / 2, row, offset_lo, offset_hi); column 2i takes words
// (r0, r1) of pair i, column 2i + 1 words (r2, r3). Group g of the grouped race draws from
// counter (2^30 + g, row, offset_lo, offset_hi), words (r0, r1). The transforms below compute in
// float64 exactly as fastdiff/random.py does (same integer bit extraction, same float64
// formulas); log / log1p / cos / sin come from the C library, so a value can differ from torch's
// in the last bit where the two libraries round differently.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastdiff::native {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// The race's group size and group counter base (fastdiff.random.RACE_GROUP, GROUP_COUNTER_BASE).
constexpr int64_t kRaceGroup = 256;
constexpr uint32_t kGroupCounterBase = 1u << 30;

struct Words {
  uint32_t r0, r1, r2, r3;
};

// The stream of one op call: the Philox key and the two offset words.
struct Stream {
  uint32_t k0, k1, off_lo, off_hi;
  Stream(int64_t seed, int64_t offset)
      : k0(static_cast<uint32_t>(static_cast<uint64_t>(seed))),
        k1(static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32)),
        off_lo(static_cast<uint32_t>(static_cast<uint64_t>(offset))),
        off_hi(static_cast<uint32_t>(static_cast<uint64_t>(offset) >> 32)) {}

  inline Words philox(uint32_t c0, uint32_t c1) const {
    uint32_t c2 = off_lo, c3 = off_hi, a = k0, b = k1;
    for (int r = 0; r < kPhiloxRounds; ++r) {
      if (r) {
        a += kPhiloxW0;
        b += kPhiloxW1;
      }
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ a;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ b;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
    }
    return {c0, c1, c2, c3};
  }

  // The words (a, b) of column `col` of `row`.
  inline void column_words(int64_t row, int64_t col, uint32_t& a, uint32_t& b) const {
    const Words w = philox(static_cast<uint32_t>(col >> 1), static_cast<uint32_t>(row));
    if (col & 1) {
      a = w.r2;
      b = w.r3;
    } else {
      a = w.r0;
      b = w.r1;
    }
  }
};

// U(0, 1) = (k + 1/2) 2^-52 from the top 52 bits of a:b; never 0 or 1.
inline double uniform_from_words(uint32_t a, uint32_t b) {
  const uint64_t k = (static_cast<uint64_t>(a) << 20) | (b >> 12);
  return (static_cast<double>(k) + 0.5) * 0x1p-52;
}

// Exp(1) with exact tails: bit 31 of a picks the half, the other 63 bits give W in (0, 1/2);
// E = -log(W) (upper half of E) or -log1p(-W).
inline double exponential_from_words(uint32_t a, uint32_t b) {
  const uint64_t k = (static_cast<uint64_t>(a & 0x7FFFFFFFu) << 32) | b;
  const double w = (static_cast<double>(static_cast<int64_t>(k)) + 0.5) * 0x1p-64;
  return (a >> 31) ? -std::log(w) : -std::log1p(-w);
}

// -log(E) of the exponential above: the Gumbel key term of the race.
inline double neg_log_exponential(uint32_t a, uint32_t b) {
  return -std::log(exponential_from_words(a, b));
}

// The angle of the Box-Muller pair from word r2: (r2 + 1/2) 2 pi 2^-32.
inline double normal_angle(uint32_t r2) {
  return (static_cast<double>(r2) + 0.5) * (2.0 * M_PI * 0x1p-32);
}

}  // namespace fastdiff::native
