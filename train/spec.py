"""The thesis's model notation (`B-D128N,D88N,PN,D`), its two-list encoding and the variant enumeration.

Notation (thesis sec. 5.5.2): `M-<layer>,...[,A[N]][,D]`; `M` is `B` (binary) or `F` (float), a
layer is `[D]<width>[N]` (dropout before, batch-norm after), `A` is the shortcut `P`, `F` or `Q`
(`N` after it: batch-norm on the shortcut), a trailing `D` is the dropout before the output layer.

Encoding (thesis sec. 5.5.1): widths `[in, h1, h2, h3, h4, out]` (unused hidden slots 0, no zero
between used ones) and configuration bits `[N, P, F, Q, D1, N1, D2, N2, D3, N3, D4, N4, D]`.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

from train.shortcuts import LETTERS, get_shortcut

MAX_HIDDEN = 4  # the thesis's generator: "de una a cuatro capas ocultas" (sec. 5.5.1)
# Widest hidden layer: one 4096 x 4096 binary layer (16.8 Mbit of weights) already exceeds the
# on-chip memory of every board hw_build knows; wider ones only fail later, in the allocator.
MAX_WIDTH = 4096
SHORTCUTS = LETTERS  # in the thesis's bit order [N, P, F, Q, ...] (train.shortcuts)
KINDS = ("B", "F")
EXAMPLE = "B-D128N,D88N,PN,D"

_LAYER_RE = re.compile(r"(D?)(\d+)(N?)")
_SHORTCUT_RE = re.compile(f"([{''.join(LETTERS)}])(N?)")


class SpecError(ValueError):
    """A malformed model name, encoding or spec; the message is one line naming the culprit."""


def _flag(x) -> bool:
    if isinstance(x, bool):
        return x
    if isinstance(x, int) and x in (0, 1):
        return bool(x)
    raise SpecError(f"flag must be a bool or 0/1, got {x!r}")


@dataclass(frozen=True)
class ModelSpec:
    """One binary residual MLP (or float MLP) of the thesis's family, independent of the data set."""

    kind: str
    widths: tuple[int, ...]
    dropout: tuple[bool, ...]
    batchnorm: tuple[bool, ...]
    shortcut: str | None = None
    shortcut_bn: bool = False
    final_dropout: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SpecError(f"model kind must be 'B' (binary) or 'F' (float), got {self.kind!r}")
        widths = tuple(self.widths)
        if not 1 <= len(widths) <= MAX_HIDDEN:
            raise SpecError(f"a model has 1 to {MAX_HIDDEN} hidden layers, got {len(widths)} (widths {list(widths)})")
        for i, w in enumerate(widths, 1):
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise SpecError(f"hidden width {i} must be an integer >= 1, got {w!r}")
            if w > MAX_WIDTH:
                raise SpecError(f"hidden width {i} is {w}; at most {MAX_WIDTH}")
        for field in ("dropout", "batchnorm"):
            flags = tuple(getattr(self, field))
            if len(flags) != len(widths):
                raise SpecError(f"{field} has {len(flags)} flags for {len(widths)} hidden layers")
            object.__setattr__(self, field, tuple(_flag(f) for f in flags))
        object.__setattr__(self, "widths", widths)
        if self.shortcut not in (None, *SHORTCUTS):
            raise SpecError(f"shortcut must be None, 'P', 'F' or 'Q', got {self.shortcut!r}")
        object.__setattr__(self, "shortcut_bn", _flag(self.shortcut_bn))
        object.__setattr__(self, "final_dropout", _flag(self.final_dropout))
        if self.shortcut_bn and self.shortcut is None:
            raise SpecError("shortcut batch-norm (N) needs a shortcut (P, F or Q)")

    # --- notation -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, name: str) -> ModelSpec:
        """Parse the thesis notation; errors name the bad token and its character offset in `name`."""
        if not isinstance(name, str):
            raise SpecError(f"model name must be a string, got {type(name).__name__}")
        text = name.strip()
        if not text:
            raise SpecError(f"empty model name (expected e.g. {EXAMPLE!r})")
        kind, sep, body = text.partition("-")
        if not sep or kind not in KINDS:
            raise SpecError(f"model name {text!r} must start with 'B-' (binary) or 'F-' (float), e.g. {EXAMPLE!r}")
        widths: list[int] = []
        dropout: list[bool] = []
        batchnorm: list[bool] = []
        shortcut, shortcut_bn, final_dropout = None, False, False
        pos = len(kind) + 1
        for tok in body.split(","):
            where = f"at position {pos} in {text!r}"
            m_layer = _LAYER_RE.fullmatch(tok)
            m_short = _SHORTCUT_RE.fullmatch(tok)
            if final_dropout:
                raise SpecError(f"token {tok!r} {where} follows the final dropout 'D', which must be the last token")
            if m_layer:
                digits = m_layer.group(2)
                if shortcut is not None:
                    raise SpecError(f"layer token {tok!r} {where} follows the shortcut {shortcut!r}; "
                                    "the shortcut comes after all hidden layers (only a final D may follow it)")
                if len(digits) > len(str(MAX_WIDTH)) + 1 or int(digits) > MAX_WIDTH:  # no int() of 5000 digits
                    short = tok if len(tok) <= 24 else f"{tok[:12]}... ({len(digits)} digits)"
                    raise SpecError(f"hidden width {short!r} of layer {len(widths) + 1} is too wide; "
                                    f"at most {MAX_WIDTH}")
                if int(digits) < 1:
                    raise SpecError(f"hidden width must be >= 1, got {tok!r} {where}")
                if digits != str(int(digits)):
                    raise SpecError(f"width with a leading zero in {tok!r} {where}")
                if len(widths) == MAX_HIDDEN:
                    raise SpecError(f"too many hidden layers: token {tok!r} {where} is layer {MAX_HIDDEN + 1}; "
                                    f"at most {MAX_HIDDEN}")
                widths.append(int(digits))
                dropout.append(m_layer.group(1) == "D")
                batchnorm.append(m_layer.group(3) == "N")
            elif m_short:
                if not widths:
                    raise SpecError(f"shortcut {tok!r} {where} comes before any hidden layer")
                if shortcut is not None:
                    raise SpecError(f"second shortcut {tok!r} {where}; a model has at most one shortcut")
                shortcut, shortcut_bn = m_short.group(1), m_short.group(2) == "N"
            elif tok == "N":
                # The thesis's general form writes the shortcut's N as its own token ("A, N"); accept
                # that right after the shortcut letter, canonical output is "PN".
                if shortcut is None:
                    raise SpecError(f"batch-norm 'N' {where} without a shortcut; write it after the shortcut "
                                    f"letter ({', '.join(k + 'N' for k in LETTERS[:-1])} or {LETTERS[-1]}N) or after a "
                                    "width (128N)")
                if shortcut_bn:
                    raise SpecError(f"second shortcut batch-norm 'N' {where}")
                shortcut_bn = True
            elif tok == "D":
                if not widths:
                    raise SpecError(f"final dropout 'D' {where} comes before any hidden layer")
                final_dropout = True
            elif tok == "":
                raise SpecError(f"empty token {where} (stray or doubled comma)")
            else:
                raise SpecError(f"unknown layer token {tok!r} {where}; expected [D]<width>[N], "
                                f"a shortcut {'|'.join(LETTERS)}[N] or a final D")
            pos += len(tok) + 1
        if not widths:
            raise SpecError(f"no hidden layer in {text!r} (expected e.g. {EXAMPLE!r})")
        return cls(kind, tuple(widths), tuple(dropout), tuple(batchnorm), shortcut, shortcut_bn, final_dropout)

    @property
    def name(self) -> str:
        """Canonical thesis notation, e.g. `B-D128N,D88N,PN,D`."""
        toks = [f"{'D' if d else ''}{w}{'N' if n else ''}"
                for w, d, n in zip(self.widths, self.dropout, self.batchnorm)]
        if self.shortcut:
            toks.append(self.shortcut + ("N" if self.shortcut_bn else ""))
        if self.final_dropout:
            toks.append("D")
        return f"{self.kind}-{','.join(toks)}"

    def __str__(self) -> str:
        return self.name

    @property
    def slug(self) -> str:
        """Filesystem-safe, reversible form of the name: commas become underscores."""
        return self.name.replace(",", "_")

    @classmethod
    def from_slug(cls, slug: str) -> ModelSpec:
        if "," in slug:
            raise SpecError(f"slug {slug!r} contains a comma; slugs separate tokens with '_'")
        return cls.parse(slug.replace("_", ","))

    # --- properties -----------------------------------------------------------------------------
    @property
    def n_hidden(self) -> int:
        return len(self.widths)

    @property
    def binary(self) -> bool:
        return self.kind == "B"

    @property
    def fpga_able(self) -> bool:
        """Binary, and a shortcut (if any) that the accelerator can take (train.shortcuts)."""
        return self.binary and (self.shortcut is None or get_shortcut(self.shortcut).fpga)

    def float_baseline(self) -> ModelSpec:
        """The thesis's reference model: `F-<same widths>` without additions."""
        n = self.n_hidden
        return ModelSpec("F", self.widths, (False,) * n, (False,) * n)

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, n_in: int, n_out: int) -> tuple[list[int], list[int]]:
        """The thesis's two lists: widths `[in,h1,h2,h3,h4,out]` and bits `[N,P,F,Q,D1,N1,...,D4,N4,D]`."""
        for what, v in (("input width", n_in), ("output width", n_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"{what} must be an integer >= 1, got {v!r}")
        widths6 = [n_in, *self.widths, *[0] * (MAX_HIDDEN - self.n_hidden), n_out]
        bits = [int(self.shortcut_bn)] + [int(self.shortcut == s) for s in SHORTCUTS]
        for i in range(MAX_HIDDEN):
            used = i < self.n_hidden
            bits += [int(used and self.dropout[i]), int(used and self.batchnorm[i])]
        bits.append(int(self.final_dropout))
        return widths6, bits

    @classmethod
    def decode(cls, widths6, bits13, kind: str = "B") -> ModelSpec:
        """Inverse of `encode`. `bits13` may also be the short form of 5 + 2*L bits for L hidden layers."""
        widths6 = list(widths6)
        if len(widths6) != 6:
            raise SpecError(f"widths list must have 6 elements [in,h1,h2,h3,h4,out], got {len(widths6)}: {widths6}")
        for v in widths6:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"widths list must hold integers >= 0, got {v!r} in {widths6}")
        if widths6[0] < 1 or widths6[5] < 1:
            raise SpecError(f"input and output widths must be >= 1 in {widths6}")
        hidden = widths6[1:5]
        n = sum(1 for w in hidden if w)
        if n == 0:
            raise SpecError(f"no hidden layer in widths {widths6}")
        if any(w == 0 for w in hidden[:n]):
            raise SpecError(f"zero between hidden widths in {widths6}; unused slots must all be at the end")
        bits = list(bits13)
        if len(bits) == 5 + 2 * n:
            bits = bits[:-1] + [0] * (2 * (MAX_HIDDEN - n)) + bits[-1:]
        if len(bits) != 13:
            raise SpecError(f"configuration bits must have 13 elements [N,P,F,Q,D1,N1,...,D4,N4,D] "
                            f"(or {5 + 2 * n} for {n} hidden layers), got {len(bits)}: {list(bits13)}")
        if any(isinstance(b, bool) or b not in (0, 1) for b in bits):
            raise SpecError(f"configuration bits must be 0 or 1, got {list(bits13)}")
        flags = [s for s, b in zip(SHORTCUTS, bits[1:4]) if b]
        if len(flags) > 1:
            raise SpecError(f"more than one shortcut ({'+'.join(flags)}) in bits {list(bits13)}")
        if bits[0] and not flags:
            raise SpecError(f"shortcut batch-norm N set without a shortcut in bits {list(bits13)}")
        unused = bits[4 + 2 * n:12]
        if any(unused):
            raise SpecError(f"bits {list(bits13)} set D/N for hidden layers beyond the {n} in {widths6}")
        return cls(kind, tuple(hidden[:n]), tuple(bool(b) for b in bits[4:4 + 2 * n:2]),
                   tuple(bool(b) for b in bits[5:5 + 2 * n:2]), flags[0] if flags else None,
                   bool(bits[0]), bool(bits[12]))


def parse_widths(widths) -> tuple[int, ...]:
    """'128,88' (or a sequence of ints) -> (128, 88); SpecError unless 1 to 4 widths >= 1."""
    if isinstance(widths, str):
        try:
            widths = [int(w) for w in widths.split(",")]
        except ValueError:
            raise SpecError(f"widths must be comma-separated integers, e.g. 128,88; got {widths!r}") from None
    widths = tuple(int(w) for w in widths)
    ModelSpec("B", widths, (False,) * len(widths), (False,) * len(widths))  # 1-4 layers, widths >= 1
    return widths


def enumerate_variants(widths, kind: str = "B") -> list[ModelSpec]:
    """All valid variants for the given hidden widths, in the thesis's generation order.

    Thesis sec. 5.5.1: "Estas arquitecturas se generan secuencialmente obteniendo una representación
    binaria del número de modelo, y utilizando este arreglo binario como variante a generar ... se
    omiten las combinaciones no válidas, como tener más de un tipo de atajo en una variante o capa de
    normalización N cuando no hay atajo." The list "puede tener hasta trece elementos dependiendo del
    número de capas", so for L layers the model number counts through the 5 + 2L bits
    [N, P, F, Q, D1, N1, ..., DL, NL, D] written most significant first (as `bin()` prints it): N is
    the most significant bit, the final D the least; D/N of absent layers are not counted (they are
    0 in the 13-bit encoding). This gives 7 * 2**(2L) * 2 = 56/224/896 valid variants for L = 1/2/3.
    """
    widths = parse_widths(widths)
    ModelSpec(kind, widths, (False,) * len(widths), (False,) * len(widths))  # validates kind
    n = len(widths)
    n_bits = 5 + 2 * n
    out = []
    for number in range(2 ** n_bits):
        bits = [int(c) for c in format(number, f"0{n_bits}b")]
        if sum(bits[1:4]) > 1 or (bits[0] and not any(bits[1:4])):
            continue
        out.append(ModelSpec.decode([1, *widths, *[0] * (MAX_HIDDEN - n), 1], bits, kind=kind))
    return out


def main_variants(argv=None) -> int:
    """`python -m train variants --widths 128,88 [--kind B] [--count] [--inputs N --outputs M]`."""
    from train.cli_types import positive_int

    p = argparse.ArgumentParser(prog="python -m train variants",
                                description="List the thesis's valid variants for given hidden widths, "
                                            "in its generation order, with their configuration bits.")
    p.add_argument("--widths", required=True, help="hidden widths, comma-separated (1 to 4), e.g. 128,88")
    p.add_argument("--kind", default="B", choices=KINDS, help="B binary (default) or F float")
    p.add_argument("--count", action="store_true", help="print only the number of variants")
    p.add_argument("--inputs", type=positive_int, help="input width: also print the widths list [in,h1..h4,out]")
    p.add_argument("--outputs", type=positive_int, help="output width (with --inputs)")
    args = p.parse_args(argv)
    try:
        variants = enumerate_variants(args.widths, args.kind)
        if (args.inputs is None) != (args.outputs is None):
            raise SpecError("--inputs and --outputs go together")
        if args.count:
            print(len(variants))
            return 0
        for spec in variants:
            if args.inputs is not None:
                w6, bits = spec.encode(args.inputs, args.outputs)
                print(f"{spec.name}\t{_fmt(bits)}\t{_fmt(w6)}")
            else:
                print(f"{spec.name}\t{_fmt(spec.encode(1, 1)[1])}")
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _fmt(xs) -> str:
    return "[" + ",".join(str(x) for x in xs) + "]"
