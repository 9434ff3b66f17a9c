/* The fast training path's one-node step in C++: train/fast_model.py's `FastPath._forward` and
 * `_backward` (the reference, which runs where this does not: GPUs), the same ATen ops in the
 * same order and the same C loops (train/fast_kernels.c, compiled into this library too), so the
 * same numbers bit for bit (tests/test_fast_train.py). What it saves is Python: a small model's
 * step is ~110 Python-level calls whose interpreter and binding overhead, not their arithmetic,
 * dominates at batch 32 (docs/results/train-speed.md).
 *
 * Two ops, loaded by train/fast_kernels.py (`step_ops`) with torch.ops.load_library:
 *   resbin::step_forward(x, T, D, I) -> (logits, tape)
 *   resbin::step_backward(g, tape, T, D, I) -> gradients, aligned with T (None: no gradient)
 * T (tensors), D (floats) and I (integers) describe the model; tape entries and gradients
 * that do not exist are undefined tensors (None in Python); train/fast_model.py
 * (`FastPath._native_args`) writes them in the order `Net::Net` reads them.
 * Python floats are doubles here; where Python rounds a value to float32 (ctypes' c_float,
 * np.float32) this code casts to float at the same point. Compiled without fast-math and
 * without contraction into fused multiply-adds, like the loops. */
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#define EXPORT static inline
#include "fast_kernels.c"

#include <cmath>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using TensorList = c10::List<std::optional<Tensor>>;

constexpr double kLn2 = 0.6931471805599453;  // the constant of torch's log2 / pow backward formulas

float *f32(const Tensor &t) { return t.data_ptr<float>(); }
const float *f32_or_null(const Tensor &t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// ---- the model, read from (T, D, I) ----------------------------------------------------------

struct Param {  // a tensor of T and its index (gradients are returned at that index)
  Tensor t;
  int64_t index = -1;
};

struct Reader {
  const TensorList &T;
  c10::ArrayRef<double> D;
  c10::ArrayRef<int64_t> I;
  size_t ti = 0, di = 0, ii = 0;
  Param t() {
    TORCH_CHECK(ti < T.size(), "resbin step: too few tensors");
    std::optional<Tensor> o = T.get(ti);
    return {o.has_value() ? *o : Tensor(), (int64_t)ti++};
  }
  double d() {
    TORCH_CHECK(di < D.size(), "resbin step: too few floats");
    return D[di++];
  }
  int64_t i() {
    TORCH_CHECK(ii < I.size(), "resbin step: too few integers");
    return I[ii++];
  }
};

struct BatchNorm {
  bool present = false;
  Param weight, bias;
  Tensor mean, var, count;
  double momentum = 0, eps = 0;  // momentum NaN: nn.BatchNorm1d's momentum=None (cumulative)
  void read(Reader &r) {
    present = r.i() != 0;
    momentum = r.d();
    eps = r.d();
    weight = r.t();
    bias = r.t();
    mean = r.t().t;
    var = r.t().t;
    count = r.t().t;
  }
};

struct WeightQuant {  // Brevitas' Int8WeightPerTensorFixedPoint (train/fast_quant.py: WeightQuantizer)
  double t = 0, m1 = 0, m2 = 0, lo = 0, hi = 0;
  bool ste = false;
  void read(Reader &r) {
    ste = r.i() != 0;
    t = r.d();
    m1 = r.d();
    m2 = r.d();
    lo = r.d();
    hi = r.d();
  }
};

struct ActQuant {  // a learned-scale activation quantizer (train/fast_quant.py: ActQuantizer)
  Param value;
  double clamp_min = 0, threshold = 0, lo = 0, hi = 0;
  bool ste = false;
  void read(Reader &r) {
    ste = r.i() != 0;
    clamp_min = r.d();
    threshold = r.d();
    lo = r.d();
    hi = r.d();
    value = r.t();
  }
};

struct Block {
  bool sign_in = false, dropout = false;
  double keep = 1;
  Param weight, bias;
  BatchNorm bn;
};

struct Net {
  double div, in_scale, in_lo, in_hi;
  bool serial;  // torch's bernoulli_ here is its serial MT19937 loop (fast_kernels.serial_bernoulli)
  std::vector<Block> blocks;
  bool shortcut = false, pool = false, sc_quantized = false;
  int64_t ph = 0, pw = 0, pc = 0, kh = 0, kw = 0;  // NHWCMaxPool: (H, W, C), kernel (kh, kw)
  Param sc_weight, sc_bias;
  BatchNorm sc_bn;
  WeightQuant sc_wq, out_wq;
  ActQuant add_q, add_rq, head_q;
  bool head_dropout = false;
  double head_keep = 1;
  Param out_weight;

  Net(const TensorList &T, c10::ArrayRef<double> D, c10::ArrayRef<int64_t> I) {
    Reader r{T, D, I};
    int64_t n_blocks = r.i();
    shortcut = r.i() != 0;
    serial = r.i() != 0;
    div = r.d();
    in_scale = r.d();
    in_lo = r.d();
    in_hi = r.d();
    for (int64_t k = 0; k < n_blocks; k++) {
      Block b;
      b.sign_in = r.i() != 0;
      b.dropout = r.i() != 0;
      b.keep = r.d();
      b.weight = r.t();
      b.bias = r.t();
      b.bn.read(r);
      blocks.push_back(std::move(b));
    }
    if (shortcut) {
      pool = r.i() != 0;
      ph = r.i();
      pw = r.i();
      pc = r.i();
      kh = r.i();
      kw = r.i();
      sc_quantized = r.i() != 0;
      if (sc_quantized) sc_wq.read(r);
      sc_weight = r.t();
      sc_bias = r.t();
      sc_bn.read(r);
      add_q.read(r);
      add_rq.read(r);
    } else {
      head_q.read(r);
    }
    head_dropout = r.i() != 0;
    head_keep = r.d();
    out_wq.read(r);
    out_weight = r.t();
    TORCH_CHECK(r.ti == T.size() && r.di == D.size() && r.ii == I.size(), "resbin step: unread arguments");
  }
};

// ---- what the forward keeps for the backward (the Python step's `tape`) ------------------------

struct Quantized {  // quant_forward's (y1, q, m) and the scale's p, s
  Tensor y1, q, m;
  double p = 0, s = 0;
};

struct WeightQuantized {
  Tensor a;  // max |w|, 0-dim
  Quantized q;
  double c = 0, ties = 0;
};

struct BatchNormSaved {
  Tensor x, mean, invstd;
};

struct Tape {
  struct BlockSaved {
    Tensor x_sign, noise, h_in, wb;
    BatchNormSaved bn;
  };
  std::vector<BlockSaved> blocks;
  Tensor sc_in, sc_w;
  BatchNormSaved sc_bn;
  WeightQuantized sc_wq, out_wq;
  Quantized aq_h, aq_s, head_q;
  Tensor head_noise, out_in, out_w;

  // every field once, in one order: `f(Tensor&)` and `f(double&)` (to and from a tensor list)
  template <class F>
  void fields(F &&f) {
    for (auto &b : blocks) {
      f(b.x_sign), f(b.noise), f(b.h_in), f(b.wb), f(b.bn.x), f(b.bn.mean), f(b.bn.invstd);
    }
    f(sc_in), f(sc_w), f(sc_bn.x), f(sc_bn.mean), f(sc_bn.invstd);
    for (WeightQuantized *w : {&sc_wq, &out_wq}) f(w->a), f(w->q.y1), f(w->q.q), f(w->q.m), f(w->q.p), f(w->q.s), f(w->c), f(w->ties);
    for (Quantized *q : {&aq_h, &aq_s, &head_q}) f(q->y1), f(q->q), f(q->m), f(q->p), f(q->s);
    f(head_noise), f(out_in), f(out_w);
  }

  std::vector<Tensor> to_list() {
    std::vector<Tensor> out;
    std::vector<double> scalars;
    fields(Overload{[&](Tensor &t) { out.push_back(t); }, [&](double &d) { scalars.push_back(d); }});
    out.push_back(at::tensor(scalars, at::kDouble));
    return out;
  }

  Tape(size_t n_blocks, const TensorList &list) : blocks(n_blocks) {
    size_t k = 0, j = 0;
    std::optional<Tensor> last = list.get(list.size() - 1);
    TORCH_CHECK(last.has_value(), "resbin step: a tape without its scalars");
    const double *scalars = last->data_ptr<double>();
    fields(Overload{[&](Tensor &t) {
                      std::optional<Tensor> o = list.get(k++);
                      t = o.has_value() ? *o : Tensor();
                    },
                    [&](double &d) { d = scalars[j++]; }});
    TORCH_CHECK(k + 1 == list.size() && (int64_t)j == last->numel(), "resbin step: a tape of another model");
  }
  explicit Tape(size_t n_blocks) : blocks(n_blocks) {}

 private:
  template <class A, class B>
  struct Overload : A, B {
    Overload(A a, B b) : A(a), B(b) {}
    using A::operator();
    using B::operator();
  };
};

// ---- the steps (train/fast_kernels.py and train/fast_quant.py, op for op) ---------------------

// Brevitas' power-of-two scale: p = 2 ** ceil(v), s = max(p, clamp_min) / threshold in float32
// (train/fast_quant.py: _pow2_scale).
std::pair<double, double> pow2_scale(double v, double clamp_min, double threshold) {
  if (std::isfinite(v)) v = std::min(std::max(std::ceil(v), -200.0), 200.0);
  float p = (float)std::pow(2.0, v);
  float m = (float)clamp_min;
  float mx = m > p ? m : p;  // Python's max(p, m)
  return {p, mx / (float)threshold};
}

// (g / t) * (p * ln 2) in float32 (train/fast_quant.py: _pow2_scale_grad).
float pow2_scale_grad(const Tensor &g_s, double p, double threshold) {
  float f = (float)p * (float)kLn2;
  return (float)g_s.item<double>() / (float)threshold * f;
}

Tensor input_quant(const Net &n, const Tensor &x) {
  Tensor y = at::empty_like(x);
  rb_input_quant(f32(x), (float)n.div, (float)n.in_scale, (float)n.in_lo, (float)n.in_hi, f32(y), x.numel());
  return y;
}

Tensor binary_sign(const Tensor &x) {
  Tensor y = at::empty_like(x);
  rb_sign(f32(x), f32(y), x.numel());
  return y;
}

Tensor clamp_sign_(const Tensor &w) {
  Tensor y = at::empty_like(w);
  rb_clamp_sign(f32(w), f32(y), w.numel());
  return y;
}

// nn.Dropout in training as aten's CPU dropout computes it: (y, noise); torch's own random numbers.
std::pair<Tensor, Tensor> train_dropout(const Tensor &x, double keep, bool serial) {
  Tensor noise = at::empty_like(x), y = at::empty_like(x);
  if (!serial) {  // torch's bernoulli_ (e.g. MKL's on Intel CPUs), then the loop
    noise.bernoulli_(keep);
    rb_dropout(f32(x), f32(noise), (float)keep, f32(y), x.numel());
    return {y, noise};
  }
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  auto *impl = at::check_generator<at::CPUGeneratorImpl>(gen);
  at::mt19937 engine = impl->engine();
  at::mt19937_data_pod d = engine.data();
  mt_t g;
  std::copy(d.state_.begin(), d.state_.end(), g.s);
  g.next = d.next_;
  g.avail = d.left_ - 1;
  dropout_draw(&g, keep, (float)keep, f32(x), f32(noise), f32(y), x.numel());
  std::copy(g.s, g.s + MT_N, d.state_.begin());
  d.next_ = (uint32_t)g.next;
  d.left_ = (int)(g.avail + 1);
  engine.set_data(d);
  impl->set_engine(engine);
  return {y, noise};
}

Tensor train_batch_norm(const BatchNorm &bn, const Tensor &x, BatchNormSaved &saved) {
  if (!bn.present) return x;
  bn.count.add_(1);
  double momentum = std::isnan(bn.momentum) ? 1.0 / (double)bn.count.item<int64_t>() : bn.momentum;
  auto [y, mean, invstd] = at::native_batch_norm(x, bn.weight.t, bn.bias.t, bn.mean, bn.var, true, momentum, bn.eps);
  saved = {x, mean, invstd};
  return y;
}

// clamp(round(x [+ b]) / s), lo, hi) * s, keeping what quant_backward needs.
Tensor quant_forward(const Tensor &x, const Tensor &b, double p, double s, double lo, double hi, bool ste,
                     Quantized &saved) {
  Tensor y = at::empty_like(x), y1 = at::empty_like(x), q = at::empty_like(x);
  Tensor m = ste ? Tensor() : at::empty_like(x);
  rb_quant_forward(f32(x), f32_or_null(b), (float)s, (float)lo, (float)hi, f32(y), f32(y1), f32(q),
                   m.defined() ? f32(m) : nullptr, x.numel());
  saved = {y1, q, m, p, s};
  return y;
}

Tensor learned_forward(const ActQuant &aq, const Tensor &x, const Tensor &b, Quantized &saved) {
  auto [p, s] = pow2_scale(aq.value.t.item<double>(), aq.clamp_min, aq.threshold);
  return quant_forward(x, b, p, s, aq.lo, aq.hi, aq.ste, saved);
}

Tensor weight_quant_forward(const WeightQuant &wq, const Tensor &w, WeightQuantized &saved) {
  Tensor a = at::empty({}, w.options());
  saved.ties = (double)rb_absmax(f32(w), f32(a), w.numel());
  Tensor c = at::clamp_min(a, wq.m1);
  auto [p, s] = pow2_scale(at::log2(c).item<double>(), wq.m2, wq.t);
  saved.a = a;
  saved.c = c.item<double>();
  return quant_forward(w, Tensor(), p, s, wq.lo, wq.hi, wq.ste, saved.q);
}

// (gradient of x, gradient of the 0-dim scale) through Brevitas' div, round STE, clamp and mul.
std::pair<Tensor, Tensor> quant_backward(const Tensor &g_in, const Quantized &sv, const Tensor &noise) {
  Tensor g = g_in.contiguous();
  Tensor gx = at::empty_like(sv.y1), gq = at::empty_like(sv.y1), t = at::empty_like(sv.y1);
  rb_quant_backward(f32(g), f32_or_null(noise), (float)sv.s, f32(sv.y1), f32(sv.q), f32_or_null(sv.m), f32(gx),
                    f32(gq), f32(t), sv.y1.numel());
  return {gx, gq.sum_to_size(at::IntArrayRef{}) - t.sum_to_size(at::IntArrayRef{})};
}

std::pair<Tensor, float> learned_backward(const Tensor &g, const Quantized &sv, double threshold,
                                          const Tensor &noise = Tensor()) {
  auto [gx, g_s] = quant_backward(g, sv, noise);
  return {gx, pow2_scale_grad(g_s, sv.p, threshold)};
}

Tensor weight_quant_backward(const WeightQuant &wq, const Tensor &w, const Tensor &g, const WeightQuantized &sv) {
  auto [g_w, g_s] = quant_backward(g, sv.q, Tensor());
  float g_c = pow2_scale_grad(g_s, sv.q.p, wq.t) / ((float)sv.c * (float)kLn2);
  float share = g_c / (float)sv.ties;
  rb_add_at_absmax(f32(g_w), f32(w), (float)sv.a.item<double>(), share, w.numel());
  return g_w;
}

Tensor train_batch_norm_backward(const BatchNorm &bn, const Tensor &g, const BatchNormSaved &sv, std::vector<Tensor> &grads) {
  if (!bn.present) return g;
  auto [gx, gw, gb] = at::native_batch_norm_backward(g.contiguous(), sv.x, bn.weight.t, bn.mean, bn.var, sv.mean,
                                                     sv.invstd, true, bn.eps,
                                                     {true, bn.weight.t.defined(), bn.bias.t.defined()});
  if (bn.weight.t.defined() && bn.weight.t.requires_grad()) grads[bn.weight.index] = gw;
  if (bn.bias.t.defined() && bn.bias.t.requires_grad()) grads[bn.bias.index] = gb;
  return gx;
}

void put(std::vector<Tensor> &grads, const Param &p, const Tensor &g) {
  if (p.t.defined() && p.t.requires_grad()) grads[p.index] = g;
}

void put_scale(std::vector<Tensor> &grads, const Param &p, float g) {
  if (p.t.defined() && p.t.requires_grad()) grads[p.index] = at::full(p.t.sizes(), (double)g, at::TensorOptions().dtype(p.t.dtype()).device(p.t.device()));
}

Tensor nhwc_max_pool(const Net &n, const Tensor &x) {  // train/models.py: NHWCMaxPool
  Tensor v = x.reshape({-1, n.ph, n.pw, n.pc}).permute({0, 3, 1, 2});
  v = at::max_pool2d(v, {n.kh, n.kw}, {n.kh, n.kw});
  return v.permute({0, 2, 3, 1}).flatten(1);
}

// ---- the ops ------------------------------------------------------------------------------------

std::tuple<Tensor, std::vector<Tensor>> step_forward(const Tensor &x_raw, const TensorList &T, c10::ArrayRef<double> D,
                                                     c10::ArrayRef<int64_t> I) {
  Net n(T, D, I);
  TORCH_CHECK(x_raw.is_cpu() && x_raw.scalar_type() == at::kFloat && x_raw.is_contiguous(),
              "resbin step: the input must be a contiguous float32 CPU tensor");
  Tape tape(n.blocks.size());
  Tensor x = input_quant(n, x_raw);
  Tensor h = x;
  for (size_t k = 0; k < n.blocks.size(); k++) {
    const Block &b = n.blocks[k];
    auto &sv = tape.blocks[k];
    if (b.sign_in) {
      sv.x_sign = h;
      h = binary_sign(h);
    }
    if (b.dropout) std::tie(h, sv.noise) = train_dropout(h, b.keep, n.serial);
    Tensor wb = clamp_sign_(b.weight.t);  // Brevitas' InplaceTensorClampSte, then the sign
    Tensor z = at::linear(h, wb, b.bias.t.defined() ? std::optional<Tensor>(b.bias.t) : std::nullopt);
    sv.h_in = h;
    sv.wb = wb;
    h = train_batch_norm(b.bn, z, sv.bn);
  }
  if (n.shortcut) {
    Tensor s = n.pool ? nhwc_max_pool(n, x) : x;
    Tensor ws = n.sc_weight.t;
    if (n.sc_quantized) ws = weight_quant_forward(n.sc_wq, ws, tape.sc_wq);
    tape.sc_in = s;
    tape.sc_w = ws;
    s = train_batch_norm(n.sc_bn, at::linear(s, ws, n.sc_bias.t.defined() ? std::optional<Tensor>(n.sc_bias.t) : std::nullopt),
                   tape.sc_bn);
    Tensor a1 = learned_forward(n.add_q, h, Tensor(), tape.aq_h);
    Tensor a2 = learned_forward(n.add_q, s, Tensor(), tape.aq_s);
    h = learned_forward(n.add_rq, a1, a2, tape.head_q);  // of a1 + a2
  } else {
    h = learned_forward(n.head_q, h, Tensor(), tape.head_q);
  }
  if (n.head_dropout) std::tie(h, tape.head_noise) = train_dropout(h, n.head_keep, n.serial);
  Tensor wo = weight_quant_forward(n.out_wq, n.out_weight.t, tape.out_wq);
  tape.out_in = h;
  tape.out_w = wo;
  return {at::linear(h, wo, std::nullopt), tape.to_list()};
}

std::vector<Tensor> step_backward(const Tensor &g_logits, const TensorList &tape_list, const TensorList &T,
                                  c10::ArrayRef<double> D, c10::ArrayRef<int64_t> I) {
  Net n(T, D, I);
  Tape tape(n.blocks.size(), tape_list);
  std::vector<Tensor> grads(T.size());
  Tensor g = g_logits;
  put(grads, n.out_weight, weight_quant_backward(n.out_wq, n.out_weight.t, g.t().mm(tape.out_in), tape.out_wq));
  const ActQuant &head = n.shortcut ? n.add_rq : n.head_q;
  auto [gh, g_v] = learned_backward(g.mm(tape.out_w), tape.head_q, head.threshold, tape.head_noise);
  put_scale(grads, head.value, g_v);
  g = gh;
  if (n.shortcut) {
    auto [g_h, g_v1] = learned_backward(g, tape.aq_h, n.add_q.threshold);
    auto [g_s, g_v2] = learned_backward(g, tape.aq_s, n.add_q.threshold);
    put_scale(grads, n.add_q.value, g_v1 + g_v2);  // float32, as autograd sums the two uses
    g_s = train_batch_norm_backward(n.sc_bn, g_s, tape.sc_bn, grads);
    if (n.sc_bias.t.defined()) put(grads, n.sc_bias, g_s.sum(at::IntArrayRef{0}));
    Tensor g_ws = g_s.t().mm(tape.sc_in);
    put(grads, n.sc_weight, n.sc_quantized ? weight_quant_backward(n.sc_wq, n.sc_weight.t, g_ws, tape.sc_wq) : g_ws);
    g = g_h;
  }
  for (size_t k = n.blocks.size(); k-- > 0;) {
    const Block &b = n.blocks[k];
    const auto &sv = tape.blocks[k];
    g = train_batch_norm_backward(b.bn, g, sv.bn, grads);
    if (b.bias.t.defined()) put(grads, b.bias, g.sum(at::IntArrayRef{0}));
    put(grads, b.weight, g.t().mm(sv.h_in));  // the sign's straight-through gradient
    if (k == 0) break;
    g = g.mm(sv.wb);
    if (sv.x_sign.defined()) {
      Tensor out = at::empty_like(sv.x_sign);
      Tensor gc = g.contiguous();
      rb_sign_backward(f32(gc), f32_or_null(sv.noise), f32(sv.x_sign), f32(out), out.numel());
      g = out;
    } else if (sv.noise.defined()) {
      g = g * sv.noise;
    }
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY(resbin, m) {
  m.def("step_forward(Tensor x, Tensor?[] T, float[] D, int[] I) -> (Tensor, Tensor[])", &step_forward);
  m.def("step_backward(Tensor g, Tensor?[] tape, Tensor?[] T, float[] D, int[] I) -> Tensor[]", &step_backward);
}
