/* Fused elementwise loops of the fast training path (train/fast_kernels.py loads them).
 *
 * Each loop computes, element by element, exactly the float32 operations of the torch op
 * sequence it replaces (train/fast_kernels.py's `_torch_*` functions, the reference the tests
 * compare with): the same IEEE operations in the same order, compiled without fast-math and
 * without contraction into fused multiply-adds. Sums stay torch's (their order is torch's).
 * Only the sign of a zero may differ, as it does between torch's own vector and scalar loops.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXPORT extern "C" __attribute__((visibility("default")))
#define R __restrict__

/* The loops are branch-free selects so that the compiler vectorizes them (-O3). */

/* torch.round: round half to even (|x| < 2^23: adding 2^23 rounds to an integer, ties to even). */
static inline float round_even(float x) {
  float a = fabsf(x);
  float r = copysignf((a + 8388608.0f) - 8388608.0f, x);
  return a < 8388608.0f ? r : x; /* else already an integer, inf or NaN */
}

/* torch.clamp: NaN stays NaN. */
static inline float clampf(float v, float lo, float hi) {
  float c = v < lo ? lo : v;
  c = c > hi ? hi : c;
  return v != v ? v : c;
}

/* Brevitas' binary sign: +1 where x >= 0 (also -0.0), -1 elsewhere (also NaN). */
static inline float sign_pm1(float x) { return x >= 0.0f ? 1.0f : -1.0f; }

static inline uint32_t abs_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u & 0x7fffffffu; /* ordered as |x| for numbers; NaNs above +inf (0x7f800000) */
}

EXPORT void rb_sign(const float *R x, float *R y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = sign_pm1(x[i]);
}

/* Latent binary weights: clamp to [-1, 1] in place, then their sign. */
EXPORT void rb_clamp_sign(float *R w, float *R y, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float v = clampf(w[i], -1.0f, 1.0f);
    w[i] = v;
    y[i] = sign_pm1(v);
  }
}

/* Sign activation's gradient: out = (g [* noise]) * (1 - outside) + 0, outside = 1 where |x| - 1 > 0. */
template <bool NOISE>
static void sign_backward(const float *R g, const float *R noise, const float *R x, float *R out, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float gi = NOISE ? g[i] * noise[i] : g[i];
    float outside = (fabsf(x[i]) - 1.0f) > 0.0f ? 1.0f : 0.0f;
    out[i] = gi * (1.0f - outside) + 0.0f;
  }
}
EXPORT void rb_sign_backward(const float *g, const float *noise, const float *x, float *out, int64_t n) {
  if (noise) sign_backward<true>(g, noise, x, out, n);
  else sign_backward<false>(g, noise, x, out, n);
}

/* Dropout: noise /= keep (in place), y = x * noise. */
EXPORT void rb_dropout(const float *R x, float *R noise, float keep, float *R y, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float v = noise[i] / keep;
    noise[i] = v;
    y[i] = x[i] * v;
  }
}

/* Input quantizer: clamp(round((x / div) / s), lo, hi) * s. */
EXPORT void rb_input_quant(const float *R x, float div, float s, float lo, float hi, float *R y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = clampf(round_even((x[i] / div) / s), lo, hi) * s;
}

/* Integer quantizer: y1 = x / s, r = round(y1), q = clamp(r, lo, hi), y = q * s, and (MASK: not
 * a straight-through clamp) the gradient mask m = (r == q or r is NaN). x may be the sum a + b
 * of two tensors (SUM), as the add quantizer's requantization gets it. */
template <bool SUM, bool MASK>
static void quant_forward(const float *R x, const float *R b, float s, float lo, float hi,
                          float *R y, float *R y1, float *R q, float *R m, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float xi = SUM ? x[i] + b[i] : x[i];
    float v = xi / s;
    float r = round_even(v);
    float c = clampf(r, lo, hi);
    y1[i] = v;
    q[i] = c;
    y[i] = c * s;
    if (MASK) m[i] = (r == c || r != r) ? 1.0f : 0.0f;
  }
}
EXPORT void rb_quant_forward(const float *x, const float *b, float s, float lo, float hi,
                             float *y, float *y1, float *q, float *m, int64_t n) {
  if (b && m) quant_forward<true, true>(x, b, s, lo, hi, y, y1, q, m, n);
  else if (b) quant_forward<true, false>(x, b, s, lo, hi, y, y1, q, m, n);
  else if (m) quant_forward<false, true>(x, b, s, lo, hi, y, y1, q, m, n);
  else quant_forward<false, false>(x, b, s, lo, hi, y, y1, q, m, n);
}

/* Its backward: gi = ((g [* noise]) * s) [* m]; gx = gi / s; and the two products whose torch
 * sums give the scale's gradient: gq = g * q, t = (y1 / s) * gi. */
template <bool NOISE, bool MASK>
static void quant_backward(const float *R g, const float *R noise, float s, const float *R y1,
                           const float *R q, const float *R m, float *R gx, float *R gq, float *R t,
                           int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float gg = NOISE ? g[i] * noise[i] : g[i];
    float gi = gg * s;
    if (MASK) gi = gi * m[i];
    gq[i] = gg * q[i];
    t[i] = (y1[i] / s) * gi;
    gx[i] = gi / s;
  }
}
EXPORT void rb_quant_backward(const float *g, const float *noise, float s, const float *y1,
                              const float *q, const float *m, float *gx, float *gq, float *t,
                              int64_t n) {
  if (noise && m) quant_backward<true, true>(g, noise, s, y1, q, m, gx, gq, t, n);
  else if (noise) quant_backward<true, false>(g, noise, s, y1, q, m, gx, gq, t, n);
  else if (m) quant_backward<false, true>(g, noise, s, y1, q, m, gx, gq, t, n);
  else quant_backward<false, false>(g, noise, s, y1, q, m, gx, gq, t, n);
}

/* max |w| (NaN if any is NaN, as torch.max) and how many elements reach it (ties); on the bits
 * of |w|, which order as the numbers do. */
EXPORT int64_t rb_absmax(const float *R w, float *R amax, int64_t n) {
  uint32_t a = 0;
  for (int64_t i = 0; i < n; i++) {
    uint32_t u = abs_bits(w[i]);
    a = u > a ? u : a;
  }
  float f;
  memcpy(&f, &a, 4);
  *amax = f;
  if (a > 0x7f800000u) return 0; /* NaN: nothing equals it */
  int64_t ties = 0;
  for (int64_t i = 0; i < n; i++) ties += abs_bits(w[i]) == a;
  return ties;
}

/* The max's backward (ties share it) through abs: gx[i] += sgn(w[i]) * share where |w[i]| == a. */
EXPORT void rb_add_at_absmax(float *R gx, const float *R w, float a, float share, int64_t n) {
  uint32_t ab = abs_bits(a);
  for (int64_t i = 0; i < n; i++) {
    float v = w[i];
    float add = gx[i] + (v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f)) * share;
    gx[i] = abs_bits(v) == ab ? add : gx[i];
  }
}
