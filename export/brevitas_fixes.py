"""The ONE place with workarounds for Brevitas bugs that change what ResBin exports.

Brevitas 0.13.4 exports every 1-bit quantizer as QONNX `BipolarQuant` (sign, values {-1, +1}),
an *unsigned* 1-bit one (values {0, 1}) too: `BrevitasQuantProxyHandler.prepare_for_export`
chooses `BrevitasBinaryQuantOp` on `bit_width == 1` alone. ResBin's input quantizer is unsigned,
so with `--input-bits 1` the exported model computed sign(x) where PyTorch computes
clamp(round(x / s), 0, 1) * s: QONNX differed from PyTorch on 500 of 500 MNIST test images.
The fix exports such a quantizer as a plain `Quant(bitwidth=1, signed=0, narrow=0)`, which is
exactly what Brevitas computes. Upstream note: docs/upstream/brevitas-unsigned-1bit-export.md.
"""
from __future__ import annotations

import contextlib


class BrevitasCompatError(RuntimeError):
    """The installed Brevitas no longer has the internals this module patches."""


def _handler_module():
    from brevitas.export.onnx.qonnx import handler

    for name in ("BrevitasQuantProxyHandler", "BrevitasQuantOp", "BrevitasBinaryQuantOp"):
        if not hasattr(handler, name):
            raise BrevitasCompatError(f"brevitas.export.onnx.qonnx.handler.{name} is gone: "
                                      "update export/brevitas_fixes.py for this Brevitas version")
    return handler


@contextlib.contextmanager
def unsigned_binary_quant_export():
    """While active, unsigned 1-bit activation quantizers export as Quant, not BipolarQuant."""
    h = _handler_module()
    cls = h.BrevitasQuantProxyHandler
    original = cls.prepare_for_export

    def prepare_for_export(self, module):
        original(self, module)
        kw = getattr(self, "symbolic_kwargs", None)
        if kw and int(kw["bit_width"]) == 1 and not bool(kw["signed"]):
            self.quant_op = h.BrevitasQuantOp

    cls.prepare_for_export = prepare_for_export
    try:
        yield
    finally:
        cls.prepare_for_export = original
