// fastdiff_native::q_sample, ddpm_step, ddim_step: the Gaussian noise paths of
// fastdiff/reference/gaussian.py with the normal draw fused into the op's arithmetic.
//
// Row i of an [N, H] state draws its noise z[i, :] = fastdiff.random.normal(seed, offset, i, H)
// (lanes.h, normal_row: float64 Box-Muller into a row buffer that stays in cache) and combines it
// with the row at once. The per-row coefficients come in as coef [N, K] in the compute type CT
// (float64 when an input is float64, float32 otherwise), formed by the Python wrapper with the
// reference's own float64 torch expressions (torch's float64 sqrt is not always correctly
// rounded, so C++ could not reproduce them bit for bit). The [N, H] arithmetic rounds exactly
// the operations the reference rounds, in its order (no FMA: these loops are built for the
// baseline ISA), so outputs equal the reference's except where a noise value differs in its last
// float64 bit and that moves a rounding of the output.
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"
#include "lanes.h"

namespace fastdiff::native {
namespace {

// Optional bool [n] mask (contiguous) or undefined.
at::Tensor optional_mask(const std::optional<at::Tensor>& mask, int64_t n) {
  if (!mask.has_value()) return {};
  check_cpu(*mask, "fixed");
  TORCH_CHECK(mask->scalar_type() == at::kBool && mask->numel() == n,
              "fastdiff_native: fixed must be bool [N]");
  return mask->reshape({-1}).contiguous();
}

// Per-row coefficients [n, k] in the compute dtype (float32 / float64), contiguous.
at::Tensor coefficients(const at::Tensor& coef, int64_t n, int64_t k) {
  check_cpu(coef, "coef");
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == n && coef.size(1) == k,
              "fastdiff_native: coef must be [N, ", k, "]");
  TORCH_CHECK(coef.scalar_type() == at::kFloat || coef.scalar_type() == at::kDouble,
              "fastdiff_native: coef must be float32 or float64 (the compute dtype)");
  return coef.contiguous();
}

// An [n, h] state, contiguous; `dtype` when defined must match.
at::Tensor state(const at::Tensor& t, int64_t n, int64_t h, const char* name,
                 std::optional<at::ScalarType> dtype = std::nullopt) {
  check_cpu(t, name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == h, "fastdiff_native: ", name,
              " must be [N, H]");
  TORCH_CHECK(!dtype.has_value() || t.scalar_type() == *dtype, "fastdiff_native: ", name,
              " must be in the compute dtype");
  return t.contiguous();
}

// Calls f(CT{}) with CT = float or double as `ct` says.
template <typename F>
void with_compute_type(at::ScalarType ct, const F& f) {
  if (ct == at::kDouble) {
    f(double{});
  } else {
    f(float{});
  }
}

template <typename CT>
const CT* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<CT>() : nullptr;
}

// The rounding of a float64 noise value to the state dtype T, as torch's .to(T) does it (fp16 /
// bf16 through float32).
template <typename T>
inline T round_noise(double z) {
  if constexpr (std::is_same_v<T, double> || std::is_same_v<T, float>) {
    return static_cast<T>(z);
  } else {
    return static_cast<T>(static_cast<float>(z));
  }
}

// One q_sample row with drawn noise: eps[j] = T(z[j]), out[j] = T(ca CT(src[j]) + cb CT(eps[j])).
template <typename T, typename CT>
void combine_drawn(const T* __restrict src, const double* __restrict z, int64_t h, CT ca, CT cb,
                   T* __restrict eps, T* __restrict out) {
  for (int64_t j = 0; j < h; ++j) {
    const T e = round_noise<T>(z[j]);
    eps[j] = e;
    out[j] = static_cast<T>(ca * static_cast<CT>(src[j]) + cb * static_cast<CT>(e));
  }
}

// One q_sample row with given CT noise: out[j] = T(ca CT(src[j]) + cb noise[j]).
template <typename T, typename CT>
void combine_given(const T* __restrict src, const CT* __restrict noise, int64_t h, CT ca, CT cb,
                   T* __restrict out) {
  for (int64_t j = 0; j < h; ++j) {
    out[j] = static_cast<T>(ca * static_cast<CT>(src[j]) + cb * noise[j]);
  }
}

// q_sample rows: src row i = table[ids[i]] (ids given) or x0[i]; with coef row (ca, cb) =
// (sqrt(abar), sqrt(1 - abar)), x_t = T(ca CT(src) + cb CT(eps)), eps the given CT noise or T(z);
// fixed rows: x_t = src, drawn eps = 0. clean (when given) receives the src rows.
template <typename T, typename CT>
void q_sample_rows(const T* x0, const int64_t* ids, const CT* coef, const CT* noise,
                   const bool* fixed, int64_t n, int64_t h, const Stream& s, T* x_t, T* eps,
                   T* clean) {
  at::parallel_for(0, n, row_grain(h), [&](int64_t begin, int64_t end) {
    std::vector<double> z(noise == nullptr ? h : 0);
    for (int64_t i = begin; i < end; ++i) {
      const T* src = x0 + (ids != nullptr ? ids[i] : i) * h;
      T* out = x_t + i * h;
      if (clean != nullptr) std::copy(src, src + h, clean + i * h);
      if (fixed != nullptr && fixed[i]) {
        std::copy(src, src + h, out);
        if (noise == nullptr) std::fill(eps + i * h, eps + (i + 1) * h, T(0));
        continue;
      }
      const CT ca = coef[2 * i], cb = coef[2 * i + 1];
      if (noise != nullptr) {
        combine_given(src, noise + i * h, h, ca, cb, out);
      } else {
        normal_row(s, i, h, z.data());
        combine_drawn(src, z.data(), h, ca, cb, eps + i * h, out);
      }
    }
  });
}

// x_t, eps, clean: forward noising of x0 [N, H] (or of the rows embedding[x0] for int64 ids
// x0 [N]) with coef [N, 2] = (sqrt(abar), sqrt(1 - abar)) in CT; eps is the drawn noise in the
// state dtype, or empty when `noise` (CT [N, H]) is given; clean is the gathered rows for token
// input, else empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> q_sample(
    const at::Tensor& x0, const at::Tensor& coef, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& embedding, const std::optional<at::Tensor>& fixed,
    int64_t seed, int64_t offset) {
  check_cpu(x0, "x0");
  const bool gather = embedding.has_value();
  at::Tensor src, ids;
  int64_t n, h;
  if (gather) {
    check_cpu(*embedding, "embedding");
    TORCH_CHECK(embedding->dim() == 2, "fastdiff_native: embedding must be [V, H]");
    TORCH_CHECK(x0.scalar_type() == at::kLong && x0.dim() == 1,
                "fastdiff_native: token ids must be int64 [N]");
    src = embedding->contiguous();
    ids = x0.contiguous();
    n = ids.numel();
    h = src.size(1);
    if (n > 0) {  // the gather never reads outside the table
      TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < src.size(0),
                  "fastdiff_native: token ids out of range [0, V)");
    }
  } else {
    TORCH_CHECK(x0.dim() == 2, "fastdiff_native: x0 must be [N, H]");
    n = x0.size(0);
    h = x0.size(1);
    src = x0.contiguous();
  }
  const at::Tensor c = coefficients(coef, n, 2);
  const at::ScalarType ct = c.scalar_type();
  const at::Tensor nz = noise.has_value() ? state(*noise, n, h, "noise", ct) : at::Tensor();
  const at::Tensor fix = optional_mask(fixed, n);
  const at::TensorOptions opts = src.options();
  at::Tensor x_t = at::empty({n, h}, opts);
  at::Tensor eps = at::empty({nz.defined() ? 0 : n, h}, opts);
  at::Tensor clean = at::empty({gather ? n : 0, h}, opts);
  const Stream s(seed, offset);
  FASTDIFF_DISPATCH_FLOATING(src.scalar_type(), "fastdiff_native::q_sample", [&] {
    with_compute_type(ct, [&](auto ct_zero) {
      using CT = decltype(ct_zero);
      q_sample_rows<scalar_t, CT>(
          src.const_data_ptr<scalar_t>(), gather ? ids.const_data_ptr<int64_t>() : nullptr,
          c.const_data_ptr<CT>(), optional_ptr<CT>(nz), optional_ptr<bool>(fix), n, h, s,
          x_t.mutable_data_ptr<scalar_t>(),
          nz.defined() ? nullptr : eps.mutable_data_ptr<scalar_t>(),
          gather ? clean.mutable_data_ptr<scalar_t>() : nullptr);
    });
  });
  return {x_t, eps, clean};
}

// One DDPM row: r[j] = T(cx CT(x[j]) + co o[j] + sd CT(z[j])), z the CT noise or the float64
// draw.
template <typename T, typename CT, typename Z>
void ddpm_row(const T* __restrict x, const CT* __restrict o, const Z* __restrict z, int64_t h,
              CT cx, CT co, CT sd, T* __restrict r) {
  for (int64_t j = 0; j < h; ++j) {
    r[j] = static_cast<T>(cx * static_cast<CT>(x[j]) + co * o[j] + sd * static_cast<CT>(z[j]));
  }
}

// DDPM rows with coef row (c_xt, c_out, sigma): new = T(c_xt CT(x_t) + c_out out + sigma CT(z)),
// z the given CT noise or the float64 draw; fixed rows keep x_t.
template <typename T, typename CT>
void ddpm_rows(const CT* out, const T* x_t, const CT* coef, const CT* noise, const bool* fixed,
               int64_t n, int64_t h, const Stream& s, T* result) {
  at::parallel_for(0, n, row_grain(h), [&](int64_t begin, int64_t end) {
    std::vector<double> z(noise == nullptr ? h : 0);
    for (int64_t i = begin; i < end; ++i) {
      const T* x = x_t + i * h;
      T* r = result + i * h;
      if (fixed != nullptr && fixed[i]) {
        std::copy(x, x + h, r);
        continue;
      }
      const CT* c = coef + 3 * i;
      if (noise != nullptr) {
        ddpm_row(x, out + i * h, noise + i * h, h, c[0], c[1], c[2], r);
      } else {
        normal_row(s, i, h, z.data());
        ddpm_row(x, out + i * h, z.data(), h, c[0], c[1], c[2], r);
      }
    }
  });
}

// One DDIM row with coefficients k = (c1, c2, ca, cd, cs): d = (CT(x[j]) - c1 o[j]) c2 is x0_hat
// (eps prediction; eps = o) or eps (x0 prediction; x0_hat = o); r[j] = T(ca x0_hat + cd eps),
// plus cs CT(z[j]) when z is given (the CT noise or the float64 draw).
template <typename T, typename CT, bool kEpsPrediction, typename Z>
void ddim_row(const T* __restrict x, const CT* __restrict o, const Z* __restrict z, int64_t h,
              const CT* k, T* __restrict r) {
  const CT c1 = k[0], c2 = k[1], ca = k[2], cd = k[3], cs = k[4];
  for (int64_t j = 0; j < h; ++j) {
    const CT d = (static_cast<CT>(x[j]) - c1 * o[j]) * c2;
    const CT v = kEpsPrediction ? ca * d + cd * o[j] : ca * o[j] + cd * d;
    r[j] = static_cast<T>(z != nullptr ? v + cs * static_cast<CT>(z[j]) : v);
  }
}

// DDIM rows with coef rows (c1, c2, ca, cd, cs) (ddim_row); the noise term only when
// `stochastic`; fixed rows keep x_t.
template <typename T, typename CT, bool kEpsPrediction>
void ddim_rows(const CT* out, const T* x_t, const CT* coef, bool stochastic, const CT* noise,
               const bool* fixed, int64_t n, int64_t h, const Stream& s, T* result) {
  at::parallel_for(0, n, row_grain(h), [&](int64_t begin, int64_t end) {
    std::vector<double> z(noise == nullptr && stochastic ? h : 0);
    for (int64_t i = begin; i < end; ++i) {
      const T* x = x_t + i * h;
      T* r = result + i * h;
      if (fixed != nullptr && fixed[i]) {
        std::copy(x, x + h, r);
        continue;
      }
      const CT* o = out + i * h;
      const CT* k = coef + 5 * i;
      if (!stochastic) {
        ddim_row<T, CT, kEpsPrediction, CT>(x, o, nullptr, h, k, r);
      } else if (noise != nullptr) {
        ddim_row<T, CT, kEpsPrediction>(x, o, noise + i * h, h, k, r);
      } else {
        normal_row(s, i, h, z.data());
        ddim_row<T, CT, kEpsPrediction>(x, o, z.data(), h, k, r);
      }
    }
  });
}

// The checked inputs of a reverse step: the (guided) model output in CT, x_t [N, H], coef
// [N, k] in CT, noise in CT or undefined, fixed or undefined.
struct Step {
  at::Tensor out, x_t, coef, noise, fixed;
  int64_t n, h;
  at::ScalarType ct;
};

Step prepare_step(const at::Tensor& model_output, const at::Tensor& x_t, const at::Tensor& coef,
                  int64_t k, const std::optional<at::Tensor>& noise,
                  const std::optional<at::Tensor>& fixed) {
  check_cpu(x_t, "x_t");
  TORCH_CHECK(x_t.dim() == 2, "fastdiff_native: x_t must be [N, H]");
  Step st;
  st.n = x_t.size(0);
  st.h = x_t.size(1);
  st.x_t = x_t.contiguous();
  st.coef = coefficients(coef, st.n, k);
  st.ct = st.coef.scalar_type();
  st.out = state(model_output, st.n, st.h, "model_output", st.ct);
  if (noise.has_value()) st.noise = state(*noise, st.n, st.h, "noise", st.ct);
  st.fixed = optional_mask(fixed, st.n);
  return st;
}

// DDPM ancestral step (fastdiff.reference.gaussian.ddpm_step): x_{t-1} [N, H] in the dtype of
// x_t from the CT model output (guided), coef [N, 3] = (c_xt, c_out, sigma) and the noise.
at::Tensor ddpm_step(const at::Tensor& model_output, const at::Tensor& x_t, const at::Tensor& coef,
                     const std::optional<at::Tensor>& noise,
                     const std::optional<at::Tensor>& fixed, int64_t seed, int64_t offset) {
  const Step st = prepare_step(model_output, x_t, coef, 3, noise, fixed);
  at::Tensor result = at::empty({st.n, st.h}, st.x_t.options());
  const Stream s(seed, offset);
  FASTDIFF_DISPATCH_FLOATING(st.x_t.scalar_type(), "fastdiff_native::ddpm_step", [&] {
    with_compute_type(st.ct, [&](auto ct_zero) {
      using CT = decltype(ct_zero);
      ddpm_rows<scalar_t, CT>(st.out.const_data_ptr<CT>(), st.x_t.const_data_ptr<scalar_t>(),
                              st.coef.const_data_ptr<CT>(), optional_ptr<CT>(st.noise),
                              optional_ptr<bool>(st.fixed), st.n, st.h, s,
                              result.mutable_data_ptr<scalar_t>());
    });
  });
  return result;
}

// DDIM step (fastdiff.reference.gaussian.ddim_step): x' [N, H] in the dtype of x_t from the CT
// model output (guided), coef [N, 5] = (c1, c2, sqrt(abar'), sqrt(dir2), sqrt(sig2)) (see
// ddim_rows; c1, c2 = sqrt(1 - abar), 1 / sqrt(abar) for eps prediction, sqrt(abar),
// 1 / sqrt(1 - abar) for x0 prediction); the noise term is added to every row when
// `stochastic` (noise given, or some row with sig2 != 0, as the reference decides per call).
at::Tensor ddim_step(const at::Tensor& model_output, const at::Tensor& x_t, const at::Tensor& coef,
                     bool eps_prediction, bool stochastic, const std::optional<at::Tensor>& noise,
                     const std::optional<at::Tensor>& fixed, int64_t seed, int64_t offset) {
  const Step st = prepare_step(model_output, x_t, coef, 5, noise, fixed);
  at::Tensor result = at::empty({st.n, st.h}, st.x_t.options());
  const Stream s(seed, offset);
  FASTDIFF_DISPATCH_FLOATING(st.x_t.scalar_type(), "fastdiff_native::ddim_step", [&] {
    with_compute_type(st.ct, [&](auto ct_zero) {
      using CT = decltype(ct_zero);
      auto rows = eps_prediction ? &ddim_rows<scalar_t, CT, true> : &ddim_rows<scalar_t, CT, false>;
      rows(st.out.const_data_ptr<CT>(), st.x_t.const_data_ptr<scalar_t>(),
           st.coef.const_data_ptr<CT>(), stochastic || st.noise.defined(),
           optional_ptr<CT>(st.noise), optional_ptr<bool>(st.fixed), st.n, st.h, s,
           result.mutable_data_ptr<scalar_t>());
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdiff_native, m) {
  m.def(
      "q_sample(Tensor x0, Tensor coef, Tensor? noise, Tensor? embedding, Tensor? fixed, int seed, "
      "int offset) -> (Tensor, Tensor, Tensor)");
  m.def(
      "ddpm_step(Tensor model_output, Tensor x_t, Tensor coef, Tensor? noise, Tensor? fixed, "
      "int seed, int offset) -> Tensor");
  m.def(
      "ddim_step(Tensor model_output, Tensor x_t, Tensor coef, bool eps_prediction, "
      "bool stochastic, Tensor? noise, Tensor? fixed, int seed, int offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastdiff_native, CPU, m) {
  m.impl("q_sample", &q_sample);
  m.impl("ddpm_step", &ddpm_step);
  m.impl("ddim_step", &ddim_step);
}

}  // namespace fastdiff::native
