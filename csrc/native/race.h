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
#include "vmath.h"

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

// -log E_j of `count` consecutive columns starting at the even column `begin` of `row`, or of
// the group draws (counters 2^30 + g, words r0, r1) when `groups` is set: out[count].
// Vectorized over lanes of counters (philox.h, vmath.h).
void neg_log_exponentials(const Stream& s, int64_t row, int64_t begin, int64_t count, bool groups,
                          double* out);

// E_j themselves (same arguments): the noise of ratio keys w / E.
void exponentials(const Stream& s, int64_t row, int64_t begin, int64_t count, bool groups,
                  double* out);

// The race in the ratio domain, argmax_j w_j / E_j (= argmax log w_j - log E_j up to rounding),
// for weights w >= 0 whose ratios cannot overflow (float32 / float16 / bfloat16 inputs):
// race_span_ratio over columns [begin, end) (w points at column begin), race_groups_ratio over
// the group totals W_g (group_sums: plain sums in 8 interleaved partial sums).
Best race_span_ratio(const double* w, int64_t begin, int64_t end, const Stream& s, int64_t row);
Best race_groups_ratio(const double* sums, int64_t groups, const Stream& s, int64_t row);
void group_sums(const double* w, int64_t vocab, double* out);

// The whole race in the ratio domain over a row of weights w[vocab] >= 0 (scratch: num_groups
// doubles, left holding the group totals when vocab > G): argmax w_j / E_j, by groups when
// vocab > G.
int64_t race_row_ratio(const double* w, int64_t vocab, const Stream& s, int64_t row,
                       double* scratch);

// out[j] = log x[j] (vmath.h's vlog, vectorized).
void log_row(const double* x, int64_t n, double* out);

// argmax_j (lw[j] - log E_j) over columns [begin, end) of `row` (begin even, end - begin <= G);
// lw points at column `begin`. Returns the absolute column and its key.
Best race_span(const double* lw, int64_t begin, int64_t end, const Stream& s, int64_t row);

// log W_g of every group (out[num_groups(vocab)]): a log-sum-exp with a per-group max, -inf for
// a group without a positive weight; the column `stay` (or -1) counts as -inf.
void group_log_sums(const double* lw, int64_t vocab, int64_t stay, double* out);

// The winning group of the group keys log W_g - log E'_g: (g*, its key).
Best race_groups(const double* log_sums, int64_t groups, const Stream& s, int64_t row);

// argmax_j (lw(j) - log E_j) over columns [begin, end), lw a callable column -> log-weight.
template <typename LogWeight>
inline Best race_columns(const LogWeight& lw, int64_t begin, int64_t end, const Stream& s,
                         int64_t row) {
  double buffer[kRaceGroup];
  Best best;
  best.index = begin;
  for (int64_t lo = begin; lo < end; lo += kRaceGroup) {
    const int64_t hi = std::min(end, lo + kRaceGroup);
    for (int64_t j = lo; j < hi; ++j) buffer[j - lo] = lw(j);
    const Best part = race_span(buffer, lo, hi, s, row);
    if (lo == begin || part.key > best.key) best = part;
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
  double buffer[kRaceGroup];
  for (int64_t j = lo; j < hi; ++j) buffer[j - lo] = j == stay ? kNegInf : lw(j);
  int64_t drawn = race_span(buffer, lo, hi, s, row).index;
  if (stay >= 0 && stay_key(lw(stay), stay, s, row) > group.key) drawn = stay;
  return drawn;
}

// The whole race over a row of float64 log-weights lw[vocab]; `scratch` holds num_groups(vocab)
// doubles; `stay` is the stay column or -1.
inline int64_t race_row(const double* lw, int64_t vocab, const Stream& s, int64_t row,
                        int64_t stay, double* scratch) {
  if (vocab <= kRaceGroup) return race_span(lw, 0, vocab, s, row).index;
  group_log_sums(lw, vocab, stay, scratch);
  return race_grouped([lw](int64_t j) { return lw[j]; }, vocab, scratch, s, row, stay);
}

}  // namespace fastdiff::native
