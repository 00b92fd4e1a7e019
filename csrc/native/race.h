// The grouped exponential race of fastdiff/random.py in C++, one row at a time.
//
// Keys are float64 and computed with the reference's formulas, so a row draws the same column
// as fastdiff.reference.sampling.race unless two keys tie within a few ulps (the C library's
// exp / log round differently from torch's in the last bit).
//
// - V <= G: argmax_j (lw_j - log E_j) over the columns (race_small).
// - V > G: g* = argmax_g (log W_g - log E'_g) over the groups of G columns (race_groups), with
//   log W_g from group_log_sums (a log-sum-exp with a per-group max, -inf for an empty group),
//   then argmax_{j in g*} (lw_j - log E_j) (race_span). A stay column (reverse updates) is taken
//   out of its group and raced on its own: it wins when its key is strictly above the best group
//   key (stay_key).
// Ties go to the lowest group and column; -inf never wins; a row of only -inf returns 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "philox.h"

namespace fastdiff::native {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

inline int64_t num_groups(int64_t vocab) { return (vocab + kRaceGroup - 1) / kRaceGroup; }

// The running argmax: `key` replaces the best only when strictly larger (lowest index on ties).
struct Best {
  double key = kNegInf;
  int64_t index = 0;
  inline void offer(double k, int64_t i) {
    if (k > key) {
      key = k;
      index = i;
    }
  }
};

// argmax_j (lw(j) - log E_j) over columns [begin, end) (begin even); Best.index is absolute.
template <typename LogWeight>
inline Best race_columns(const LogWeight& lw, int64_t begin, int64_t end, const Stream& s,
                         int64_t row) {
  Best best;
  best.index = begin;
  for (int64_t j = begin; j < end; j += 2) {
    const double l0 = lw(j);
    const bool two = j + 1 < end;
    const double l1 = two ? lw(j + 1) : kNegInf;
    if (l0 == kNegInf && l1 == kNegInf) continue;
    const Words w = s.philox(static_cast<uint32_t>(j >> 1), static_cast<uint32_t>(row));
    if (l0 != kNegInf) best.offer(l0 - std::log(exponential_from_words(w.r0, w.r1)), j);
    if (l1 != kNegInf) best.offer(l1 - std::log(exponential_from_words(w.r2, w.r3)), j + 1);
  }
  return best;
}

// log W_g of every group (out[n_groups]); the column `stay` (or -1) counts as -inf.
inline void group_log_sums(const double* lw, int64_t vocab, int64_t stay, double* out) {
  const int64_t groups = num_groups(vocab);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t lo = g * kRaceGroup, hi = std::min(vocab, lo + kRaceGroup);
    double top = kNegInf;
    for (int64_t j = lo; j < hi; ++j) {
      const double v = j == stay ? kNegInf : lw[j];
      top = v > top ? v : top;
    }
    const double safe = top == kNegInf ? 0.0 : top;
    double sum = 0.0;
    for (int64_t j = lo; j < hi; ++j) {
      if (j != stay) sum += std::exp(lw[j] - safe);
    }
    out[g] = safe + std::log(sum);
  }
}

// The winning group of the group keys log W_g - log E'_g: (g*, its key).
inline Best race_groups(const double* log_sums, int64_t groups, const Stream& s, int64_t row) {
  Best best;
  for (int64_t g = 0; g < groups; ++g) {
    if (log_sums[g] == kNegInf) continue;
    const Words w = s.philox(kGroupCounterBase + static_cast<uint32_t>(g),
                             static_cast<uint32_t>(row));
    best.offer(log_sums[g] - std::log(exponential_from_words(w.r0, w.r1)), g);
  }
  return best;
}

// The key lw_stay - log E_stay of a stay column (its column noise).
inline double stay_key(double lw_stay, int64_t stay, const Stream& s, int64_t row) {
  uint32_t a, b;
  s.column_words(row, stay, a, b);
  return lw_stay - std::log(exponential_from_words(a, b));
}

// The grouped race given the group log-sums: g* by the group keys, then the columns of g*
// (lw(stay) counts as -inf there), then the stay column against the best group key.
template <typename LogWeight>
inline int64_t race_grouped(const LogWeight& lw, int64_t vocab, const double* log_sums,
                            const Stream& s, int64_t row, int64_t stay) {
  const Best group = race_groups(log_sums, num_groups(vocab), s, row);
  const int64_t lo = group.index * kRaceGroup, hi = std::min(vocab, lo + kRaceGroup);
  int64_t drawn;
  if (stay >= lo && stay < hi) {
    auto without_stay = [&](int64_t j) { return j == stay ? kNegInf : lw(j); };
    drawn = race_columns(without_stay, lo, hi, s, row).index;
  } else {
    drawn = race_columns(lw, lo, hi, s, row).index;
  }
  if (stay >= 0 && stay_key(lw(stay), stay, s, row) > group.key) drawn = stay;
  return drawn;
}

// The whole race over a row of float64 log-weights lw[vocab]; `scratch` holds num_groups(vocab)
// doubles; `stay` is the stay column or -1.
inline int64_t race_row(const double* lw, int64_t vocab, const Stream& s, int64_t row,
                        int64_t stay, double* scratch) {
  auto at = [lw](int64_t j) { return lw[j]; };
  if (vocab <= kRaceGroup) return race_columns(at, 0, vocab, s, row).index;
  group_log_sums(lw, vocab, stay, scratch);
  return race_grouped(at, vocab, scratch, s, row, stay);
}

}  // namespace fastdiff::native
