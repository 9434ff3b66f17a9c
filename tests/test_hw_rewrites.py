"""hw_build.shared_thresholds.SharedRequantThresholds: per-channel requantizers as an exact integer affine
map per channel + one shared threshold set (step_resbin_shared_thresholds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hw_build_helpers import estimate_build, tiny_run

pytestmark = pytest.mark.finn


def _count(T: np.ndarray, x: np.ndarray) -> np.ndarray:
    """#{j : T[c, j] <= x} for every channel c and integer x: (C, len(x))."""
    return (T[:, :, None] <= x[None, None, :]).sum(axis=1)


def test_affine_for_is_exact_on_quantized_lines_and_refuses_other_step_functions():
    from hw_build.shared_thresholds import affine_for

    rng = np.random.default_rng(0)
    lo, hi, S, C = 0, 88, 255, 40
    x = np.arange(lo, hi + 1)
    # a requantizer of a batch-normed popcount: round half to even of a*x + b, clipped to INT8
    a, b = rng.uniform(0.5, 9.0, C), rng.uniform(-400, 100, C)
    levels = np.clip(np.rint(a[:, None] * x[None, :] + b[:, None]), -128, 127) + 128
    T = np.array([[x[levels[c] > j][0] if (levels[c] > j).any() else hi + 1 for j in range(S)]
                  for c in range(C)], dtype=np.float64)
    assert np.array_equal(_count(T, x), levels)
    D = 1
    while (found := affine_for(T, lo, hi, D)) is None:
        D *= 2
    A, B = found
    v = A[:, None] * x[None, :] + B[:, None]
    shared = D * np.arange(1, S + 1)
    assert np.array_equal((shared[None, :, None] <= v[:, None, :]).sum(axis=1), levels)
    assert (A >= 0).all() and np.abs(v).max() < 2 ** 24
    # steps at 10, 11 and 30: no line crosses D, 2D, 3D there (slope > D/2 and < D/18)
    assert all(affine_for(np.array([[10.0, 11.0, 30.0]]), 0, 40, 2 ** k) is None for k in range(20))


@pytest.fixture(scope="module")
def auto_build(tmp_path_factory, mnist_dir):
    return estimate_build(tiny_run(tmp_path_factory.mktemp("hwrun"), mnist_dir))


def test_shared_thresholds_fire_on_a_q_model_and_stay_bit_exact(auto_build):
    from qonnx.core.modelwrapper import ModelWrapper

    from deploy.sim import SimAccelerator
    from hw_build.simulate import simulate
    from hw_build.verify import Reference

    out = Path(auto_build["out_dir"])

    def per_channel_thresholds(step):
        m = ModelWrapper(str(out / "steps" / f"{step}.onnx"))
        ts = [m.get_initializer(n.input[1]) for n in m.graph.node if n.op_type == "MultiThreshold"]
        return sum(t.size for t in ts if t.shape[0] > 1), m

    before, _ = per_channel_thresholds("step_resbin_bipolar_fix")
    after, m = per_channel_thresholds("step_resbin_shared_thresholds")
    # the trunk's requantizer (12 channels x 255 thresholds on a popcount 0..16) became one
    # shared set behind an integer Mul/Add; the sign thresholds and the shortcut's stay
    assert before - after == 12 * 255
    assert [n.op_type for n in m.graph.node].count("Mul") >= 1
    hw = ModelWrapper(str(out / "hw_graph.onnx"))
    ops = [n.op_type for n in hw.graph.node]
    assert "ElementwiseMul" in ops and ops.count("ElementwiseAdd") == 2   # + the residual add
    # every HW-graph step was checked on 100 test images by the build; the HW graph and the
    # numpy golden model on 300 more
    assert simulate(out, n=300, progress=False)["identical"] == "300/300"
    ref = Reference.load(out / "reference.npz")
    assert np.array_equal(SimAccelerator(out / "golden.npz").execute_int(ref.x), ref.y_int)
