"""The thesis notation, encoding and enumeration (train/spec.py)."""
from __future__ import annotations

import pytest

from train.spec import ModelSpec, SpecError, enumerate_variants, main_variants

BRIEF_NAMES = ["F-128,88", "B-128,88", "B-D128N,D88N,PN", "B-D128N,D88N,D88N,PN,D", "B-32N,D16N,D8,Q,D",
               "B-256N,QN", "B-128N,PN,D", "B-128", "B-D128N,Q", "F-128", "F-128,88,88"]


@pytest.mark.parametrize("name", BRIEF_NAMES)
def test_brief_names_round_trip(name):
    spec = ModelSpec.parse(name)
    assert spec.name == str(spec) == name
    w6, bits = spec.encode(784, 10)
    assert ModelSpec.decode(w6, bits, kind=spec.kind) == spec
    assert ModelSpec.from_slug(spec.slug) == spec
    assert "," not in spec.slug


def test_parse_fields_and_encoding():
    spec = ModelSpec.parse("B-D128N,D88N,PN,D")
    assert spec == ModelSpec("B", (128, 88), (True, True), (True, True), "P", True, True)
    assert spec.slug == "B-D128N_D88N_PN_D"
    assert spec.encode(784, 10) == ([784, 128, 88, 0, 0, 10], [1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1])
    spec = ModelSpec.parse("B-32N,D16N,D8,Q,D")
    assert spec.encode(10000, 1) == ([10000, 32, 16, 8, 0, 1], [0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1])
    # the thesis's widths example [128,16,8,0,0,10]
    spec = ModelSpec.decode([128, 16, 8, 0, 0, 10], [0] * 13)
    assert spec.name == "B-16,8" and spec.n_hidden == 2
    # the short form of 5 + 2L bits ("hasta trece elementos dependiendo del número de capas")
    assert ModelSpec.decode([784, 128, 0, 0, 0, 10], [0, 0, 1, 0, 1, 0, 1], kind="F").name == "F-D128,F,D"
    # the thesis's general form writes the shortcut's N as its own token
    assert ModelSpec.parse("B-128,P,N").name == "B-128,PN"
    assert ModelSpec.parse(" B-1,2,3,4 ").n_hidden == 4


def test_properties():
    assert ModelSpec.parse("B-128,QN").fpga_able
    assert ModelSpec.parse("B-128,P").fpga_able
    assert not ModelSpec.parse("B-128,F").fpga_able
    assert not ModelSpec.parse("F-128").fpga_able
    assert ModelSpec.parse("F-128").binary is False
    assert ModelSpec.parse("B-D128N,D88N,PN,D").float_baseline().name == "F-128,88"


PARSE_ERRORS = [
    ("B-D128X", "unknown layer token 'D128X' at position 2 in 'B-D128X'; expected [D]<width>[N], "
                "a shortcut P|F|Q[N] or a final D"),
    ("", "empty model name (expected e.g. 'B-D128N,D88N,PN,D')"),
    ("   ", "empty model name (expected e.g. 'B-D128N,D88N,PN,D')"),
    ("X-128", "model name 'X-128' must start with 'B-' (binary) or 'F-' (float), e.g. 'B-D128N,D88N,PN,D'"),
    ("128,88", "model name '128,88' must start with 'B-' (binary) or 'F-' (float), e.g. 'B-D128N,D88N,PN,D'"),
    ("B-128,N", "batch-norm 'N' at position 6 in 'B-128,N' without a shortcut; write it after the shortcut "
                "letter (PN, FN or QN) or after a width (128N)"),
    ("B-1,2,3,4,5", "too many hidden layers: token '5' at position 10 in 'B-1,2,3,4,5' is layer 5; at most 4"),
    ("B-128,P,88", "layer token '88' at position 8 in 'B-128,P,88' follows the shortcut 'P'; the shortcut "
                   "comes after all hidden layers (only a final D may follow it)"),
    ("B-128,D,Q", "token 'Q' at position 8 in 'B-128,D,Q' follows the final dropout 'D', which must be the "
                  "last token"),
    ("B-128,P,Q", "second shortcut 'Q' at position 8 in 'B-128,P,Q'; a model has at most one shortcut"),
    ("B-0", "hidden width must be >= 1, got '0' at position 2 in 'B-0'"),
    ("B-128,D0N", "hidden width must be >= 1, got 'D0N' at position 6 in 'B-128,D0N'"),
    ("B-0128", "width with a leading zero in '0128' at position 2 in 'B-0128'"),
    ("B-P", "shortcut 'P' at position 2 in 'B-P' comes before any hidden layer"),
    ("B-", "empty token at position 2 in 'B-' (stray or doubled comma)"),
    ("B-128,,88", "empty token at position 6 in 'B-128,,88' (stray or doubled comma)"),
    ("B-128,PN,N", "second shortcut batch-norm 'N' at position 9 in 'B-128,PN,N'"),
]


@pytest.mark.parametrize("name,message", PARSE_ERRORS)
def test_parse_errors(name, message):
    with pytest.raises(SpecError) as e:
        ModelSpec.parse(name)
    assert str(e.value) == message
    assert "\n" not in message


def test_issue_error_example():
    with pytest.raises(ValueError, match=r"unknown layer token 'D128X' at position 2"):
        ModelSpec.parse("B-D128X")


@pytest.mark.parametrize("args,message", [
    (("B", (), (), ()), "a model has 1 to 4 hidden layers, got 0"),
    (("B", (1, 2, 3, 4, 5), (False,) * 5, (False,) * 5), "a model has 1 to 4 hidden layers, got 5"),
    (("B", (128, 0), (False,) * 2, (False,) * 2), "hidden width 2 must be an integer >= 1, got 0"),
    (("B", (128,), (False, True), (False,)), "dropout has 2 flags for 1 hidden layers"),
    (("B", (128,), (False,), ()), "batchnorm has 0 flags for 1 hidden layers"),
    (("B", (128,), (False,), (False,), "X"), "shortcut must be None, 'P', 'F' or 'Q', got 'X'"),
    (("B", (128,), (False,), (False,), None, True), "shortcut batch-norm (N) needs a shortcut (P, F or Q)"),
    (("Z", (128,), (False,), (False,)), "model kind must be 'B' (binary) or 'F' (float), got 'Z'"),
])
def test_construction_validation(args, message):
    with pytest.raises(SpecError) as e:
        ModelSpec(*args)
    assert str(e.value).startswith(message)


def test_construction_normalises_lists():
    spec = ModelSpec("B", [128, 88], [1, 0], [0, 1], "Q", 1, 0)
    assert spec.widths == (128, 88) and spec.dropout == (True, False) and spec.shortcut_bn is True
    assert spec.name == "B-D128,88N,QN"
    hash(spec)


@pytest.mark.parametrize("w6,bits,message", [
    ([784, 128, 0, 88, 0, 10], [0] * 13, "zero between hidden widths"),
    ([784, 0, 0, 0, 0, 10], [0] * 13, "no hidden layer"),
    ([784, 128, 0, 0, 0], [0] * 13, "widths list must have 6 elements"),
    ([0, 128, 0, 0, 0, 10], [0] * 13, "input and output widths must be >= 1"),
    ([784, 128, 0, 0, 0, 10], [0, 1, 1] + [0] * 10, "more than one shortcut (P+F)"),
    ([784, 128, 0, 0, 0, 10], [1] + [0] * 12, "shortcut batch-norm N set without a shortcut"),
    ([784, 128, 0, 0, 0, 10], [0] * 6 + [1] + [0] * 6, "set D/N for hidden layers beyond the 1"),
    ([784, 128, 0, 0, 0, 10], [0] * 12, "configuration bits must have 13 elements"),
    ([784, 128, 0, 0, 0, 10], [2] + [0] * 12, "configuration bits must be 0 or 1"),
])
def test_decode_errors(w6, bits, message):
    with pytest.raises(SpecError) as e:
        ModelSpec.decode(w6, bits)
    assert message in str(e.value)


def test_encode_and_slug_errors():
    with pytest.raises(SpecError, match="input width must be an integer >= 1, got 0"):
        ModelSpec.parse("B-128").encode(0, 10)
    with pytest.raises(SpecError, match="contains a comma"):
        ModelSpec.from_slug("B-128,88")


@pytest.mark.parametrize("widths,count", [((128,), 56), ((128, 88), 224), ((128, 88, 88), 896),
                                          ((8, 8, 8, 8), 3584)])
def test_enumeration_counts(widths, count):
    variants = enumerate_variants(widths)
    assert len(variants) == count == 7 * 2 ** (2 * len(widths)) * 2
    assert len(set(variants)) == count
    # thesis order: the model number (the bits [N,P,F,Q,D1,N1,..,DL,NL,D] read most significant
    # first) increases strictly along the list
    numbers = []
    for v in variants:
        bits = v.encode(1, 1)[1]
        short = bits[:4 + 2 * len(widths)] + bits[-1:]
        numbers.append(int("".join(map(str, short)), 2))
    assert numbers == sorted(numbers) and len(set(numbers)) == count


def test_enumeration_order_one_layer():
    names = [v.name for v in enumerate_variants([128])]
    assert names[:9] == ["B-128", "B-128,D", "B-128N", "B-128N,D", "B-D128", "B-D128,D", "B-D128N",
                         "B-D128N,D", "B-128,Q"]
    # groups of 8 by shortcut, in counting order of [N,P,F,Q]: none, Q, F, P, QN, FN, PN
    assert [names[i] for i in range(0, 56, 8)] == ["B-128", "B-128,Q", "B-128,F", "B-128,P", "B-128,QN",
                                                   "B-128,FN", "B-128,PN"]
    assert names[-3:] == ["B-D128,PN,D", "B-D128N,PN", "B-D128N,PN,D"]
    assert "B-128N,PN,D" in names and "B-D128N,Q" in names


def test_enumeration_order_three_layers_round_trip():
    variants = enumerate_variants("128,88,88")
    names = [v.name for v in variants]
    assert names[:5] == ["B-128,88,88", "B-128,88,88,D", "B-128,88,88N", "B-128,88,88N,D", "B-128,88,D88"]
    assert names[-3:] == ["B-D128N,D88N,D88,PN,D", "B-D128N,D88N,D88N,PN", "B-D128N,D88N,D88N,PN,D"]
    for spec in variants:
        assert ModelSpec.parse(spec.name) == spec
        assert ModelSpec.parse(spec.name).name == spec.name
        w6, bits = spec.encode(784, 10)
        assert w6 == [784, 128, 88, 88, 0, 10]
        assert ModelSpec.decode(w6, bits) == spec
        assert ModelSpec.from_slug(spec.slug) == spec
    assert "B-D128N,D88N,D88N,PN,D" in names  # the thesis's best 3-layer MNIST model


def test_enumeration_float_and_errors():
    assert all(v.kind == "F" for v in enumerate_variants([32], kind="F"))
    with pytest.raises(SpecError, match="1 to 4 hidden layers, got 5"):
        enumerate_variants([1, 2, 3, 4, 5])
    with pytest.raises(SpecError, match="comma-separated integers"):
        enumerate_variants("128,x")


def test_cli_variants(capsys):
    assert main_variants(["--widths", "128,88", "--count"]) == 0
    assert capsys.readouterr().out == "224\n"
    assert main_variants(["--widths", "128", "--inputs", "784", "--outputs", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 56
    assert lines[0] == "B-128\t[0,0,0,0,0,0,0,0,0,0,0,0,0]\t[784,128,0,0,0,10]"
    assert lines[-1] == "B-D128N,PN,D\t[1,1,0,0,1,1,0,0,0,0,0,0,1]\t[784,128,0,0,0,10]"
    assert main_variants(["--widths", "32", "--kind", "F"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "F-32,D\t[0,0,0,0,0,0,0,0,0,0,0,0,1]"
    assert main_variants(["--widths", "0"]) == 2
    assert capsys.readouterr().err == "error: hidden width 1 must be an integer >= 1, got 0\n"
