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

#ifndef EXPORT /* train/fast_step.cpp includes this file with its own */
#define EXPORT extern "C" __attribute__((visibility("default")))
#endif
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

/* ---- dropout with torch's own random numbers ---------------------------------------------
 * torch's CPU bernoulli_(p) with the default generator, where it runs its serial kernel (not
 * the MKL one): per element, in order, u = (random64() & (2^53 - 1)) * 2^-53 (a double) and
 * the sample is u < p; random64() = (mt() << 32) | mt() of its MT19937 engine (ATen's
 * at::mt19937, the standard generator). u < p is decided on the integers: k < ceil(p * 2^53).
 * `st` is torch.get_rng_state()'s serialized state, read and advanced in place
 * (CPUGeneratorImplStateLegacy: seed u64 @0, left i32 @8, seeded i32 @12, next u64 @16,
 * state u64[624] @24). train/fast_kernels.py checks this against torch once per process. */
#define MT_N 624
#define MT_M 397

static inline uint32_t mt_twist(uint32_t u, uint32_t v) {
  return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_next_state(uint32_t *s) {
  int k = 0;
  for (; k < MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ mt_twist(s[k], s[k + 1]);
  for (; k < MT_N - 1; k++) s[k] = s[k + MT_M - MT_N] ^ mt_twist(s[k], s[k + 1]);
  s[MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[MT_N - 1], s[0]);
}

static inline uint32_t mt_temper(uint32_t y) {
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

/* The engine: state s, the next output's index, and how many outputs remain before the next
 * twist (ATen's `left` - 1: its draw decrements `left` and twists when it reaches 0). */
typedef struct { uint32_t s[MT_N]; int64_t next, avail; } mt_t;

static void mt_fill(mt_t *g, uint32_t *R r, int64_t count) {
  while (count > 0) {
    if (g->avail == 0) {
      mt_next_state(g->s);
      g->next = 0;
      g->avail = MT_N;
    }
    int64_t c = count < g->avail ? count : g->avail;
    const uint32_t *R src = g->s + g->next;
    for (int64_t j = 0; j < c; j++) r[j] = mt_temper(src[j]);
    g->next += c;
    g->avail -= c;
    r += c;
    count -= c;
  }
}

/* noise = bernoulli(keep) / keep_f (keep: the double torch draws with, keep_f: its float32
 * divisor), y = x * noise: aten's CPU dropout, on an engine `g` (advanced in place). */
static void dropout_draw(mt_t *g, double keep, float keep_f, const float *R x, float *R noise, float *R y,
                         int64_t n) {
  const uint64_t mask = (1ull << 53) - 1;
  const uint64_t t = (uint64_t)ceil(keep * 9007199254740992.0); /* p * 2^53, exact */
  enum { BLOCK = 512 };
  uint32_t r[2 * BLOCK];
  for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
    int64_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
    mt_fill(g, r, 2 * m);
    for (int64_t i = 0; i < m; i++) {
      uint64_t k = (((uint64_t)r[2 * i] << 32) | r[2 * i + 1]) & mask;
      float v = (k < t ? 1.0f : 0.0f) / keep_f;
      noise[i0 + i] = v;
      y[i0 + i] = x[i0 + i] * v;
    }
  }
}

/* `dropout_draw` on torch.get_rng_state()'s serialized state `st` (advanced in place). */
EXPORT void rb_dropout_draw(uint8_t *st, double keep, float keep_f, const float *R x, float *R noise,
                            float *R y, int64_t n) {
  mt_t g;
  int32_t left;
  uint64_t next;
  memcpy(&left, st + 8, 4);
  memcpy(&next, st + 16, 8);
  g.next = (int64_t)next;
  g.avail = left - 1;
  for (int i = 0; i < MT_N; i++) {
    uint64_t v;
    memcpy(&v, st + 24 + 8 * i, 8);
    g.s[i] = (uint32_t)v;
  }
  dropout_draw(&g, keep, keep_f, x, noise, y, n);
  left = (int32_t)(g.avail + 1);
  next = (uint64_t)g.next;
  memcpy(st + 8, &left, 4);
  memcpy(st + 16, &next, 8);
  for (int i = 0; i < MT_N; i++) {
    uint64_t v = g.s[i];
    memcpy(st + 24 + 8 * i, &v, 8);
  }
}

#undef R /* train/fast_step.cpp includes this file */
