// The vectorized parts of the grouped race (race.h): Philox over lanes of counters, the
// exponential transform with exact tails, the per-group log-sum-exp and the argmax of a span.
//
// Each function is compiled for AVX-512, AVX2 and baseline x86-64 (target_clones; the loader
// picks the best the CPU has); every clone computes the same float64 values, because the loops
// only use IEEE operations in a fixed order (-ffp-contract=off: no fused multiply-add) and the
// branch-free log / exp of vmath.h.
#include "race.h"

#include "lanes.h"

#include <algorithm>

namespace fastdiff::native {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTDIFF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTDIFF_CLONES
#endif

namespace {


// Philox of the n <= kLanes counters (c0_start + i, c1): lanes.h's philox_block (a full block
// of kLanes counters; the lanes past n are computed and ignored).
FASTDIFF_INLINE void philox_run(const Stream& s, uint32_t c0_start, uint32_t c1, uint32_t* o0,
                                uint32_t* o1, uint32_t* o2, uint32_t* o3) {
  uint32_t c0[kLanes], rows[kLanes];
  for (int i = 0; i < kLanes; ++i) {
    c0[i] = c0_start + static_cast<uint32_t>(i);
    rows[i] = c1;
  }
  philox_block(s, c0, rows, o0, o1, o2, o3);
}

// E of the exponential transform of philox.h, branch-free: W = (k + 1/2) 2^-64 from the 63 low
// bits k of a:b (k converted as hi 2^32 + lo: one rounding, as an int64 -> double convert);
// E = -log W (bit 31 of a set) or -log1p(-W) = -(log u + c / u) with u = 1 - W and c = (1 - u) - W
// the rounding error of u (c / u computed as c (2 - u): |c| <= 2^-54, so the difference is far
// below an ulp of the result).
FASTDIFF_INLINE double exponential_vec(uint32_t a, uint32_t b) {
  const double k = u32_to_double(a & 0x7FFFFFFFu) * 0x1p32 + u32_to_double(b);
  const double w = (k + 0.5) * 0x1p-64;
  const double u = 1.0 - w;
  const double c = (1.0 - u) - w;
  const bool upper = (a >> 31) != 0;
  return -(vlog(upper ? w : u) + (upper ? 0.0 : c * (2.0 - u)));
}

// The race's key noise: -log E (log-domain keys lw - log E) or E (ratio keys w / E).
template <bool Ratio>
FASTDIFF_INLINE double key_noise(uint32_t a, uint32_t b) {
  const double e = exponential_vec(a, b);
  return Ratio ? e : -vlog(e);
}

// key_noise of `count` consecutive columns from the even column `begin` of `row`, or of the
// group draws (counters 2^30 + g, words r0, r1) when `groups` is set: out[count].
template <bool Ratio>
FASTDIFF_INLINE void noise_run(const Stream& s, int64_t row, int64_t begin, int64_t count,
                               bool groups, double* out) {
  uint32_t w0[kLanes], w1[kLanes], w2[kLanes], w3[kLanes];
  const uint32_t r = static_cast<uint32_t>(row);
  for (int64_t done = 0; done < count;) {
    if (groups) {
      const int n = static_cast<int>(std::min<int64_t>(kLanes, count - done));
      philox_run(s, kGroupCounterBase + static_cast<uint32_t>(begin + done), r, w0, w1, w2, w3);
      for (int i = 0; i < n; ++i) out[done + i] = key_noise<Ratio>(w0[i], w1[i]);
      done += n;
    } else {
      // lane i is the column pair (begin + done) / 2 + i: columns 2i <- (r0, r1), 2i+1 <- (r2, r3)
      const int64_t cols = std::min<int64_t>(2 * kLanes, count - done);
      const int n = static_cast<int>((cols + 1) / 2);
      philox_run(s, static_cast<uint32_t>((begin + done) >> 1), r, w0, w1, w2, w3);
      double even[kLanes], odd[kLanes];
      for (int i = 0; i < n; ++i) {
        even[i] = key_noise<Ratio>(w0[i], w1[i]);
        odd[i] = key_noise<Ratio>(w2[i], w3[i]);
      }
      for (int64_t j = 0; j < cols; ++j) out[done + j] = (j & 1) ? odd[j >> 1] : even[j >> 1];
      done += cols;
    }
  }
}

}  // namespace

FASTDIFF_CLONES
void neg_log_exponentials(const Stream& s, int64_t row, int64_t begin, int64_t count, bool groups,
                          double* out) {
  noise_run<false>(s, row, begin, count, groups, out);
}

FASTDIFF_CLONES
void exponentials(const Stream& s, int64_t row, int64_t begin, int64_t count, bool groups,
                  double* out) {
  noise_run<true>(s, row, begin, count, groups, out);
}

namespace {

// The race of a span of columns [begin, end) (begin even, at most G columns; v points at column
// begin) or of the groups [0, groups): argmax of the keys v / E (Ratio: weights) or
// v + (-log E) (log-weights), lowest index on ties.
template <bool Ratio>
Best race_run(const double* v, int64_t begin, int64_t count, bool groups, const Stream& s,
              int64_t row) {
  double noise[kRaceGroup];
  Best best;
  best.index = begin;
  for (int64_t done = 0; done < count; done += kRaceGroup) {
    const int64_t n = std::min<int64_t>(kRaceGroup, count - done);
    if (Ratio) {
      exponentials(s, row, begin + done, n, groups, noise);
      for (int64_t j = 0; j < n; ++j) best.offer(v[done + j] / noise[j], begin + done + j);
    } else {
      neg_log_exponentials(s, row, begin + done, n, groups, noise);
      for (int64_t j = 0; j < n; ++j) best.offer(v[done + j] + noise[j], begin + done + j);
    }
  }
  return best;
}

}  // namespace

Best race_span(const double* lw, int64_t begin, int64_t end, const Stream& s, int64_t row) {
  return race_run<false>(lw, begin, end - begin, false, s, row);
}

Best race_span_ratio(const double* w, int64_t begin, int64_t end, const Stream& s, int64_t row) {
  return race_run<true>(w, begin, end - begin, false, s, row);
}

Best race_groups(const double* log_sums, int64_t groups, const Stream& s, int64_t row) {
  return race_run<false>(log_sums, 0, groups, true, s, row);
}

Best race_groups_ratio(const double* sums, int64_t groups, const Stream& s, int64_t row) {
  return race_run<true>(sums, 0, groups, true, s, row);
}

int64_t race_row_ratio(const double* w, int64_t vocab, const Stream& s, int64_t row,
                       double* scratch) {
  if (vocab <= kRaceGroup) return race_span_ratio(w, 0, vocab, s, row).index;
  group_sums(w, vocab, scratch);
  const int64_t lo = race_groups_ratio(scratch, num_groups(vocab), s, row).index * kRaceGroup;
  return race_span_ratio(w + lo, lo, std::min(vocab, lo + kRaceGroup), s, row).index;
}

FASTDIFF_CLONES
void group_sums(const double* w, int64_t vocab, double* out) {
  constexpr int P = 8;
  const int64_t groups = num_groups(vocab);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t lo = g * kRaceGroup, n = std::min(vocab, lo + kRaceGroup) - lo;
    double acc[P] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + P <= n; j += P)
      for (int p = 0; p < P; ++p) acc[p] += w[lo + j + p];
    double sum = 0.0;
    for (int p = 0; p < P; ++p) sum += acc[p];
    for (; j < n; ++j) sum += w[lo + j];
    out[g] = sum;
  }
}

FASTDIFF_CLONES
void log_row(const double* x, int64_t n, double* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = vlog(x[j]);
}

namespace {

// log sum_j exp(lw[j]) over n <= G columns with the max shifted out (-inf for no positive
// weight), in 8 interleaved partial sums.
FASTDIFF_INLINE double log_sum_exp(const double* lw, int64_t n) {
  constexpr int P = 8;
  double m[P], acc[P];
  for (int p = 0; p < P; ++p) m[p] = kNegInf, acc[p] = 0.0;
  int64_t j = 0;
  for (; j + P <= n; j += P)
    for (int p = 0; p < P; ++p) m[p] = lw[j + p] > m[p] ? lw[j + p] : m[p];
  double top = kNegInf;
  for (int p = 0; p < P; ++p) top = m[p] > top ? m[p] : top;
  for (int64_t t = j; t < n; ++t) top = lw[t] > top ? lw[t] : top;
  const double safe = top == kNegInf ? 0.0 : top;
  for (j = 0; j + P <= n; j += P)
    for (int p = 0; p < P; ++p) acc[p] += vexp(lw[j + p] - safe);
  double sum = 0.0;
  for (int p = 0; p < P; ++p) sum += acc[p];
  for (int64_t t = j; t < n; ++t) sum += vexp(lw[t] - safe);
  return safe + std::log(sum);
}

}  // namespace

FASTDIFF_CLONES
void group_log_sums(const double* lw, int64_t vocab, int64_t stay, double* out) {
  const int64_t groups = num_groups(vocab);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t lo = g * kRaceGroup, hi = std::min(vocab, lo + kRaceGroup);
    if (stay >= lo && stay < hi) {
      double copy[kRaceGroup];
      std::copy(lw + lo, lw + hi, copy);
      copy[stay - lo] = kNegInf;
      out[g] = log_sum_exp(copy, hi - lo);
    } else {
      out[g] = log_sum_exp(lw + lo, hi - lo);
    }
  }
}

}  // namespace fastdiff::native
