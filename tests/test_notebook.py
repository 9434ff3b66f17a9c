"""The PYNQ-Z2 notebook of the board package, executed headless (nbclient) on the sim backend."""
from __future__ import annotations

import json

import pytest

from tests.deploy_helpers import board_package


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook")


def test_notebook_is_current():
    """The committed notebook is what deploy/notebooks/make_notebook.py generates."""
    import importlib.util
    from pathlib import Path

    import nbformat

    here = Path(__file__).resolve().parent.parent / "deploy" / "notebooks"
    spec = importlib.util.spec_from_file_location("make_notebook", here / "make_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = nbformat.read(here / "resbin_pynq_z2.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in mod.build().cells]


@pytest.mark.finn  # the package comes from a real FINN build
def test_notebook_runs_on_sim_backend(work, mnist_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    pkg = board_package(work, mnist_dir)
    nb_path = pkg / "notebooks" / "resbin_pynq_z2.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    monkeypatch.setenv("RESBIN_LIMIT", "2000")
    monkeypatch.delenv("RESBIN_BACKEND", raising=False)
    monkeypatch.delenv("RESBIN_PACKAGE", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(nb_path.parent)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "backend sim  (sim backend only: no bitfile in this package)" in text
    assert "2000 test images of 784 inputs" in text
    assert "accuracy" in text and "confusion matrix" in text
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # digits, confusion matrix, throughput plot
    res = json.loads((pkg / "results" / "validate-mnist-sim-notebook.json").read_text())
    assert res["n_images"] == 2000 and res["backend"] == "sim" and 0.6 < res["accuracy"] <= 1
