// fastdiff_native reverse updates (fastdiff/reference/updates.py): SEDD Euler / analytic /
// denoise on the absorbing and uniform graphs, the MDLM ancestral step and the proposals of
// confidence unmasking. Each kernel forms an active row's float64 log-weights with the
// reference's formulas, in its order of operations, and races them (reverse.h, race.h).
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "reverse.h"

namespace fastdiff::native {
namespace {

// log(max(w, 0)): the reference's _log_clamped (-inf for w <= 0).
inline double log_clamped(double w) { return std::log(w > 0.0 ? w : 0.0); }

// Absorbing moves of one row: lw[j] = s_j + log_rate (j != m), then the stay column
// lw[m] = log(max(0, 1 - sum_{j != m} exp(lw[j]))) (0 weight when `never_stay`).
template <typename T>
void absorb_moves(const T* src, int64_t vocab, int64_t m, double log_rate, bool never_stay,
                  double* lw) {
  for (int64_t j = 0; j < vocab; ++j) lw[j] = to_double(src[j]) + log_rate;
  lw[m] = kNegInf;
  const double sum = vecmath::exp_sum(lw, vocab, 0.0, nullptr);
  lw[m] = log_clamped(never_stay ? 0.0 : 1.0 - sum);
}

// The uniform graph's Tweedie weights of one row (_uniform_tweedie), stay column x:
// s0 = s with s0_x = 0, score = exp(s0 - max s0), e = -expm1(-D), leave = e / V,
// stag_j = score_j - leave * sum(score), trans_j = leave (j != x), trans_x = exp(-D) + leave,
// lw_j = log(max(stag_j trans_j, 0)).
template <typename T>
void uniform_tweedie(const T* src, int64_t vocab, int64_t x, double delta, double* lw) {
  for (int64_t j = 0; j < vocab; ++j) lw[j] = to_double(src[j]);
  lw[x] = 0.0;
  const double sum = vecmath::exp_sum(lw, vocab, -vecmath::row_max(lw, vocab), lw);
  const double leave = -std::expm1(-delta) / static_cast<double>(vocab);
  const double spread = leave * sum;
  const double trans_x = std::exp(-delta) + leave;
  const double score_x = lw[x];
  vecmath::log_clamped_affine(lw, vocab, spread, leave);
  lw[x] = log_clamped((score_x - spread) * trans_x);
}

// logp = log_softmax(l) over j != m (lw[m] = -inf), in torch's order of operations:
// logp_j = (l_j - max) - log sum exp(l - max). Returns max_j logp_j = -log sum (that of the
// maximal logits).
template <typename T>
double masked_log_softmax(const T* src, int64_t vocab, int64_t m, double* lw) {
  load_row(src, vocab, lw);
  lw[m] = kNegInf;
  const double top = vecmath::row_max(lw, vocab);
  const double log_sum = std::log(vecmath::exp_sum(lw, vocab, -top, nullptr));
  for (int64_t j = 0; j < vocab; ++j) lw[j] = (lw[j] - top) - log_sum;
  return (top - top) - log_sum;
}

// SEDD Euler step, rate = dt dsigma per row. absorbing (masked rows): lw_j = s_j + log(rate),
// stay m: log max(0, 1 - sum_{j != m} exp(lw_j)); uniform (every row): the same with
// rate / V and the stay column x.
at::Tensor sedd_euler(const at::Tensor& log_score, const at::Tensor& x,
                      const at::Tensor& rate_in, const std::optional<at::Tensor>& fixed,
                      int64_t seed, int64_t offset, bool uniform, int64_t mask_id) {
  const UpdateInputs in(log_score, x, fixed);
  if (!uniform) in.check_mask_id(mask_id);
  const at::Tensor rate_t = row_scalars(rate_in, in.n, "rate");
  const double* rate = rate_t.const_data_ptr<double>();
  const int64_t* xs = in.x.const_data_ptr<int64_t>();
  const int64_t vocab = in.vocab;
  at::Tensor out;
  FASTDIFF_DISPATCH_FLOATING(in.scores.scalar_type(), "fastdiff_native::sedd_euler", [&] {
    const scalar_t* scores = in.scores.const_data_ptr<scalar_t>();
    out = race_active_rows(in, uniform ? -1 : mask_id, seed, offset, 0,
                           [&](int64_t r, RowScratch& sc) {
                             const double scale =
                                 uniform ? rate[r] / static_cast<double>(vocab) : rate[r];
                             const int64_t stay = uniform ? xs[r] : mask_id;
                             absorb_moves(scores + r * vocab, vocab, stay, std::log(scale),
                                          false, sc.lw.data());
                             return stay;
                           });
  });
  return out;
}

// SEDD analytic (Tweedie tau-leaping) step, delta = sigma - sigma_next per row. absorbing
// (masked rows): log_rate = D + log(-expm1(-D)) (log expm1 D), lw_j = s_j + log_rate, stay m:
// log max(0, 1 - sum exp(lw_j)); D = inf: log_rate = 0 and no stay weight. uniform: the
// Tweedie weights (uniform_tweedie) with stay column x.
at::Tensor sedd_analytic(const at::Tensor& log_score, const at::Tensor& x,
                         const at::Tensor& delta_in, const std::optional<at::Tensor>& fixed,
                         int64_t seed, int64_t offset, bool uniform, int64_t mask_id) {
  const UpdateInputs in(log_score, x, fixed);
  if (!uniform) in.check_mask_id(mask_id);
  const at::Tensor delta_t = row_scalars(delta_in, in.n, "delta");
  const double* delta = delta_t.const_data_ptr<double>();
  const int64_t* xs = in.x.const_data_ptr<int64_t>();
  const int64_t vocab = in.vocab;
  at::Tensor out;
  FASTDIFF_DISPATCH_FLOATING(in.scores.scalar_type(), "fastdiff_native::sedd_analytic", [&] {
    const scalar_t* scores = in.scores.const_data_ptr<scalar_t>();
    out = race_active_rows(in, uniform ? -1 : mask_id, seed, offset, 0,
                           [&](int64_t r, RowScratch& sc) {
                             const scalar_t* row = scores + r * vocab;
                             if (uniform) {
                               uniform_tweedie(row, vocab, xs[r], delta[r], sc.lw.data());
                               return xs[r];
                             }
                             const double d = delta[r];
                             double log_rate = d + std::log(-std::expm1(-d));
                             const bool never_stay = log_rate == kPosInf;
                             if (never_stay) log_rate = 0.0;
                             absorb_moves(row, vocab, mask_id, log_rate, never_stay,
                                          sc.lw.data());
                             return mask_id;
                           });
  });
  return out;
}

// Final SEDD denoising step at sigma per row. absorbing (masked rows): lw_j = s_j (j != m),
// lw_m = -inf, no stay option; uniform: the Tweedie weights with D = sigma, stay column x.
at::Tensor sedd_denoise(const at::Tensor& log_score, const at::Tensor& x,
                        const at::Tensor& sigma_in, const std::optional<at::Tensor>& fixed,
                        int64_t seed, int64_t offset, bool uniform, int64_t mask_id) {
  const UpdateInputs in(log_score, x, fixed);
  if (!uniform) in.check_mask_id(mask_id);
  const at::Tensor sigma_t = row_scalars(sigma_in, in.n, "sigma");
  const double* sigma = sigma_t.const_data_ptr<double>();
  const int64_t* xs = in.x.const_data_ptr<int64_t>();
  const int64_t vocab = in.vocab;
  at::Tensor out;
  FASTDIFF_DISPATCH_FLOATING(in.scores.scalar_type(), "fastdiff_native::sedd_denoise", [&] {
    const scalar_t* scores = in.scores.const_data_ptr<scalar_t>();
    out = race_active_rows(in, uniform ? -1 : mask_id, seed, offset, 0,
                           [&](int64_t r, RowScratch& sc) -> int64_t {
                             const scalar_t* row = scores + r * vocab;
                             if (uniform) {
                               uniform_tweedie(row, vocab, xs[r], sigma[r], sc.lw.data());
                               return xs[r];
                             }
                             load_row(row, vocab, sc.lw.data());
                             sc.lw[mask_id] = kNegInf;
                             return -1;
                           });
  });
  return out;
}

// MDLM ancestral step (masked rows): logp = log_softmax(l, m excluded),
// lw_j = logp_j + (-ss + log(-expm1(ss - st))) (j != m), lw_m = log(-expm1(-ss)), stay m.
at::Tensor mdlm_ancestral(const at::Tensor& logits, const at::Tensor& x,
                          const at::Tensor& sigma_t_in, const at::Tensor& sigma_s_in,
                          const std::optional<at::Tensor>& fixed, int64_t seed, int64_t offset,
                          int64_t mask_id) {
  const UpdateInputs in(logits, x, fixed);
  in.check_mask_id(mask_id);
  const at::Tensor st_t = row_scalars(sigma_t_in, in.n, "sigma_t");
  const at::Tensor ss_t = row_scalars(sigma_s_in, in.n, "sigma_s");
  const double* sigma_t = st_t.const_data_ptr<double>();
  const double* sigma_s = ss_t.const_data_ptr<double>();
  const int64_t vocab = in.vocab;
  at::Tensor out;
  FASTDIFF_DISPATCH_FLOATING(in.scores.scalar_type(), "fastdiff_native::mdlm_ancestral", [&] {
    const scalar_t* scores = in.scores.const_data_ptr<scalar_t>();
    out = race_active_rows(in, mask_id, seed, offset, 0, [&](int64_t r, RowScratch& sc) {
      double* lw = sc.lw.data();
      masked_log_softmax(scores + r * vocab, vocab, mask_id, lw);
      const double ss = sigma_s[r], st = sigma_t[r];
      const double log_unmask = -ss + std::log(-std::expm1(ss - st));
      for (int64_t j = 0; j < vocab; ++j) lw[j] += log_unmask;
      lw[mask_id] = std::log(-std::expm1(-ss));
      return mask_id;
    });
  });
  return out;
}

// The confidence kinds of unmask_candidates (fastdiff.updates.CONFIDENCES order).
enum Confidence : int64_t { kProb = 0, kMargin = 1, kEntropy = 2 };

// Proposal and confidence of every masked, non-fixed row: logp = log_softmax(l, m excluded);
// xhat = argmax logp (temperature 0, first maximum) or the race over logp / temperature;
// confidence p(xhat) (prob), p1 - p2 (margin, the two largest p) or sum_{p > 0} p logp
// (entropy), p = exp(logp), stored as float32. Other rows: x and -inf.
std::tuple<at::Tensor, at::Tensor> unmask_candidates(const at::Tensor& logits,
                                                     const at::Tensor& x,
                                                     const std::optional<at::Tensor>& fixed,
                                                     int64_t seed, int64_t offset,
                                                     int64_t mask_id, double temperature,
                                                     int64_t confidence) {
  const UpdateInputs in(logits, x, fixed);
  in.check_mask_id(mask_id);
  TORCH_CHECK(confidence >= kProb && confidence <= kEntropy,
              "fastdiff_native: unknown confidence kind ", confidence);
  const int64_t n = in.n, vocab = in.vocab;
  at::Tensor xhat = at::empty_like(in.x);
  at::Tensor conf = at::empty({n}, in.x.options().dtype(at::kFloat));
  const int64_t* xs = in.x.const_data_ptr<int64_t>();
  const bool* fixed_p = in.fixed_ptr();
  int64_t* xhat_p = xhat.mutable_data_ptr<int64_t>();
  float* conf_p = conf.mutable_data_ptr<float>();
  const Stream s(seed, offset);
  FASTDIFF_DISPATCH_FLOATING(in.scores.scalar_type(), "fastdiff_native::unmask_candidates", [&] {
    const scalar_t* scores = in.scores.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
      RowScratch sc(vocab, temperature == 0.0 ? 0 : vocab);
      for (int64_t r = begin; r < end; ++r) {
        if (xs[r] != mask_id || (fixed_p != nullptr && fixed_p[r])) {
          xhat_p[r] = xs[r];
          conf_p[r] = -std::numeric_limits<float>::infinity();
          continue;
        }
        double* logp = sc.lw.data();
        const double top = masked_log_softmax(scores + r * vocab, vocab, mask_id, logp);
        int64_t drawn = 0;
        if (temperature == 0.0) {
          // argmax logp: its first maximum (0 for a NaN row, as torch's argmax of -inf)
          drawn = vecmath::first_equal(logp, vocab, top);
          if (drawn == vocab) drawn = 0;
        } else {
          double* tempered = sc.extra.data();
          for (int64_t j = 0; j < vocab; ++j) tempered[j] = logp[j] / temperature;
          drawn = race_row(tempered, vocab, s, r, -1, sc.sums.data());
        }
        double value;
        if (confidence == kProb) {
          value = std::exp(logp[drawn]);
        } else if (confidence == kMargin) {
          double first = kNegInf, second = kNegInf;
          for (int64_t j = 0; j < vocab; ++j) {
            const double l = logp[j];
            if (l > first) {
              second = first;
              first = l;
            } else if (l > second) {
              second = l;
            }
          }
          value = std::exp(first) - std::exp(second);
        } else {
          value = vecmath::plogp_sum(logp, vocab);
        }
        xhat_p[r] = drawn;
        conf_p[r] = static_cast<float>(value);
      }
    });
  });
  return {xhat, conf};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdiff_native, m) {
  m.def(
      "sedd_euler(Tensor log_score, Tensor x, Tensor rate, Tensor? fixed, int seed, int offset, "
      "bool uniform, int mask_id) -> Tensor");
  m.def(
      "sedd_analytic(Tensor log_score, Tensor x, Tensor delta, Tensor? fixed, int seed, "
      "int offset, bool uniform, int mask_id) -> Tensor");
  m.def(
      "sedd_denoise(Tensor log_score, Tensor x, Tensor sigma, Tensor? fixed, int seed, "
      "int offset, bool uniform, int mask_id) -> Tensor");
  m.def(
      "mdlm_ancestral(Tensor logits, Tensor x, Tensor sigma_t, Tensor sigma_s, Tensor? fixed, "
      "int seed, int offset, int mask_id) -> Tensor");
  m.def(
      "unmask_candidates(Tensor logits, Tensor x, Tensor? fixed, int seed, int offset, "
      "int mask_id, float temperature, int confidence) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastdiff_native, CPU, m) {
  m.impl("sedd_euler", &sedd_euler);
  m.impl("sedd_analytic", &sedd_analytic);
  m.impl("sedd_denoise", &sedd_denoise);
  m.impl("mdlm_ancestral", &mdlm_ancestral);
  m.impl("unmask_candidates", &unmask_candidates);
}

}  // namespace fastdiff::native
