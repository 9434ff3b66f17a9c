"""Software accelerator: executes golden.npz bit-exactly with numpy (no FINN, no torch).

Every tensor holds integers; arithmetic is exact by construction:
- XNOR MVAU: inputs packed into uint64 words, popcount(x ^ w) (np.bitwise_count on numpy >= 2,
  a byte lookup table on older numpy such as PYNQ's), xnor-popcount = MW - mismatches;
- integer MVAU: BLAS matmul in float32 when every partial sum is an integer below 2**24 (bound
  from the weights and the input datatype), else float64 (< 2**53), else int64;
- thresholds (count of t <= x, i.e. qonnx's `x >= t`): one comparison for 1 step, a lookup
  table over the reachable range when it is small, else a linear estimate per channel corrected
  against the exact thresholds (the number of corrections is bounded at load time);
- ElementwiseAdd & co. in int32/int64, max-pool as gather + max, LabelSelect as ONNX TopK
  (ties: the lower index first).
"""
from __future__ import annotations

import numpy as np

from core.labels import labels_from_outputs
from deploy.accelerator import Accelerator, positive_int
from deploy.golden import Golden, GoldenError, dtype, read_golden, smallest_int_dtype

_HAS_BITCOUNT = hasattr(np, "bitwise_count")
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_LUT_MAX = 1 << 22           # entries of a threshold lookup table
_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53


def _popcount64(a: np.ndarray) -> np.ndarray:
    if _HAS_BITCOUNT:
        return np.bitwise_count(a)
    # numpy < 2 (PYNQ images): popcount via a byte table
    return _POP8[a.view(np.uint8)].reshape(a.shape + (8,)).sum(axis=-1, dtype=np.uint8)


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """(M, n) 0/1 -> (M, ceil(n/64)) uint64 (np.packbits order, zero padded)."""
    packed = np.packbits(bits, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((packed.shape[0], pad), np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view(np.uint64)


class _Threshold:
    """y = out_scale * #{t in T[c] : t <= x} + out_bias for integer x in [in_lo, in_hi]."""

    def __init__(self, T: np.ndarray, out_scale: int, out_bias: int, in_lo: int, in_hi: int,
                 as_float=None):
        # thresholds below/above the reachable input range act like in_lo - 1 / in_hi + 1
        T = np.sort(np.clip(np.asarray(T, dtype=np.int64), in_lo - 1, in_hi + 1), axis=1)
        C, S = T.shape
        if C > 1 and np.all(T == T[:1]):
            T, C = T[:1], 1
        self.T, self.C, self.S = T, C, S
        self.scale, self.bias = int(out_scale), int(out_bias)
        self.lo, self.hi = sorted((self.bias, self.bias + self.scale * S))
        self.out_dtype = as_float or smallest_int_dtype(self.lo, self.hi)
        # counts only change inside [tmin - 1, tmax]
        self.a = max(int(T.min()) - 1, in_lo)
        self.b = max(self.a, min(int(T.max()), in_hi))
        R = self.b - self.a + 1
        if S == 1:
            self.mode = "compare"
            self.t = T[:, 0].copy()
        elif R * C <= _LUT_MAX:
            v = np.arange(self.a, self.b + 1, dtype=np.int64)
            lut = np.stack([np.searchsorted(T[c], v, side="right") for c in range(C)])
            lut = lut * self.scale + self.bias
            self.mode = "lut"
            if C == 1 and R > 1:
                slope = lut[0, 1:] - lut[0, :-1]
                if np.all(slope == slope[0]):   # e.g. an identity requantization: no table
                    self.mode = "affine"
                    self.alpha = int(slope[0])
                    self.beta = int(lut[0, 0]) - self.alpha * self.a
                    self.clip = self.a > in_lo or self.b < in_hi
            self.lut = lut.astype(self.out_dtype).reshape(-1)
            self.offs = np.arange(C, dtype=np.intp) * R - self.a
        else:
            self._init_estimate(T)

    def _init_estimate(self, T):
        """Per channel k = floor((x - t0) / d) + 1, then at most `rounds` exact corrections."""
        C, S = T.shape
        t0, d = np.zeros(C), np.ones(C)
        lo, hi = T.min(), T.max()
        for c in range(C):  # fit the line on the thresholds inside the reachable range
            inner = np.nonzero((T[c] > lo) & (T[c] < hi))[0]
            i0, i1 = (inner[0], inner[-1]) if len(inner) > 1 else (0, S - 1)
            if T[c, i1] > T[c, i0]:
                d[c] = (T[c, i1] - T[c, i0]) / (i1 - i0)
            t0[c] = T[c, i0] - i0 * d[c]
        self.t0, self.inv_d = t0, 1.0 / d
        big = np.iinfo(np.int64).max
        self.Tpad = np.concatenate([np.full((C, 1), -big, np.int64), T,
                                    np.full((C, 1), big, np.int64)], axis=1).reshape(-1)
        self.rows = np.arange(C, dtype=np.intp) * (S + 2)
        m = 0
        for c in range(C):  # worst error over every breakpoint of both step functions
            line = np.ceil(t0[c] + np.arange(S + 1) * d[c]).astype(np.int64)
            xs = np.unique(np.concatenate([T[c] - 1, T[c], line - 1, line, line + 1]))
            est = np.clip(np.floor((xs - t0[c]) * self.inv_d[c]) + 1, 0, S).astype(np.int64)
            true = np.searchsorted(T[c], xs, side="right")
            m = max(m, int(np.abs(est - true).max()))
        self.rounds = m
        self.mode = "estimate"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (M, k*C) integer-valued (int or exact float) -> thresholded, same shape."""
        shape, C, od = x.shape, self.C, self.out_dtype
        if self.mode == "compare":
            if x.dtype.kind in "iu" and not (np.iinfo(x.dtype).min <= self.t.min()
                                             and self.t.max() <= np.iinfo(x.dtype).max):
                x = x.astype(np.int64)   # e.g. uint8 pixels against a threshold of -1
            t = self.t.astype(x.dtype)
            y = (x.reshape(-1, C) >= t).reshape(shape) if C > 1 else (x >= t[0])
            if self.scale == 1 and self.bias == 0:
                return y.view(np.uint8) if od is np.int8 else y.astype(od)
            return y.astype(od) * od(self.scale) + od(self.bias)
        if self.mode == "affine":
            y = (np.clip(x, self.a, self.b) if self.clip else x).astype(od)
            if self.alpha != 1:
                y *= od(self.alpha)
            if self.beta != 0:
                y += od(self.beta)
            return y
        xi = x if x.dtype.kind in "iu" else x.astype(np.int64)
        if self.mode == "lut":
            xi = np.clip(xi, self.a, self.b)
            if C == 1:
                return np.take(self.lut, xi.astype(np.intp) - self.a)
            idx = xi.reshape(-1, C).astype(np.intp) + self.offs
            return np.take(self.lut, idx).reshape(shape)
        xr = xi.reshape(-1, C).astype(np.int64)
        k = np.clip(np.floor((xr - self.t0) * self.inv_d) + 1, 0, self.S).astype(np.intp)
        k += self.rows
        for _ in range(self.rounds):  # too high: T[k-1] > x
            k -= self.Tpad[k] > xr
        for _ in range(self.rounds):  # too low: T[k] <= x
            k += self.Tpad[k + 1] <= xr
        k -= self.rows
        return (k.astype(od) * od(self.scale) + od(self.bias)).reshape(shape)


class SimAccelerator(Accelerator):
    """Bit-exact numpy executor of golden.npz (the `sim` backend)."""

    backend = "sim"

    def __init__(self, golden, batch_size: int | None = None, chunk: int = 8192):
        """golden: path or Golden; batch_size: refuse larger batches (None: any size);
        chunk: images per internal pass (larger: better BLAS efficiency, more memory)."""
        self.golden: Golden = golden if isinstance(golden, Golden) else read_golden(golden)
        g = self.golden
        self.meta = g.meta
        self.build_id = g.build_id
        self.n_inputs = g.n_inputs
        self.input_dtype = dtype(g.input["dtype"])
        self.image_shape = tuple(g.meta["image_shape"]) if g.meta.get("image_shape") else None
        self.batch_size = positive_int(batch_size, "batch_size", allow_none=True)
        self.chunk = positive_int(chunk, "chunk")
        self.output = g.output
        self.n_outputs = int(g.output["n_outputs"])
        self._compile()

    # --- compilation: golden nodes -> numpy closures -----------------------------------------
    def _compile(self):
        g = self.golden
        self._consumers: dict = {}
        for node in g.nodes:
            for t in node["inputs"]:
                if t is not None:
                    self._consumers.setdefault(t, []).append(node)
        self._plans = {n["name"]: self._plan_mvau(n) for n in g.nodes if n["op"] == "MVAU"}
        self._aliases: dict = {}
        self._fused: dict = {}   # MVAU name -> its group (integer MVAUs sharing one input)
        self._steps = []
        for node in g.nodes:
            fn = getattr(self, "_c_" + node["op"], None)
            if fn is None:
                raise GoldenError(f"{g.path}: node {node['name']}: op {node['op']} unknown to "
                                  f"this deploy package")
            self._steps.append((node["name"], fn(node)))
        self.step_names = [n for n, s in self._steps if s is not None]
        self._steps = [s for n, s in self._steps if s is not None]
        self._int_name = self._resolve(g.output["int_tensor"])
        self._out_name = self._resolve(g.output["name"])

    def _resolve(self, t):
        while t in self._aliases:
            t = self._aliases[t]
        return t

    def _arr(self, node, role):
        return self.golden.arrays[node["arrays"][role]]

    def _plan_mvau(self, node) -> dict:
        """Weights in compute form, the accumulator range and (integer mode) the exact dtype."""
        a = node["attrs"]
        MW, MH, mode = int(a["MW"]), int(a["MH"]), a["mode"]
        w = self._arr(node, "weights")
        if mode in ("xnor", "bipolar_xnor"):
            if w.shape != (MH, (MW + 7) // 8):
                raise GoldenError(f"{self.golden.path}: {node['name']}: packed weights "
                                  f"{w.shape}, expected {(MH, (MW + 7) // 8)}")
            pad = (-w.shape[1]) % 8
            wp = np.concatenate([w, np.zeros((MH, pad), np.uint8)], axis=1) if pad else w
            return {"W": np.ascontiguousarray(wp).view(np.uint64), "acc": (0, MW), "cdt": None}
        if a["weight_encoding"] == "int":
            Wi = w.astype(np.int64)
        else:
            bits = np.unpackbits(w, axis=1, count=MW).T.astype(np.int64)  # (MW, MH)
            Wi = 2 * bits - 1 if a["weight_encoding"] == "bipolar_bits" else bits
        if Wi.shape != (MW, MH):
            raise GoldenError(f"{self.golden.path}: {node['name']}: weights {Wi.shape}, "
                              f"expected {(MW, MH)}")
        d = dtype(a["inputDataType"])
        pos, neg = np.clip(Wi, 0, None), np.clip(Wi, None, 0)
        acc_hi = int((pos * d.max + neg * d.min).sum(axis=0).max())
        acc_lo = int((pos * d.min + neg * d.max).sum(axis=0).min())
        # every partial sum is an integer bounded by this: float BLAS is exact below 2**24/2**53
        bound = int((np.abs(Wi) * max(abs(d.min), abs(d.max))).sum(axis=0).max())
        cdt = np.float32 if bound < _F32_EXACT else (np.float64 if bound < _F64_EXACT
                                                     else np.int64)
        return {"W": Wi.astype(cdt), "acc": (acc_lo, acc_hi), "cdt": cdt}

    def _float_consumers(self, tensors):
        """The float type to emit if every consumer is an integer MVAU computing in it."""
        kinds = set()
        todo = list(tensors)
        while todo:
            t = todo.pop()
            for c in self._consumers.get(t, []):
                if c["op"] == "Identity":
                    todo.extend(c["outputs"])
                elif c["op"] == "MVAU" and self._plans[c["name"]]["cdt"] in (np.float32,
                                                                              np.float64):
                    kinds.add(self._plans[c["name"]]["cdt"])
                else:
                    return None
        return kinds.pop() if len(kinds) == 1 else None

    def _c_Identity(self, node):
        src = self._resolve(node["inputs"][0])
        for o in node["outputs"]:
            self._aliases[o] = src
        return None

    def _siblings(self, node, src):
        """Integer MVAUs reading `src` with the same compute dtype and MW (one fused matmul)."""
        plan = self._plans[node["name"]]
        group = []
        for other in self.golden.nodes:
            if other["op"] != "MVAU" or other["attrs"]["mode"] != "int":
                continue
            if self._resolve_static(other["inputs"][0]) != src:
                continue
            p = self._plans[other["name"]]
            if p["cdt"] is plan["cdt"] and int(other["attrs"]["MW"]) == int(node["attrs"]["MW"]) \
                    and int(np.prod(other["attrs"]["numInputVectors"])) == 1:
                group.append(other)
        return group

    def _resolve_static(self, t):
        """Alias resolution before compilation reached the node (Identity chains only)."""
        t = self._resolve(t)
        changed = True
        while changed:
            changed = False
            for n in self.golden.nodes:
                if n["op"] == "Identity" and t in n["outputs"]:
                    t, changed = self._resolve(n["inputs"][0]), True
        return t

    def _mvau_post(self, node):
        """(threshold or None, accumulator int dtype) of an MVAU."""
        a = node["attrs"]
        acc_lo, acc_hi = self._plans[node["name"]]["acc"]
        thr = None
        if "thresholds" in node["arrays"]:
            thr = _Threshold(self._arr(node, "thresholds"), a["out_scale"], a["out_bias"],
                             acc_lo, acc_hi, as_float=self._float_consumers([node["outputs"][0]]))
        acc_int = smallest_int_dtype(acc_lo, acc_hi)
        return thr, (np.int16 if acc_int is np.int8 else acc_int)

    def _c_MVAU(self, node):
        a = node["attrs"]
        MW, MH, mode = int(a["MW"]), int(a["MH"]), a["mode"]
        src = self._resolve(node["inputs"][0])
        out = node["outputs"][0]
        V = int(np.prod(a["numInputVectors"]))
        plan = self._plans[node["name"]]
        W, cdt = plan["W"], plan["cdt"]
        if cdt is not None and V == 1:
            if node["name"] in self._fused:
                return None          # computed by the first MVAU of its group
            group = self._siblings(node, src)
            if len(group) > 1:
                return self._fused_step(group, src)
        thr, acc_int = self._mvau_post(node)

        if cdt is None:  # XNOR-popcount on packed words
            words = W.shape[1]
            bipolar_in = mode == "bipolar_xnor"
            mdt = np.uint16 if MW < 65536 else np.uint32

            def step(env):
                x = env[src].reshape(-1, MW)
                bits = (x > 0) if bipolar_in else x
                if bits.dtype not in (np.uint8, np.bool_):
                    bits = bits.astype(np.uint8)
                xw = _pack_words(bits)
                mism = np.zeros((xw.shape[0], MH), mdt)
                for k in range(words):
                    mism += _popcount64(xw[:, k, None] ^ W[None, :, k])
                acc = acc_int(MW) - mism.astype(acc_int)
                y = thr(acc) if thr is not None else acc
                env[out] = y.reshape(-1, V * MH) if V > 1 else y
        else:
            def step(env):
                x = env[src].reshape(-1, MW)
                acc = np.matmul(x.astype(cdt, copy=False), W)
                y = thr(acc) if thr is not None else acc.astype(acc_int, copy=False)
                env[out] = y.reshape(-1, V * MH) if V > 1 else y
        return step

    def _fused_step(self, group, src):
        """One matmul for all integer MVAUs reading `src` (e.g. trunk + shortcut after the
        DuplicateStreams), then each one's own thresholds on its columns."""
        for n in group:
            self._fused[n["name"]] = group
        MW = int(group[0]["attrs"]["MW"])
        cdt = self._plans[group[0]["name"]]["cdt"]
        Wcat = np.ascontiguousarray(np.concatenate([self._plans[n["name"]]["W"] for n in group],
                                                   axis=1))
        parts, c0 = [], 0
        for n in group:
            mh = int(n["attrs"]["MH"])
            thr, acc_int = self._mvau_post(n)
            parts.append((n["outputs"][0], c0, c0 + mh, thr, acc_int))
            c0 += mh

        def step(env):
            acc = np.matmul(env[src].reshape(-1, MW).astype(cdt, copy=False), Wcat)
            for out, lo, hi, thr, acc_int in parts:
                a = acc[:, lo:hi]
                env[out] = thr(a) if thr is not None else a.astype(acc_int)
        return step

    def _c_Thresholding(self, node):
        a = node["attrs"]
        src = self._resolve(node["inputs"][0])
        out = node["outputs"][0]
        d = dtype(a["inputDataType"])
        thr = _Threshold(self._arr(node, "thresholds"), a["out_scale"], a["out_bias"],
                         d.min, d.max, as_float=self._float_consumers([out]))

        def step(env):
            env[out] = thr(env[src])
        return step

    def _c_Gather(self, node):
        src = self._resolve(node["inputs"][0])
        out = node["outputs"][0]
        idx = self._arr(node, "index").astype(np.intp)

        def step(env):
            env[out] = np.take(env[src], idx, axis=1)
        return step

    def _c_Pool(self, node):
        a = node["attrs"]
        src = self._resolve(node["inputs"][0])
        out = node["outputs"][0]
        k2, ch, fn = int(a["k2"]), int(a["Channels"]), a["Function"]

        def step(env):
            x = env[src]
            x = x.reshape(x.shape[0], -1, k2, ch)
            y = x.max(axis=2) if fn == "MaxPool" else x.sum(axis=2, dtype=np.int64)
            env[out] = y.reshape(x.shape[0], -1)
        return step

    def _c_ElementwiseAdd(self, node):
        return self._elementwise(node)

    _c_ElementwiseSub = _c_ElementwiseMul = _c_ElementwiseMax = _c_ElementwiseMin = \
        _c_ElementwiseAdd

    def _elementwise(self, node):
        a = node["attrs"]
        out = node["outputs"][0]
        fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
              "min": np.minimum}[a["fn"]]
        d = dtype(a["out_dtype"])
        odt = np.int64 if d.bits > 31 else np.int32
        srcs = []
        for side, t in zip(("lhs", "rhs"), node["inputs"]):
            if t is None:
                srcs.append(("const", self._arr(node, side).astype(odt)[None, :]))
            else:
                srcs.append(("tensor", self._resolve(t)))

        def step(env):
            ops = [v if kind == "const" else env[v].astype(odt, copy=False) for kind, v in srcs]
            env[out] = fn(ops[0], ops[1])
        return step

    def _c_LabelSelect(self, node):
        src = self._resolve(node["inputs"][0])
        out = node["outputs"][0]
        K = int(node["attrs"]["K"])

        def step(env):
            x = env[src]
            if K == 1:
                env[out] = np.argmax(x, axis=1)[:, None]
            else:  # ONNX TopK: descending, ties -> lower index first
                env[out] = np.argsort(-x.astype(np.int64), axis=1, kind="stable")[:, :K]
        return step

    # --- execution ---------------------------------------------------------------------------
    def _forward(self, x: np.ndarray, want: str) -> np.ndarray:
        outs = []
        for s in range(0, x.shape[0], self.chunk):
            env = {self.golden.input["name"]: x[s:s + self.chunk]}
            for step in self._steps:
                step(env)
            outs.append(env[want])
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _run(self, x):
        if self.output["kind"] != "labels":  # no LabelSelect on chip: the host takes argmax
            return labels_from_outputs(self._forward(x, self._int_name))
        y = self._forward(x, self._out_name)
        return (y[:, 0] if y.shape[1] == 1 else y).astype(np.int64)

    def _run_int(self, x):
        return self._forward(x, self._int_name).astype(np.int64)
