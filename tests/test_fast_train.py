"""train/fast_model.py: the fast training path is Brevitas bit for bit, on real MNIST.

Every check compares with torch.equal (no tolerance). torch.equal does not tell -0.0 from +0.0,
the only values where the two paths may differ (see train/fast_model.py's docstring); no non-zero
value can differ because of them, which the parameter checks after 100+ Adam steps confirm.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from train.data import load_dataset
from train.fast_model import FastPath
from train.models import ModelOptions, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Every variant kind (no shortcut / Q / P flat / P vertical / F), 1-4 hidden layers, every option.
VARIANTS = [
    ("B-D24N,D16N,QN,D", ModelOptions()),
    ("B-D24N,PN,D", ModelOptions(pool_window=9)),
    ("B-24N,16,PN", ModelOptions(pool_mode="vertical", pool_window=4, add_bits=6)),
    ("B-D24N,D16N,FN,D", ModelOptions(dropout=0.2)),
    ("B-D24N", ModelOptions()),
    ("B-24,D16N,16N,D12N,D", ModelOptions(input_bits=4, add_bits=5, output_weight_bits=4, dropout=0.3)),
    ("B-D24N,Q,D", ModelOptions(input_bits=2, shortcut_weight_bits=4, add_bits=4, output_weight_bits=3)),
]
STEPS = 130  # past Brevitas' 100 statistics steps of every add / requant / head quantizer, then
# 29 steps of the one-node network (FastPath._forward / _backward)
BATCH = 32


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir, download=False)


@pytest.fixture(scope="module")
def images(mnist):
    x = torch.from_numpy(mnist.x_train[:STEPS * BATCH]).float()
    y = torch.from_numpy(mnist.y_train[:STEPS * BATCH]).long()
    return x, y, torch.from_numpy(mnist.x_test[:500]).float()


def _pair(name, options):
    torch.manual_seed(0)
    a = build_model(name, 784, 10, options, image_shape=(28, 28, 1))
    b = copy.deepcopy(a)
    return a, b


def _step(model, forward, opt, xb, yb):
    logits = forward(xb)
    loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.clip_latent_weights(1.0)
    return logits.detach()


def _quant_state(model):
    return {n: (int(m.counter), m.buffer.clone()) for n, m in model.named_modules()
            if hasattr(m, "collect_stats_steps") and hasattr(m, "counter")}


class _Counting:
    """`torch.ops.resbin` counting the C++ steps."""

    def __init__(self, ops):
        self.ops, self.forwards = ops, 0

    def __getattr__(self, name):
        self.forwards += name == "step_forward"
        return getattr(self.ops, name)


@pytest.mark.parametrize("name,options", VARIANTS, ids=[v[0] + "-" + str(i) for i, v in enumerate(VARIANTS)])
def test_training_steps_are_brevitas_bit_for_bit(name, options, images, monkeypatch):
    """Brevitas' modules, the fast path's C++ step (the default on CPUs) and its Python step (the
    reference, and the GPU path), side by side: logits, random generator, parameters, gradients,
    batch-norm and quantizer statistics."""
    x, y, x_test = images
    brev, fast = _pair(name, options)
    ref = copy.deepcopy(fast)
    fwd, fwd_ref = FastPath(fast), FastPath(ref, native=False)
    assert fwd.native is not None and fwd_ref.native is None
    fwd.ops = _Counting(fwd.ops)
    one_node = []
    real = FastPath._forward
    monkeypatch.setattr(FastPath, "_forward", lambda self, xb: one_node.append(1) or real(self, xb))
    opt_b = torch.optim.Adam(brev.parameters(), lr=1e-2)
    opt_f = torch.optim.Adam(fast.parameters(), lr=1e-2)
    opt_r = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for i in range(STEPS):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        torch.manual_seed(1000 + i)  # the same dropout draws
        lb = _step(brev, brev, opt_b, xb, yb)
        rng = torch.get_rng_state()
        for model, forward, opt in ((fast, fwd, opt_f), (ref, fwd_ref, opt_r)):
            torch.manual_seed(1000 + i)
            lf = _step(model, forward, opt, xb, yb)
            assert torch.equal(lb, lf), f"step {i}: train-mode logits differ ({'C++' if forward is fwd else 'Python'})"
            assert torch.equal(torch.get_rng_state(), rng), f"step {i}: the random generator is elsewhere"
    assert fwd.ops.forwards == len(one_node) == STEPS - 101, "the one-node step ran after the statistics steps"
    pb = dict(brev.named_parameters())
    for other in (fast, ref):
        po = dict(other.named_parameters())
        assert pb.keys() == po.keys()
        for k in pb:
            assert torch.equal(pb[k], po[k]), f"parameter {k} differs after {STEPS} steps"
            gb, go = pb[k].grad, po[k].grad
            assert (gb is None) == (go is None) and (gb is None or torch.equal(gb, go)), f"gradient of {k} differs"
        for k, v in brev.state_dict().items():
            assert torch.equal(v, other.state_dict()[k]), f"state {k} differs"
        qb, qo = _quant_state(brev), _quant_state(other)
        assert qb.keys() == qo.keys()
        assert all(qb[k][0] == qo[k][0] > 100 and torch.equal(qb[k][1], qo[k][1]) for k in qb), "quantizer statistics"
    brev.eval(), fast.eval()
    with torch.no_grad():
        ref_logits = brev(x_test)
        assert torch.equal(ref_logits, fwd(x_test)), "eval-mode logits differ on real test images"
        assert torch.equal(ref_logits, FastPath(brev)(x_test))


def test_cpp_step_is_the_python_step_where_torch_draws_dropout_and_for_other_inputs(images, monkeypatch):
    """Where torch's bernoulli_ is not the serial kernel (MKL on Intel CPUs) the C++ step draws with
    torch's own; an input the C loops do not take (not contiguous) runs the Python step."""
    from train import fast_kernels as K

    x, y, _ = images
    monkeypatch.setattr(K, "_serial", False)
    torch.manual_seed(0)
    a = build_model("B-D24N,D16N,QN,D", 784, 10, ModelOptions(dropout=0.3))
    b = copy.deepcopy(a)
    fa, fb = FastPath(a), FastPath(b, native=False)
    fa.ops = _Counting(fa.ops)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    for i in range(110):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        if i % 2:
            xb = xb.t().contiguous().t()  # same values, not contiguous
        torch.manual_seed(i)
        la = _step(a, fa, opt_a, xb, yb)
        torch.manual_seed(i)
        lb = _step(b, fb, opt_b, xb, yb)
        assert torch.equal(la, lb), f"step {i}: logits differ"
    assert fa.ops.forwards == 4  # steps 102..109: the even ones
    for (k, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad), f"{k} differs"


def test_quantizer_scales_and_their_gradients_are_brevitas_own(images):
    """The statistics-based and learned scales: Brevitas' module vs the fast path, call by call,
    through the statistics phase, the switch to the learned scale and after it."""
    x, _, _ = images
    torch.manual_seed(0)
    a = build_model("B-D24N,D16N,QN,D", 784, 10)
    b = copy.deepcopy(a)
    fast = FastPath(b)
    tq = a.add_requant.act_quant.fused_activation_quant_proxy.tensor_quant
    gen = torch.Generator().manual_seed(3)
    for i in range(104):
        h = (torch.randn(BATCH, 16, generator=gen) * (1 + i % 7)).requires_grad_()
        h2 = h.detach().clone().requires_grad_()
        qa, sa, _, _ = tq(h)
        qb = fast.add_requant(h2)
        sb = torch.as_tensor(fast.add_requant.last_scale, dtype=sa.dtype).reshape(sa.shape)
        assert torch.equal(sa, sb) and torch.equal(qa, qb), f"call {i}: scale or output differs"
        w = torch.randn(BATCH, 16, generator=gen)
        (qa * w).sum().backward()
        (qb * w).sum().backward()
        assert torch.equal(h.grad, h2.grad), f"call {i}: input gradient differs"
    va = a.add_requant.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value
    vb = b.add_requant.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value
    assert torch.equal(va.grad, vb.grad) and torch.equal(va, vb), "learned scale or its gradient differs"
    # weight scale (AbsMax, power of two), with ties at the maximum sharing the gradient
    lin_a, lin_b = a.shortcut.linear, b.shortcut.linear
    with torch.no_grad():
        for lin in (lin_a, lin_b):
            lin.weight[0, :3] = lin.weight.abs().max()
    qa, sa, _, _ = lin_a.weight_quant.tensor_quant(lin_a.weight)
    qb = fast.shortcut_weight()
    assert torch.equal(qa, qb)
    w = torch.randn(qa.shape, generator=gen)
    (qa * w).sum().backward()
    (qb * w).sum().backward()
    assert torch.equal(lin_a.weight.grad, lin_b.weight.grad), "weight gradient through the scale differs"


def test_trainers_give_the_same_run_and_the_fast_one_exports_exactly(mnist_dir, tmp_path):
    from export.qonnx_export import export_run
    from train.trainer import train_run

    runs = {}
    for trainer in ("brevitas", "fast"):
        r = tmp_path / trainer
        # 4 epochs of 38 steps: past the 100 statistics steps of the add / requant quantizers
        m = train_run("mnist", "B-D16N,D8N,QN,D", recipe="thesis", epochs=4, seed=0, run_dir=r,
                      data_dir=mnist_dir, limit_train=1200, progress=False, device="cpu", trainer=trainer)
        runs[trainer] = (r, m)
    (rb, mb), (rf, mf) = runs["brevitas"], runs["fast"]
    assert mb["test_acc"] == mf["test_acc"] and mb["val_loss"] == mf["val_loss"]
    cb = torch.load(rb / "checkpoint.pt", weights_only=False)
    cf = torch.load(rf / "checkpoint.pt", weights_only=False)
    assert cb["model"].keys() == cf["model"].keys()
    assert all(torch.equal(cb["model"][k], cf["model"][k]) for k in cb["model"]), "checkpoints differ"
    assert cb["quant_state"].keys() == cf["quant_state"].keys()
    for k in cb["quant_state"]:
        assert cb["quant_state"][k]["counter"] == cf["quant_state"][k]["counter"] > 100
    assert [h["train_loss"] for h in cb["history"]] == [h["train_loss"] for h in cf["history"]]
    export_run(rf, n_check=300)
    rep = json.loads((rf / "export.json").read_text())
    assert rep["identical_integer_outputs"] == 300 and rep["max_abs_diff_logits"] == 0.0


def test_unknown_trainer_is_a_one_line_error(mnist, tmp_path, capsys):
    from train.__main__ import main
    from train.trainer import TrainError, train_run

    with pytest.raises(TrainError, match="unknown trainer 'jit'"):
        train_run(mnist, "B-8N", recipe="thesis", epochs=1, run_dir=tmp_path / "r", progress=False, trainer="jit")
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "mnist", "--model", "B-8N", "--trainer", "jit"])
    assert e.value.code == 2
    assert "invalid choice: 'jit'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["adam", "rmsprop", "adamw"])
def test_foreach_optimizer_is_the_per_parameter_loop_bit_for_bit(kind, images):
    """train.fitting.make_optimizer uses foreach=True (fewer ops); it must not change a run."""
    from train.fitting import make_optimizer
    from train.recipes import Recipe

    x, y, _ = images
    params = {}
    for foreach in (False, True):
        torch.manual_seed(0)
        model = build_model("B-D24N,D16N,QN,D", 784, 10)
        fwd = FastPath(model)
        opt = make_optimizer(model, Recipe("t", optimizer=kind, lr=1e-2, weight_decay=1e-3))
        for group in opt.param_groups:
            group["foreach"] = foreach
        for i in range(110):
            torch.manual_seed(i)
            _step(model, fwd, opt, x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
        params[foreach] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params[False], params[True]))


def test_fast_path_refuses_float_models():
    with pytest.raises(ValueError, match="binary models"):
        FastPath(build_model("F-16", 784, 10))


def _special(shape, seed):
    """Random floats of several magnitudes with zeros of both signs, +-inf, NaN and exact .5 ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.tensor([1e-3, 0.5, 1.0, 3.0, 300.0])[
        torch.randint(0, 5, shape, generator=g)]
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:60]
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 0.5, -0.5, 1.5, 2.5, -2.5,
                             1.0, -1.0, 127.5, -128.5, 1e30, -1e30])
    flat[picks] = specials[torch.arange(60) % len(specials)]
    return x


def test_fused_loops_are_the_torch_ops_bit_for_bit():
    """train.fast_kernels: each C loop against its torch op sequence (the reference, and the GPU path),
    on values with every special case; equal also in NaN positions."""
    from train import fast_kernels as K

    def same(a, b):
        assert a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))

    for seed in range(3):
        x, g, noise = _special((37, 91), seed), _special((37, 91), seed + 10), _special((37, 91), seed + 20)
        same(K.sign(x), K._torch_sign(x))
        w1, w2 = x.clone(), x.clone()
        same(K.clamp_sign_(w1), K._torch_sign(w2.clamp_(-1.0, 1.0)))
        same(w1, w2)
        for nz in (None, noise):
            same(K.sign_backward(g, x, nz), K._torch_sign_backward(g, nz, x))
        for s, lo, hi in ((0.25, -128.0, 127.0), (1 / 64, 0.0, 15.0), (3.0, -8.0, 7.0)):
            for b in (None, g):
                for ste in (False, True):
                    y, (y1, q, m) = K.quant_forward(x, s, lo, hi, ste, b)
                    ry, ry1, rq, rm = K._torch_quant_forward(x, b, s, lo, hi, not ste)
                    for a, r in ((y, ry), (y1, ry1), (q, rq)):
                        same(a, r)
                    assert (m is None) == ste and (ste or torch.equal(m.bool(), rm))
                    for nz in (None, noise):
                        gx, gs = K.quant_backward(g, s, (y1, q, m), nz)
                        rgx, rgq, rt = K._torch_quant_backward(g, nz, s, ry1, rq, rm)
                        same(gx, rgx)
                        same(gs, rgq.sum_to_size(()) - rt.sum_to_size(()))
        torch.manual_seed(seed)
        y, n1 = K.dropout(x, 0.3)
        torch.manual_seed(seed)
        n2 = torch.empty_like(x).bernoulli_(0.7).div_(0.7)
        same(n1, n2)
        same(y, x * n2)
        same(K.input_quant(x.abs() * 100, 256.0, torch.tensor(1 / 16), 0.0, 15.0),
             torch.clamp(torch.round((x.abs() * 100 / 256.0) / torch.tensor(1 / 16)), 0.0, 15.0) * torch.tensor(1 / 16))
        fin = torch.nan_to_num(x, nan=0.0, posinf=2.0, neginf=-2.0).clamp_(-900.0, 900.0)  # ties at the max
        a, ties = K.absmax(fin)
        assert float(a) == float(fin.abs().max()) == 900.0
        assert ties == int((fin.abs() == 900.0).sum()) and ties > 1
        g1, g2 = g.clone(), g.clone()
        K.add_at_absmax_(g1, fin, a, 0.375)
        at = torch.nonzero((fin.abs() == a).view(-1)).view(-1)
        g2.view(-1).index_add_(0, at, fin.view(-1)[at].sgn() * 0.375)
        same(g1, g2)
        a, ties = K.absmax(x)  # a NaN: nothing reaches it, as torch.max
        assert torch.isnan(a) and ties == 0


def test_missing_compiler_is_a_one_line_error(mnist_dir, tmp_path, monkeypatch, capsys):
    """Without a C++ compiler the fast trainer stops with a one-line error naming it (and the way out)."""
    from train import __main__ as cli
    from train import fast_kernels as K

    monkeypatch.setattr(K, "_lib", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    rc = cli.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", "B-D24N,QN,D", "--epochs", "1",
                   "--limit", "64", "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "'no-such-compiler' not found" in err[0] and "--trainer brevitas" in err[0]
    assert not (tmp_path / "run" / "teacher.pt").exists()  # stopped before the distilling recipe's teacher


def test_failing_compile_is_a_one_line_error_and_leaves_no_library(mnist_dir, tmp_path, monkeypatch, capsys):
    """A compiler that fails (e.g. torch's headers missing) stops the run before the teacher with one
    line naming the file and the compiler's first error; nothing half-written stays in the cache."""
    from train import __main__ as cli
    from train import fast_kernels as K

    fake = tmp_path / "fake-g++"
    fake.write_text("#!/bin/sh\necho 'fatal error: ATen/ATen.h: No such file or directory' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(K, "_lib", None)
    monkeypatch.setattr(K, "_step", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(fake))
    rc = cli.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", "B-D24N,QN,D", "--epochs", "1",
                   "--limit", "64", "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and "compiling fast_kernels.c" in err[-1] and "ATen/ATen.h: No such file" in err[-1]
    assert "--trainer brevitas" in err[-1] and all("Traceback" not in ln for ln in err)
    assert not list((tmp_path / "cache").rglob("*.so")) and not (tmp_path / "run" / "teacher.pt").exists()


@pytest.mark.parametrize("n", [1, 311, 624, 625, 2000, 100352])
def test_dropout_draws_torchs_own_random_numbers(n):
    """The fast dropout reproduces torch's CPU bernoulli_ stream (serial MT19937 kernel) bit for bit,
    across the generator's twists, and leaves the generator where torch leaves it."""
    from train import fast_kernels as K

    if not K.serial_bernoulli():
        pytest.skip("torch draws bernoulli_ with MKL here (an Intel CPU); the fast path uses torch's own")
    for pre in (0, 1, 623, 1000):  # where in the engine's 624-word block the draw starts
        torch.manual_seed(n + pre)
        torch.rand(pre)
        start = torch.get_rng_state()
        x = torch.randn(n)
        y, noise = K.dropout(x, 0.3)
        after = torch.rand(5)
        torch.set_rng_state(start)
        x2 = torch.randn(n)
        ref = torch.empty_like(x2).bernoulli_(0.7).div_(0.7)
        assert torch.equal(noise, ref) and torch.equal(y, x2 * ref) and torch.equal(after, torch.rand(5))


def test_dropout_falls_back_to_torch_where_its_stream_differs(monkeypatch):
    """Where torch's bernoulli_ is not the serial kernel (MKL on Intel CPUs), dropout draws with torch."""
    from train import fast_kernels as K

    monkeypatch.setattr(K, "_serial", False)
    torch.manual_seed(5)
    x = torch.randn(40, 30)
    y, noise = K.dropout(x, 0.25)
    torch.manual_seed(5)
    x2 = torch.randn(40, 30)
    ref = torch.empty_like(x2).bernoulli_(0.75).div_(0.75)
    assert torch.equal(noise, ref) and torch.equal(y, x2 * ref)


def test_kernels_build_where_the_home_cache_is_read_only(tmp_path, monkeypatch):
    """A cache folder the user cannot write (a container's home) falls back to a temporary folder."""
    from train import fast_kernels as K

    ro = tmp_path / "ro"
    real_access = K.os.access
    monkeypatch.setattr(K.os, "access", lambda p, mode: not str(p).startswith(str(ro)) and real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
    monkeypatch.setattr(K.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(K, "_lib", None)
    assert K.library().rb_sign
    assert list((tmp_path / "tmp").glob("resbin-*/fast_kernels-*.so")) and not list(ro.rglob("*.so"))
