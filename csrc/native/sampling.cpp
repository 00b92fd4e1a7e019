// fastdiff_native::sample_categorical: the reference's categorical draw in one pass per row
// (fastdiff/reference/sampling.py): float64 log-weights, temperature, top-k / top-p / min-p
// filters, then the grouped race (race.h) or the argmax at temperature 0.
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"
#include "race.h"

namespace fastdiff::native {
namespace {

// softmax of lw[vocab] into p (float64; -inf entries get 0). Returns the row max.
double softmax_row(const double* lw, int64_t vocab, double* p) {
  double top = kNegInf;
  for (int64_t j = 0; j < vocab; ++j) top = std::max(top, lw[j]);
  double sum = 0.0;
  for (int64_t j = 0; j < vocab; ++j) {
    p[j] = std::exp(lw[j] - top);
    sum += p[j];
  }
  for (int64_t j = 0; j < vocab; ++j) p[j] /= sum;
  return top;
}

struct Filters {
  int64_t top_k;  // 0: none
  double top_p;   // 1: none
  double min_p;   // 0: none
};

// filter_logits of the reference on one row, in place; `p` and `sorted` are scratch rows.
void filter_row(double* lw, int64_t vocab, const Filters& f, double* p, double* sorted) {
  if (f.top_k > 0 && f.top_k < vocab) {
    std::copy(lw, lw + vocab, sorted);
    std::nth_element(sorted, sorted + (f.top_k - 1), sorted + vocab, std::greater<double>());
    const double kth = sorted[f.top_k - 1];
    for (int64_t j = 0; j < vocab; ++j)
      if (!(lw[j] >= kth)) lw[j] = kNegInf;
  }
  if (f.top_p < 1.0) {
    softmax_row(lw, vocab, p);
    std::copy(p, p + vocab, sorted);
    std::sort(sorted, sorted + vocab, std::greater<double>());
    // tau: the smallest sorted probability whose preceding mass is below top_p
    double cum = 0.0, tau = std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < vocab; ++j) {
      const double before = (cum + sorted[j]) - sorted[j];
      cum += sorted[j];
      if (before < f.top_p) tau = std::min(tau, sorted[j]);
    }
    for (int64_t j = 0; j < vocab; ++j)
      if (!(p[j] >= tau)) lw[j] = kNegInf;
  }
  if (f.min_p > 0.0) {
    softmax_row(lw, vocab, p);
    double top = 0.0;
    for (int64_t j = 0; j < vocab; ++j) top = std::max(top, p[j]);
    const double limit = f.min_p * top;
    for (int64_t j = 0; j < vocab; ++j)
      if (!(p[j] >= limit)) lw[j] = kNegInf;
  }
}

// The plain draw from weights (no temperature, no filter) of a float32 / float16 / bfloat16 row,
// in the ratio domain: argmax w_j / E_j, by groups when V > G (race.h). Its prob is
// w_drawn / sum w.
int64_t draw_weights(const double* w, int64_t vocab, const Stream& s, int64_t row, double* sums,
                     double* prob) {
  const int64_t drawn = race_row_ratio(w, vocab, s, row, sums);
  if (prob != nullptr) {
    double total = 0.0;
    if (vocab <= kRaceGroup) {
      for (int64_t j = 0; j < vocab; ++j) total += w[j];
    } else {
      for (int64_t g = 0; g < num_groups(vocab); ++g) total += sums[g];
    }
    *prob = w[drawn] / total;
  }
  return drawn;
}

template <typename T>
void sample_rows(const T* x, int64_t n, int64_t vocab, bool is_log, const Stream& s,
                 double temperature, const Filters& f, int64_t* index, float* prob) {
  const bool filtered = (f.top_k > 0 && f.top_k < vocab) || f.top_p < 1.0 || f.min_p > 0.0;
  const bool tempered = temperature != 1.0 && temperature > 0.0;
  // weights of a narrow dtype: w / E cannot overflow float64 (w < 2^128, E > 2^-66)
  const bool ratio = !is_log && !tempered && !filtered && temperature != 0.0 &&
                     !std::is_same_v<T, double>;
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    std::vector<double> lw(vocab), p, sorted, sums(num_groups(vocab));
    if (filtered || prob != nullptr) p.resize(vocab);
    if (filtered) sorted.resize(vocab);
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + r * vocab;
      for (int64_t j = 0; j < vocab; ++j) lw[j] = to_double(row[j]);
      if (ratio) {
        double pr;
        index[r] = draw_weights(lw.data(), vocab, s, r, sums.data(), prob ? &pr : nullptr);
        if (prob != nullptr) prob[r] = static_cast<float>(pr);
        continue;
      }
      if (!is_log) log_row(lw.data(), vocab, lw.data());
      if (tempered) {
        double top = kNegInf;
        for (int64_t j = 0; j < vocab; ++j) top = std::max(top, lw[j]);
        for (int64_t j = 0; j < vocab; ++j) lw[j] = (lw[j] - top) / temperature;
      }
      if (filtered) filter_row(lw.data(), vocab, f, p.data(), sorted.data());
      int64_t drawn;
      if (temperature == 0.0) {
        drawn = std::max_element(lw.begin(), lw.end()) - lw.begin();
      } else {
        drawn = race_row(lw.data(), vocab, s, r, -1, sums.data());
      }
      index[r] = drawn;
      if (prob != nullptr) {
        softmax_row(lw.data(), vocab, p.data());
        prob[r] = static_cast<float>(p[drawn]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> sample_categorical(const at::Tensor& weights, bool is_log,
                                                      int64_t seed, int64_t offset,
                                                      double temperature, int64_t top_k,
                                                      double top_p, double min_p,
                                                      bool return_prob) {
  check_cpu(weights, "weights");
  TORCH_CHECK(weights.dim() == 2, "fastdiff_native: weights must be [N, V]");
  const at::Tensor x = weights.contiguous();
  const int64_t n = x.size(0), vocab = x.size(1);
  at::Tensor index = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor prob = at::empty({return_prob ? n : 0}, x.options().dtype(at::kFloat));
  const Stream s(seed, offset);
  const Filters f{top_k, top_p, min_p};
  FASTDIFF_DISPATCH_FLOATING(x.scalar_type(), "fastdiff_native::sample_categorical", [&] {
    sample_rows(x.const_data_ptr<scalar_t>(), n, vocab, is_log, s, temperature, f,
                index.mutable_data_ptr<int64_t>(),
                return_prob ? prob.mutable_data_ptr<float>() : nullptr);
  });
  return {index, prob};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdiff_native, m) {
  m.def(
      "sample_categorical(Tensor weights, bool is_log, int seed, int offset, float temperature, "
      "int top_k, float top_p, float min_p, bool return_prob) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastdiff_native, CPU, m) {
  m.impl("sample_categorical", &sample_categorical);
}

}  // namespace fastdiff::native
