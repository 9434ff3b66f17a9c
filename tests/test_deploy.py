"""deploy/: numpy-only board runtime, FINN's IODMA packing, the pynq driver (against a fake board
that reads the buffers with FINN's own unpacking), the validate CLI, packaging and bad input."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.deploy_helpers import board_package, estimate_build

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
FORBIDDEN = ("torch", "finn", "qonnx", "brevitas", "onnx", "onnxruntime", "train", "hw_build",
             "export", "scipy")

# every non-board package made unimportable, then run a module as __main__
BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %r:
            raise ImportError("blocked on the board: " + name)
        return None
sys.meta_path.insert(0, Blocker())
""" % (FORBIDDEN,)
BLOCKED_RUN = BLOCKER + """
import runpy
sys.argv = [%r] + sys.argv[1:]
runpy.run_module(%r, run_name="__main__", alter_sys=True)
"""


def run_blocked(module: str, args: list[str], cwd: Path, extra_path: Path | None = None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(extra_path or cwd)
    code = BLOCKED_RUN % (module, module)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def pkg(work, mnist_dir):
    return board_package(work, mnist_dir)


# ------------------------------------------------------------------ numpy-only, Python 3.10


def test_board_runtime_is_numpy_only_and_py310():
    for f in sorted(DEPLOY.glob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f), feature_version=(3, 10))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if f.name == "package.py" and top in ("train", "hw_build"):
                    continue  # the host-only packager, imported lazily inside functions
                assert top not in FORBIDDEN, f"{f.name} imports {m}"
    code = "import deploy.sim, deploy.validate, deploy.pynq_driver, deploy.bundle, " \
           "deploy.packing, deploy.package, deploy.golden, deploy.accelerator; print('ok')"
    r = subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_popcount_fallback_for_old_numpy(monkeypatch):
    """PYNQ images ship numpy 1.2x (no np.bitwise_count): the byte-table popcount is exact."""
    import deploy.sim as S

    a = np.random.default_rng(0).integers(0, 2**63, (50, 7), dtype=np.uint64)
    want = np.array([[bin(int(v)).count("1") for v in row] for row in a])
    monkeypatch.setattr(S, "_HAS_BITCOUNT", False)
    np.testing.assert_array_equal(S._popcount64(a), want)


# ------------------------------------------------------------------ packing vs FINN


def test_packing_matches_finn_data_packing():
    pytest.importorskip("finn")
    from hw_build.finn_env import ensure_finn

    ensure_finn()
    from finn.util.data_packing import finnpy_to_packed_bytearray, packed_bytearray_to_finnpy
    from qonnx.core.datatype import DataType
    from qonnx.util.basic import gen_finn_dt_tensor

    from deploy.packing import pack, packed_width, unpack

    for name in ("UINT8", "INT8", "BINARY", "BIPOLAR", "UINT4", "INT3", "UINT9", "INT16",
                 "UINT16", "INT19", "INT32"):
        dt = DataType[name]
        for shape in ((2, 784, 1), (3, 49, 16), (2, 5, 7), (1, 1, 1), (4, 1, 10)):
            x = gen_finn_dt_tensor(dt, shape)
            ref = np.asarray(finnpy_to_packed_bytearray(x, dt, reverse_inner=True,
                                                        reverse_endian=True))
            mine = pack(x.astype(np.int64), name)
            np.testing.assert_array_equal(mine, ref, err_msg=f"pack {name} {shape}")
            assert mine.shape[-1] == packed_width(shape[-1], name)
            back = packed_bytearray_to_finnpy(np.ascontiguousarray(ref), dt, shape,
                                              reverse_inner=True, reverse_endian=True)
            np.testing.assert_array_equal(unpack(mine, name, shape[-1]),
                                          back.astype(np.int64), err_msg=f"unpack {name}")
    # uint8 images go out as they are (one byte per pixel, no reordering)
    img = np.arange(784, dtype=np.int64).reshape(1, 784, 1) % 256
    assert np.array_equal(pack(img.astype(np.uint8), "UINT8").reshape(-1), img.reshape(-1))


# ------------------------------------------------------------------ fake PYNQ board


class _Buf(np.ndarray):
    def flush(self):
        pass

    def invalidate(self):
        pass


class _FakeBoard:
    """pynq stand-in: two IODMAs whose 'hardware' reads the input buffer with FINN's own
    unpacking, runs the golden model and writes the output with FINN's own packing."""

    def __init__(self, golden_path):
        from deploy.sim import SimAccelerator

        self.sim = SimAccelerator(golden_path)
        self.mem: dict[int, _Buf] = {}
        self.next_addr = 0x1000_0000
        board = self

        class DMA:
            def __init__(self, kind):
                self.kind, self.regs = kind, {0x00: 0x4}

            def write(self, off, val):
                self.regs[off] = val
                if off == 0x00 and val == 1:
                    self.regs[0x00] = 0x1
                    if self.kind == "in":
                        board.run()

            def read(self, off):
                return self.regs.get(off, 0)

        self.idma, self.odma = DMA("in"), DMA("out")

        class Overlay:
            def __init__(s, bitfile, download=True):
                board.loaded = bitfile
                s.idma0, s.odma0 = board.idma, board.odma

        class Clocks:
            fclk0_mhz = 50.0

        def allocate(shape, dtype, cacheable=True, target=None):
            buf = np.zeros(shape, dtype).view(_Buf)
            buf.device_address = self.next_addr
            self.mem[self.next_addr] = buf
            self.next_addr += 1 << 24
            return buf

        self.Overlay, self.Clocks, self.allocate = Overlay, Clocks, allocate

    def run(self):
        from finn.util.data_packing import finnpy_to_packed_bytearray, packed_bytearray_to_finnpy
        from qonnx.core.datatype import DataType

        io = self.sim.meta["io"]
        ibuf = self.mem[self.idma.regs[0x10] | (self.idma.regs[0x14] << 32)]
        obuf = self.mem[self.odma.regs[0x10] | (self.odma.regs[0x14] << 32)]
        n = self.idma.regs[0x1C]
        assert self.odma.regs[0x1C] == n
        fold = (n,) + tuple(io["ishape_folded"][0][1:])
        x = packed_bytearray_to_finnpy(np.ascontiguousarray(ibuf[:n]), DataType[io["idt"][0]],
                                       fold, reverse_inner=True, reverse_endian=True)
        y = self.sim._forward(x.reshape(n, -1).astype(np.uint8), self.sim._out_name)
        ofold = (n,) + tuple(io["oshape_folded"][0][1:])
        obuf[:n] = finnpy_to_packed_bytearray(y.reshape(ofold).astype(np.float32),
                                              DataType[io["odt"][0]], reverse_inner=True,
                                              reverse_endian=True)
        self.odma.regs[0x00] = 0x6  # done + idle
        self.idma.regs[0x00] = 0x6

    def install(self, monkeypatch):
        import types

        mod, ps = types.ModuleType("pynq"), types.ModuleType("pynq.ps")
        mod.Overlay, mod.allocate, ps.Clocks, mod.ps = self.Overlay, self.allocate, \
            self.Clocks, ps
        monkeypatch.setitem(sys.modules, "pynq", mod)
        monkeypatch.setitem(sys.modules, "pynq.ps", ps)


def _fake_bitfile(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "accel.bit").write_bytes(b"\x00bitstream")
    (d / "accel.hwh").write_text("<hwh/>")
    return d / "accel.bit"


@pytest.mark.finn  # the package comes from a real FINN build
def test_pynq_driver_on_fake_board(pkg, tmp_path, monkeypatch):
    pytest.importorskip("finn")
    from deploy.accelerator import AcceleratorInputError
    from deploy.bundle import open_package
    from deploy.pynq_driver import BoardError, PynqAccelerator

    bp = open_package(pkg)
    x, _ = bp.test_set("mnist", 300)
    board = _FakeBoard(bp.golden_path)
    board.install(monkeypatch)
    acc = PynqAccelerator(_fake_bitfile(tmp_path), bp.golden_path, batch_size=128,
                          build_id=bp.build_id)
    assert board.Clocks.fclk0_mhz == 100.0   # set from the build's clock, not left at 50
    io = board.sim.meta["io"]   # folded as the build folded the first layer (SIMD)
    assert acc.ibuf.shape == (128,) + tuple(io["ishape_packed"][0][1:])
    assert int(np.prod(acc.ibuf.shape[1:])) == 784 and acc.obuf.shape == (128, 1, 1)
    want = board.sim.execute(x[:128])
    np.testing.assert_array_equal(acc.execute(x[:128]), want)
    np.testing.assert_array_equal(acc.execute(x[:5].reshape(5, 28, 28)), want[:5])
    with pytest.raises(AcceleratorInputError, match="exceeds the allocated buffers"):
        acc.execute(x[:129])
    # wrong-sized arrays and counts on every public entry point: one-line errors
    for call, msg in ((lambda: acc.pack_input(x[:3, :700]), r"input shape \(3, 700\), expected \(N, 784\)"),
                      (lambda: acc.pack_input(x[:3].astype(np.int16)), "dtype int16"),
                      (lambda: acc.unpack_output(np.zeros((2, 5), np.uint8)), r"output buffer uint8 \(2, 5\)"),
                      (lambda: acc.unpack_output([1, 2]), "output buffer list"),
                      (lambda: acc.execute_on_buffers(0), "images 0: expected a whole number >= 1"),
                      (lambda: acc.execute_on_buffers(129), "exceeds the allocated buffers"),
                      (lambda: setattr(acc, "batch_size", 2.5), "batch_size 2.5: expected a whole number")):
        with pytest.raises(AcceleratorInputError, match=msg) as e:
            call()
        assert "\n" not in str(e.value)
    acc.batch_size = 300
    np.testing.assert_array_equal(acc.execute(x), board.sim.execute(x))
    with pytest.raises(BoardError, match="labels only"):
        acc.execute_int(x[:2])
    tt = acc.throughput_test()
    for key in ("runtime[ms]", "throughput[images/s]", "DRAM_in_bandwidth[MB/s]",
                "DRAM_out_bandwidth[MB/s]", "fclk[mhz]", "batch_size", "pack_input[ms]"):
        assert key in tt
    assert tt["fclk[mhz]"] == 100.0 and tt["batch_size"] == 300


@pytest.mark.finn  # the package comes from a real FINN build
def test_pynq_backend_errors(pkg, tmp_path, monkeypatch):
    from deploy.bundle import open_package
    from deploy.golden import GoldenError
    from deploy.pynq_driver import BoardError, PynqAccelerator

    bp = open_package(pkg)
    with pytest.raises(BoardError, match="no bitfile"):
        PynqAccelerator(None, bp.golden_path)
    with pytest.raises(BoardError, match="bitfile not found"):
        PynqAccelerator(tmp_path / "x.bit", bp.golden_path)
    bit = _fake_bitfile(tmp_path / "b")
    (tmp_path / "b" / "accel.hwh").unlink()
    with pytest.raises(BoardError, match=r"accel.hwh: hardware handoff file not found"):
        PynqAccelerator(bit, bp.golden_path)
    bit = _fake_bitfile(tmp_path / "c")
    with pytest.raises(GoldenError, match="golden model of build .* from build 0123"):
        PynqAccelerator(bit, bp.golden_path, build_id="0123456789abcdef")
    monkeypatch.setitem(sys.modules, "pynq", None)   # not installed
    with pytest.raises(BoardError, match="needs the `pynq` package"):
        PynqAccelerator(bit, bp.golden_path, build_id=bp.build_id)


# ------------------------------------------------------------------ package + validate CLI


@pytest.mark.finn  # the package comes from a real FINN build
def test_package_contents(pkg, work, mnist_dir):
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["bitfile"] is None and m["backend"] == "sim" and m["n_test"] == 10000
    assert m["model"] == "B-16N,12N,QN" and m["dataset"] == "mnist" and m["fclk_mhz"] == 100.0
    assert "sim backend only: no bitfile" in (pkg / "README.md").read_text()
    assert "scp resbin-mnist-" in (pkg / "README.md").read_text()
    assert not (pkg / "deploy" / "package.py").exists()
    assert (pkg / "notebooks" / "resbin_pynq_z2.ipynb").is_file()
    x = np.load(pkg / "data" / "mnist_test_x.npy")
    assert x.dtype == np.uint8 and x.shape == (10000, 784)
    z = zipfile.ZipFile(pkg.parent / f"{pkg.name}.zip")
    names = set(z.namelist())
    assert f"{pkg.name}/golden.npz" in names and f"{pkg.name}/deploy/sim.py" in names
    # same build, same package bytes
    from deploy.package import build_package

    again = build_package(estimate_build(work, mnist_dir), "mnist", work / "dist2",
                          data_dir=mnist_dir)
    assert (again.parent / f"{pkg.name}.zip").read_bytes() == \
        (pkg.parent / f"{pkg.name}.zip").read_bytes()


@pytest.mark.finn  # the package comes from a real FINN build
def test_package_with_bitfile(work, mnist_dir, tmp_path):
    from deploy.package import build_package

    build = tmp_path / "build"
    shutil.copytree(estimate_build(work, mnist_dir), build)
    _fake_bitfile(build / "bitfile")
    p = build_package(build, "mnist", tmp_path / "dist", name="withbit", data_dir=mnist_dir,
                      make_zip=False)
    m = json.loads((p / "manifest.json").read_text())
    assert m["bitfile"] == "bitfile/accel.bit" and m["hwh"] == "bitfile/accel.hwh"
    assert m["backend"] == "pynq" and "bitfile/accel.bit" in m["sha256"]
    assert "Bitfile included" in (p / "README.md").read_text()
    # a bitfile swapped for another build's is refused before the board is touched
    (p / "bitfile" / "accel.bit").write_bytes(b"other build")
    r = run_blocked("deploy.validate", ["--backend", "pynq", "--limit", "10"], cwd=p)
    assert r.returncode == 2 and "not the file of build" in r.stderr


@pytest.mark.finn  # the package comes from a real FINN build
def test_validate_cli_end_to_end(pkg, tmp_path):
    """The package's own deploy/ copy, with torch/FINN/qonnx unimportable, on 2,000 images."""
    out = tmp_path / "res.json"
    r = run_blocked("deploy.validate", ["--dataset", "mnist", "--backend", "sim", "--batch",
                                        "500", "--limit", "2000", "--out", str(out)], cwd=pkg)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    from deploy.sim import SimAccelerator

    x = np.load(pkg / "data" / "mnist_test_x.npy")[:2000]
    y = np.load(pkg / "data" / "mnist_test_y.npy")[:2000]
    pred = SimAccelerator(pkg / "golden.npz").execute(x)
    assert res["accuracy"] == float((pred == y).mean()) and res["n_images"] == 2000
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 2000 and np.trace(cm) == res["correct"]
    assert res["images_per_s"] > 0 and res["batch_latency_ms"]["median"] > 0
    assert "accuracy" in r.stdout and "confusion matrix" in r.stdout


def _cli_error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.finn  # the package comes from a real FINN build
def test_validate_cli_bad_inputs(pkg, tmp_path):
    # no bitfile, backend pynq
    assert "no bitfile" in _cli_error(run_blocked("deploy.validate", ["--backend", "pynq"],
                                                  cwd=pkg))
    # a test set the package does not have
    assert "cifar10_test_x.npy: test set not found" in _cli_error(
        run_blocked("deploy.validate", ["--dataset", "cifar10"], cwd=pkg))
    # not a package
    assert "manifest.json: not found" in _cli_error(
        run_blocked("deploy.validate", ["--package", str(tmp_path)], cwd=pkg))
    # a golden model from another build
    other = tmp_path / "pkg"
    shutil.copytree(pkg, other)
    with np.load(other / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(str(arrays["graph"]))
    doc["meta"]["build_id"] = "feedfacefeedface"
    arrays["graph"] = np.array(json.dumps(doc))
    np.savez_compressed(other / "golden.npz", **arrays)
    msg = _cli_error(run_blocked("deploy.validate", ["--limit", "10"], cwd=other))
    assert "golden model of build feedfacefeedface" in msg
    assert "--batch 0 must be >= 1" in _cli_error(run_blocked("deploy.validate", [
        "--batch", "0"], cwd=pkg))


@pytest.mark.finn  # the package comes from a real FINN build
def test_accelerator_input_checks(pkg):
    from deploy.accelerator import AcceleratorInputError
    from deploy.sim import SimAccelerator

    x = np.load(pkg / "data" / "mnist_test_x.npy")[:20]
    sim = SimAccelerator(pkg / "golden.npz", batch_size=16)
    want = sim.execute(x[:16])
    np.testing.assert_array_equal(sim.execute(x[:16].reshape(16, 28, 28)), want)
    np.testing.assert_array_equal(sim.execute(x[:16].reshape(16, 28, 28, 1)), want)
    bad = [(x[:4].astype(np.float32), "dtype float32, expected uint8"),
           (x[:4, :783], r"shape \(4, 783\), expected \(N, 784\)"),
           (x[0], r"shape \(784,\)"),
           (x[:0], "no images"),
           (x[:17], "17 images exceeds the allocated buffers"),
           (list(x[:2]), "numpy uint8 array")]
    for arr, msg in bad:
        with pytest.raises(AcceleratorInputError, match=msg):
            sim.execute(arr)
    for kw, msg in ((dict(batch_size="8"), "batch_size '8'"), (dict(batch_size=0), "batch_size 0"),
                    (dict(chunk=-1), "chunk -1")):
        with pytest.raises(AcceleratorInputError, match=msg):
            SimAccelerator(pkg / "golden.npz", **kw)
    with pytest.raises(AcceleratorInputError, match=r"input shape \(2, 28, 29\)"):
        sim.execute(np.zeros((2, 28, 29), np.uint8))


def test_package_cli_bad_inputs(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "deploy.package", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    assert "hardware build folder not found" in _cli_error(cli("--build", str(tmp_path / "no")))
    (tmp_path / "b").mkdir()
    assert "b/hw/Pynq-Z2-auto: no build for Pynq-Z2 at auto (this run has no build)" in \
        _cli_error(cli("--build", str(tmp_path / "b")))
    assert "unknown board" in _cli_error(cli("--build", str(tmp_path / "b"), "--board", "Nope")).lower()
    assert "expected a number" in cli("--build", str(tmp_path / "b"), "--target-fps", "fast").stderr


@pytest.mark.finn  # the package comes from a real FINN build
def test_package_failure_leaves_nothing(pkg, tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy2(pkg / "golden.npz", build / "golden.npz")
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "deploy.package", "--build", str(build), "--allow-no-fit",
                        "--out", str(tmp_path / "dist"), "--data-dir", str(tmp_path / "empty")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "test set 'mnist'" in _cli_error(r)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
