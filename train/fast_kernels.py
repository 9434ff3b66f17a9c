"""Fused elementwise steps of the fast training path, in C (`train/fast_kernels.c`), bit for bit torch's.

Why by hand: each step is 3-8 torch ops on small tensors whose per-call overhead, not their
arithmetic, dominates a small model's training step; torch has no fused CPU op for them and
`torch.compile` measured slower than eager here (docs/results/train-speed.md).

Every function has its torch op sequence (`_torch_*`), the reference: it runs where the C loops
do not apply (a tensor that is not a contiguous float32 CPU tensor, e.g. on a GPU) and the tests
compare the two with torch.equal on random and special values (tests/test_fast_train.py). The C
library is compiled once per machine with the C++ compiler (`$CXX`, default g++) into
`~/.cache/resbin` (or `$XDG_CACHE_HOME/resbin`), named by the hash of its source and the CPU.

`step_ops()` builds `train/fast_step.cpp` the same way (against this torch's headers): the fast
path's one-node training step in C++, which calls these loops directly.

Dropout draws torch's own random numbers: torch's CPU `bernoulli_` (on CPUs where it does not use
MKL: checked once per process, `serial_bernoulli`) is a serial loop over its MT19937 generator,
~13 ns an element here, the largest single cost of a batch-128 step; `rb_dropout_draw` reproduces
that stream from `torch.get_rng_state()` and sets the advanced state back, ~6x faster.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from train.run_state import TrainError

_SRC = Path(__file__).with_name("fast_kernels.c")
# -O3 -march=native: vectorized loops for this CPU; no fast-math, no contraction into fused
# multiply-adds: IEEE float32 operations as written (-fno-trapping-math only lets selects vectorize)
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-fast-math", "-fno-trapping-math", "-ffp-contract=off",
          "-x", "c++"]
_lib = None
_F32 = torch.float32


class KernelBuildError(TrainError):
    """The C loops could not be compiled (a one-line error of `python -m train`)."""


def _cache_dir() -> Path:
    """~/.cache/resbin (or $XDG_CACHE_HOME/resbin); a per-user temporary folder where that is not
    writable (e.g. a container's read-only home)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resbin"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    tmp = Path(tempfile.gettempdir()) / f"resbin-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def _cpu_id() -> str:
    """The CPU's feature flags (the loops are compiled for this CPU: -march=native)."""
    try:
        return next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compiled(src: Path, flags: list[str], what: str, *, sources: tuple[Path, ...] = (), link: tuple[str, ...] = ()) -> Path:
    """The shared library built from `src` with `flags` and `link` (cached by the hash of `src` and
    the `sources` it includes, the compiler, the flags and the CPU; concurrent builders write
    atomically)."""
    cxx = os.environ.get("CXX", "g++")
    digest = b"".join(p.read_bytes() for p in (src, *sources))
    tag = hashlib.sha256(digest + " ".join([cxx, platform.machine(), _cpu_id(), *flags, *link]).encode()).hexdigest()[:16]
    so = _cache_dir() / f"{src.stem}-{tag}.so"
    if not so.exists():
        if shutil.which(cxx) is None:
            raise KernelBuildError(f"the fast training path needs a C++ compiler ({cxx!r} not found; set CXX, "
                                   "or train with --trainer brevitas)")
        print(f"resbin: compiling {src.name} ({what}) for this machine, once", file=sys.stderr, flush=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
        os.close(fd)
        res = subprocess.run([cxx, *flags, str(src), "-o", tmp, *link], capture_output=True, text=True)
        if res.returncode != 0:
            os.unlink(tmp)
            errors = [ln for ln in res.stderr.splitlines() if "error" in ln] or res.stderr.strip().splitlines() or ["?"]
            raise KernelBuildError(f"compiling {src.name} ({what}) with {cxx} failed: {errors[0].strip()} "
                                   "(or train with --trainer brevitas)")
        os.replace(tmp, so)
    return so


def library() -> ctypes.CDLL:
    """The compiled loops (built on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    so = _compiled(_SRC, _FLAGS, "the fused loops")
    lib = ctypes.CDLL(str(so))
    P, F, N = ctypes.c_void_p, ctypes.c_float, ctypes.c_int64
    for name, args in {"rb_sign": [P, P, N], "rb_clamp_sign": [P, P, N], "rb_sign_backward": [P, P, P, P, N],
                       "rb_dropout": [P, P, F, P, N], "rb_input_quant": [P, F, F, F, F, P, N],
                       "rb_quant_forward": [P, P, F, F, F, P, P, P, P, N],
                       "rb_quant_backward": [P, P, F, P, P, P, P, P, P, N],
                       "rb_absmax": [P, P, N], "rb_add_at_absmax": [P, P, F, F, N],
                       "rb_dropout_draw": [P, ctypes.c_double, F, P, P, P, N]}.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = N if name == "rb_absmax" else None
    _lib = lib
    return lib


_STEP_SRC = Path(__file__).with_name("fast_step.cpp")
_step = None


def step_ops():
    """`torch.ops.resbin`: the one-node training step in C++ (`train/fast_step.cpp`, which includes
    the loops), compiled on first use against this torch's headers and libraries."""
    global _step
    if _step is None:
        # the two include folders and the lib folder of the wheel, as torch.utils.cpp_extension
        # finds them (importing that module pulls setuptools in for three paths)
        root = Path(torch.__file__).parent
        flags = [f for f in _FLAGS if f not in ("-x", "c++")] + [
            "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DRESBIN_TORCH={torch.__version__}", "-I", str(root / "include"),
            "-I", str(root / "include" / "torch" / "csrc" / "api" / "include")]
        lib = root / "lib"
        so = _compiled(_STEP_SRC, flags, "the one-node step", sources=(_SRC,),
                       link=("-L", str(lib), "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib}"))
        torch.ops.load_library(str(so))
        _step = torch.ops.resbin
    return _step


def loops_apply(*tensors) -> bool:
    """Whether the C loops apply: contiguous float32 CPU tensors (None: an absent operand)."""
    for t in tensors:
        if t is not None and not (t.is_cpu and t.dtype is _F32 and t.is_contiguous()):
            return False
    return True


def _p(t):
    return None if t is None else t.data_ptr()


# ---- the torch op sequences (reference; GPU) --------------------------------------------------

def _torch_sign(x):
    return torch.nan_to_num(x, nan=-1.0).sign_().add_(0.5).sign_()


def _torch_sign_backward(g, noise, x):
    if noise is not None:
        g = g * noise
    outside = torch.sign(torch.relu(x.abs() - 1.0)).nan_to_num_(0.0)  # 1 where |x| > 1
    return g * (1.0 - outside) + 0.0  # + 0.0: torch.where's +0.0, not -0.0


def _torch_quant_forward(x, b, s, lo, hi, with_mask):
    if b is not None:
        x = x + b
    y1 = x / s
    r = torch.round(y1)
    q = torch.clamp(r, lo, hi)
    m = torch.eq(r, q).logical_or_(torch.isnan(r)) if with_mask else None
    return q * s, y1, q, m


def _torch_quant_backward(g, noise, s, y1, q, m):
    if noise is not None:
        g = g * noise
    g_in = g * s
    if m is not None:
        g_in.mul_(m)
    return g_in / s, g * q, (y1 / s).mul_(g_in)


# ---- the steps ----------------------------------------------------------------------------------

def sign(x: torch.Tensor) -> torch.Tensor:
    """Brevitas' `binary_sign`: +1 where x >= 0 (also -0.0), else -1 (also NaN)."""
    if not loops_apply(x):
        return _torch_sign(x)
    y = torch.empty_like(x)
    library().rb_sign(_p(x), _p(y), x.numel())
    return y


def clamp_sign_(w: torch.Tensor) -> torch.Tensor:
    """Brevitas' binary weight: the latent weights clamped to [-1, 1] in place, and their sign."""
    if not loops_apply(w):
        with torch.no_grad():
            w.clamp_(-1.0, 1.0)
        return _torch_sign(w)
    y = torch.empty_like(w)
    library().rb_clamp_sign(_p(w), _p(y), w.numel())
    return y


def sign_backward(g: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sign activation's gradient (of `g * noise` if a dropout mask comes first): passed where
    -1 <= x <= 1 (or x is NaN), +0.0 elsewhere."""
    if not loops_apply(g, x, noise):
        return _torch_sign_backward(g, noise, x)
    out = torch.empty_like(x)
    library().rb_sign_backward(_p(g), _p(noise), _p(x), _p(out), x.numel())
    return out


def dropout(x: torch.Tensor, p: float):
    """nn.Dropout in training as aten's CPU dropout computes it, with the same random numbers:
    (y, noise). noise = bernoulli_(1 - p) / (1 - p), y = x * noise."""
    if loops_apply(x) and serial_bernoulli():
        noise, y = torch.empty_like(x), torch.empty_like(x)
        state = torch.get_rng_state()
        library().rb_dropout_draw(_p(state), 1 - p, 1 - p, _p(x), _p(noise), _p(y), x.numel())
        torch.set_rng_state(state)
        return y, noise
    noise = torch.empty_like(x).bernoulli_(1 - p)
    if not loops_apply(x):
        noise.div_(1 - p)
        return x * noise, noise
    y = torch.empty_like(x)
    library().rb_dropout(_p(x), _p(noise), 1 - p, _p(y), x.numel())
    return y, noise


_serial = None


def serial_bernoulli() -> bool:
    """Whether torch's CPU `bernoulli_` here is its serial MT19937 kernel, which `rb_dropout_draw`
    reproduces ~6x faster (not MKL's, which torch uses on Intel CPUs): checked once per process
    on 1000 draws, without consuming the generator's random numbers."""
    global _serial
    if _serial is None:
        saved = torch.get_rng_state()
        try:
            ref = torch.empty(1000).bernoulli_(0.8)
            after = torch.get_rng_state()
            state, x, noise, y = saved.clone(), torch.ones(1000), torch.empty(1000), torch.empty(1000)
            library().rb_dropout_draw(_p(state), 0.8, 0.8, _p(x), _p(noise), _p(y), 1000)
            _serial = torch.equal(noise != 0, ref != 0) and torch.equal(state, after)
        finally:
            torch.set_rng_state(saved)
    return _serial


def input_quant(x: torch.Tensor, div: float, s: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """clamp(round((x / div) / s), lo, hi) * s (Brevitas' input quantizer after the input scaling)."""
    if not loops_apply(x) or s.dtype != torch.float32:
        return torch.clamp(torch.round((x / div) / s), lo, hi) * s
    y = torch.empty_like(x)
    library().rb_input_quant(_p(x), div, float(s), lo, hi, _p(y), x.numel())
    return y


def quant_forward(x: torch.Tensor, s: float, lo: float, hi: float, ste_clamp: bool, b: torch.Tensor | None = None):
    """Brevitas' `IntQuant` (zero point 0) of x (or of x + b): clamp(round(x / s), lo, hi) * s.
    Returns (y, (y1, q, m)): what `quant_backward` needs; m is the clamp's gradient mask (None for
    a straight-through clamp)."""
    if not loops_apply(x, b):
        y, y1, q, m = _torch_quant_forward(x, b, s, lo, hi, not ste_clamp)
        return y, (y1, q, m)
    y, y1, q = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    m = None if ste_clamp else torch.empty_like(x)
    library().rb_quant_forward(_p(x), _p(b), s, lo, hi, _p(y), _p(y1), _p(q), _p(m), x.numel())
    return y, (y1, q, m)


def quant_backward(g: torch.Tensor, s: float, saved, noise: torch.Tensor | None = None):
    """The gradients autograd computes through Brevitas' div, round STE, clamp and mul (of
    `g * noise` if a dropout mask comes first): (of x, of the 0-dim scale s as a 0-dim tensor).
    mul's backward (g * q) and div's (-g * ((x / s) / s)), each summed to s's shape ();
    sum(-a) == -sum(a) exactly, so the second term is subtracted."""
    y1, q, m = saved
    if not loops_apply(g, noise, y1, q, m):
        gx, gq, t = _torch_quant_backward(g, noise, s, y1, q, m)
    else:
        gx, gq, t = torch.empty_like(y1), torch.empty_like(y1), torch.empty_like(y1)
        library().rb_quant_backward(_p(g), _p(noise), s, _p(y1), _p(q), _p(m), _p(gx), _p(gq), _p(t),
                                    y1.numel())
    return gx, gq.sum_to_size(()) - t.sum_to_size(())


def absmax(w: torch.Tensor):
    """(max |w| as a 0-dim tensor, how many elements reach it)."""
    if not loops_apply(w):
        aw = torch.abs(w)
        a = torch.max(aw)
        return a, int((aw == a).sum())
    a = torch.empty((), dtype=w.dtype)
    ties = library().rb_absmax(_p(w), _p(a), w.numel())
    return a, ties


def add_at_absmax_(gx: torch.Tensor, w: torch.Tensor, a: torch.Tensor, share: float) -> None:
    """max's backward (ties share the gradient) through abs: gx += sgn(w) * share where |w| == a."""
    if not loops_apply(gx, w):
        at = torch.nonzero((torch.abs(w) == a).view(-1)).view(-1)
        gx.view(-1).index_add_(0, at, w.view(-1)[at].sgn() * share)
        return
    library().rb_add_at_absmax(_p(gx), _p(w), float(a), share, w.numel())
