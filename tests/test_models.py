"""Brevitas model family: every shortcut kind builds and trains, FINN-relevant structure, refusals, sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from brevitas.nn import QuantIdentity, QuantLinear
from torch import nn

from train.models import ModelError, ModelOptions, build_model, deployed_size, options_suffix
from train.spec import ModelSpec, SpecError

IMG = (28, 28, 1)


pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [  # (name, options)
    ("B-16,8", ModelOptions()),
    ("B-D16N,8N,D", ModelOptions()),
    ("B-16N,8,Q", ModelOptions()),
    ("B-16,D8N,QN,D", ModelOptions(shortcut_weight_bits=4, add_bits=6, output_weight_bits=4)),
    ("B-16N,8N,P", ModelOptions()),
    ("B-16N,8N,PN", ModelOptions(pool_mode="vertical", pool_window=4)),
    ("B-16N,8,P", ModelOptions(pool_mode="vertical", pool_window=3, input_bits=2)),
    ("B-16N,8N,F", ModelOptions()),
    ("B-16N,8N,FN", ModelOptions(input_bits=1)),
    ("F-16,8", ModelOptions()),
    ("F-D16N,8N,QN,D", ModelOptions()),
    ("F-16,8,PN", ModelOptions()),
]


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 784), generator=g).float(), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o.pool_mode}{o.input_bits}" for n, o in CASES])
def test_every_kind_builds_trains_one_step_and_is_deterministic(name, options):
    torch.manual_seed(0)
    m = build_model(name, 784, 10, options, image_shape=IMG)
    x, y = _batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    m.train()
    loss = F.cross_entropy(m(x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [k for k, v in m.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("hidden.0.") for k in changed)
    assert any(k.startswith("output.") for k in changed)
    if m.shortcut is not None:
        assert any(k.startswith("shortcut.") for k in changed)
    m.eval()
    a, b = m(x), m(x)
    assert a.shape == (32, 10) and torch.equal(a, b)


def test_binary_layers_use_pm1_weights_and_sign_activations():
    torch.manual_seed(0)
    m = build_model("B-D16N,8N,D8,QN", 784, 10)
    for blk in m.hidden:
        w = blk.linear.quant_weight().value
        assert set(w.unique().tolist()) == {-1.0, 1.0}
    seen = []
    for blk in list(m.hidden)[1:]:
        blk.in_quant.register_forward_hook(lambda mod, i, o: seen.append(o))
    m.eval()
    m(_batch()[0])
    assert len(seen) == 2 and all(set(o.unique().tolist()) <= {-1.0, 1.0} for o in seen)


def test_input_quantizer_is_identity_on_8bit_pixels():
    m = build_model("B-8,Q", 784, 10)
    k = torch.arange(256.0).repeat(4)[:784].reshape(1, 784)
    assert m.input_div == 256.0
    out = m.input_quant(k / m.input_div)
    # power-of-two scale: exactly k / 256, no rounding anywhere
    assert torch.equal(out * 256, k)
    m2 = build_model("B-8,Q", 784, 10, ModelOptions(input_bits=2))
    q2 = m2.input_quant(k / m2.input_div) * 4
    assert set(q2.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    # 2 bits: round(k / 64), clamped to 3 (ties to even: k = 32 -> 0, k = 96 -> 2)
    expect = torch.clamp(torch.round(k / 64), max=3)
    assert torch.equal(q2, expect)


def test_add_uses_one_shared_quantizer_with_power_of_two_scale():
    torch.manual_seed(0)
    m = build_model("B-16N,8N,QN", 784, 10)
    quant_ids = [mod for mod in m.modules() if isinstance(mod, QuantIdentity)]
    assert sum(mod is m.add_quant for mod in quant_ids) == 1
    calls = []
    m.add_quant.register_forward_hook(lambda mod, i, o: calls.append(o))
    m.train()
    for _ in range(3):
        m(_batch()[0])
    m.eval()
    calls.clear()
    m(_batch()[0])
    assert len(calls) == 2                         # trunk and shortcut through the same module
    s0, s1 = calls[0].scale, calls[1].scale
    assert torch.equal(s0, s1) and calls[0].bit_width.item() == 8
    assert float(torch.log2(s0)).is_integer()      # power of two: exact FINN thresholds
    for lin in (m.shortcut.linear, m.output):
        assert float(torch.log2(lin.quant_weight().scale.detach())).is_integer()
    assert m.head_quant is None and m.add_requant is not None
    nos = build_model("B-16N,8N", 784, 10)
    assert nos.add_quant is None and nos.head_quant is not None


def test_pooling_matches_plain_max_pool():
    x = _batch(4)[0]
    m = build_model("B-8,P", 784, 10)  # flat, window 9 -> 87 features (thesis size tables)
    assert m.shortcut.linear.in_features == 87
    ref = F.max_pool1d(x[:, None, :], 9)[:, 0, :]
    assert torch.equal(m.shortcut.pool(x), ref)
    v = build_model("B-8,P", 784, 10, ModelOptions(pool_mode="vertical", pool_window=4), image_shape=IMG)
    assert v.shortcut.linear.in_features == 7 * 28
    assert v.shortcut.pool.hwc == (28, 1, 28)      # image columns as channels
    img = x.reshape(4, 28, 28)
    ref_v = img.reshape(4, 7, 4, 28).amax(2).reshape(4, -1)
    assert torch.equal(v.shortcut.pool(x), ref_v)


def test_float_baseline_is_plain_torch():
    m = build_model("F-16,8", 784, 10)
    assert not any(isinstance(mod, (QuantLinear, QuantIdentity)) for mod in m.modules())
    assert [type(b.linear) for b in m.hidden] == [nn.Linear, nn.Linear]
    h = m.hidden[0](torch.randn(5, 784))
    assert (h >= 0).all()  # ReLU


@pytest.mark.parametrize("call,match", [
    (lambda: build_model("B-16N,F", 784, 10, fpga=True), r"B-16N,F cannot go to the FPGA.*F shortcut"),
    (lambda: build_model("F-16", 784, 10, fpga=True), r"F-16 cannot go to the FPGA"),
    (lambda: build_model("B-16,Q", 784, 10, ModelOptions(input_bits=0)), r"input_bits=0"),
    (lambda: build_model("B-16,Q", 784, 10, ModelOptions(input_bits=9)), r"input_bits=9"),
    (lambda: build_model("B-16,P", 20, 10, ModelOptions(pool_window=21)), r"pool window 21 .* 20 inputs"),
    (lambda: build_model("B-16,P", 784, 10, ModelOptions(pool_mode="vertical")), r"needs the image shape"),
    (lambda: build_model("B-16,P", 784, 10, ModelOptions(pool_mode="vertical", pool_window=29), image_shape=IMG),
     r"larger than the image height 28"),
    (lambda: build_model("B-16,P", 784, 10, ModelOptions(pool_mode="diag")), r"pool_mode='diag'"),
    (lambda: build_model("B-16,Q", 784, 0), r"output"),
])
def test_refused_at_construction(call, match):
    with pytest.raises((ModelError, SpecError), match=match):
        call()


def test_fpga_build_of_deployable_spec_is_allowed():
    assert build_model("B-16N,QN", 784, 10, fpga=True).spec == ModelSpec.parse("B-16N,QN")


def test_deployed_size_hand_computed():
    # B-4N,3,QN on 6 inputs, 2 outputs, all defaults (8-bit input, shortcut, add, output).
    m = build_model("B-4N,3,QN", 6, 2)
    d = deployed_size(m)
    rows = {r["name"]: r["bits"] for r in d["layers"]}
    expected = {
        "hidden.0.linear": 6 * 4 * 2,                 # +-1 weights of the multiply MVAU: INT2 in FINN
        "hidden.0.bn+sign": 4 * 12,                   # |acc| <= 6*255 = 1530 -> 11 bits + sign
        "hidden.1.linear": 4 * 3 * 1,
        "hidden.1.bn+add_quant": 255 * 3,             # one shared set; popcount 0..4 -> 3 bits
        "hidden.1.affine": 2 * 3 * 3,                 # per-unit integer scale and offset before it
        "shortcut.linear": 6 * 3 * 8,
        "shortcut.bn+add_quant": 3 * 255 * 19,        # |acc| <= 6*255*127 = 194310 -> 18 bits + sign
        "add_requant": 255 * 9,                       # INT8 + INT8 -> INT9, one per-tensor set
        "output": 3 * 2 * 8,
    }
    assert rows == expected
    assert d["total_bits"] == sum(expected.values()) == 17913
    assert d["total_kib"] == pytest.approx(17913 / 8192)
    assert d["fpga_able"] is True
    # a 4-bit input needs its own thresholds (15 at the raw 8-bit width) and narrows the first accumulator
    d4 = {r["name"]: r["bits"] for r in deployed_size(build_model("B-4N,3,QN", 6, 2, ModelOptions(input_bits=4)))["layers"]}
    assert d4["input_quant"] == 15 * 8 and d4["hidden.0.bn+sign"] == 4 * 8   # 6*15 = 90 -> 7 bits + sign
    # no shortcut: last hidden (BN, after an XNOR layer) into the head quantizer: one shared set behind an affine
    nob = {r["name"]: r["bits"] for r in deployed_size(build_model("B-4,3N", 6, 2))["layers"]}
    assert nob["hidden.1.bn+head_quant"] == 255 * 3 and "add_requant" not in nob
    fl = deployed_size(build_model("B-4N,3,F", 6, 2))
    assert fl["fpga_able"] is False
    assert {r["name"]: r["bits"] for r in fl["layers"]}["shortcut.linear"] == (6 * 3 + 3) * 32


def test_options_suffix():
    assert options_suffix(ModelOptions()) == ""
    assert options_suffix(ModelOptions(input_bits=2, shortcut_weight_bits=4)) == "__in2_sc4"
    assert options_suffix(ModelOptions(pool_mode="vertical", pool_window=4)) == "__pw4_pmvertical"
