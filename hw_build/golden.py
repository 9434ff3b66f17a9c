"""Write `golden.npz`: FINN's HW-layer graph as an integer model that `deploy.sim` executes.

`write_golden(hw_model, path, meta)` walks the graph FINN Python-executes (HW layers before
specialization; a parent graph with StreamingDataflowPartition nodes is inlined) and stores,
per node, exactly what `execute_node` of that FINN/qonnx op computes:
- MVAU: weights (binary/bipolar packed with np.packbits along MW, else integers), integer
  thresholds (`x >= t` on integers == `x >= ceil(t)`), out scale/bias as in MVAU.execute_node;
- Thresholding: integer thresholds, ActVal, BIPOLAR output as 2y-1;
- ConvolutionInputGenerator, Transpose: a gather index obtained by running FINN's own
  execute_node on an arange input, so the element order is FINN's by construction;
- DuplicateStreams, FIFOs, width converters, Reshape & co.: identities on the flat layout;
- Pool (MaxPool/AccPool), Elementwise{Add,Sub,Mul,Max,Min}, LabelSelect (ONNX TopK order).
The format is read by `deploy.golden.read_golden` (numpy only). This module imports FINN.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np

from hw_build.finn_env import ensure_finn
from hw_build.golden_nodes import GoldenWriteError, base_op, flat_size, node_spec

GOLDEN_FORMAT = 1  # == deploy.golden.GOLDEN_FORMAT (tests check)


def _load(hw_model):
    ensure_finn()
    from qonnx.core.modelwrapper import ModelWrapper

    if isinstance(hw_model, (str, Path)):
        return ModelWrapper(str(hw_model))
    return hw_model


def _inline_partitions(model):
    """Replace StreamingDataflowPartition nodes by the nodes of their child models."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    if not any(n.op_type == "StreamingDataflowPartition" for n in model.graph.node):
        return model
    model = ModelWrapper(copy.deepcopy(model.model))
    new_nodes = []
    for node in model.graph.node:
        if node.op_type != "StreamingDataflowPartition":
            new_nodes.append(node)
            continue
        child = ModelWrapper(getCustomOp(node).get_nodeattr("model"))
        child = _inline_partitions(child)
        rename = {ci.name: pi for ci, pi in zip(child.graph.input, node.input)}
        rename.update({co.name: po for co, po in zip(child.graph.output, node.output)})
        for cnode in child.graph.node:
            cnode = type(cnode).FromString(cnode.SerializeToString())
            for i, t in enumerate(cnode.input):
                cnode.input[i] = rename.get(t, t)
            for i, t in enumerate(cnode.output):
                cnode.output[i] = rename.get(t, t)
            new_nodes.append(cnode)
        for init in child.graph.initializer:
            model.graph.initializer.append(init)
        for vi in list(child.graph.value_info) + list(child.graph.input) + list(child.graph.output):
            name = rename.get(vi.name, vi.name)
            if model.get_tensor_shape(name) is None:
                vi2 = type(vi).FromString(vi.SerializeToString())
                vi2.name = name
                model.graph.value_info.append(vi2)
        have = {a.tensor_name for a in model.graph.quantization_annotation}
        for ann in child.graph.quantization_annotation:
            ann2 = type(ann).FromString(ann.SerializeToString())
            ann2.tensor_name = rename.get(ann.tensor_name, ann.tensor_name)
            if ann2.tensor_name not in have:
                model.graph.quantization_annotation.append(ann2)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return model


def _dt_name(s) -> str:
    s = str(s)
    return s.replace("DataType['", "").replace("']", "").replace("DataType.", "")


def driver_io(model) -> dict:
    """The IODMA packing particulars FINN's PYNQ driver uses (io_shape_dict), from `model`.

    A parent model with IODMA partitions goes through `finn.util.basic.get_driver_shapes`; a
    plain HW graph uses the folded shapes of its first and last HW layer (as that function does).
    """
    model = _load(model)
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.util.basic import gen_finn_dt_tensor

    from finn.util.data_packing import finnpy_to_packed_bytearray

    def _lists(d):
        return {k: [list(map(int, s)) for s in v] if "shape" in k else v for k, v in d.items()}

    nodes = list(model.graph.node)
    if nodes and all(n.op_type == "StreamingDataflowPartition" for n in nodes):
        child0 = getCustomOp(nodes[0]).get_nodeattr("model")
        from qonnx.core.modelwrapper import ModelWrapper
        if ModelWrapper(child0).graph.node[0].op_type == "IODMA_hls":
            from finn.util.basic import get_driver_shapes
            d = get_driver_shapes(model)
            io = _lists({k: v for k, v in d.items()})
            io["idt"] = [_dt_name(x) for x in io["idt"]]
            io["odt"] = [_dt_name(x) for x in io["odt"]]
            io["input_dma_name"] = io.pop("idma_names")
            io["output_dma_name"] = io.pop("odma_names")
            io["num_inputs"], io["num_outputs"] = len(io["idt"]), len(io["odt"])
            return io
        model = _inline_partitions(model)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    first, last = model.find_consumer(iname), model.find_producer(oname)
    idt, odt = model.get_tensor_datatype(iname), model.get_tensor_datatype(oname)
    ifold = tuple(getCustomOp(first).get_folded_input_shape())
    ofold = tuple(getCustomOp(last).get_folded_output_shape())
    ipacked = finnpy_to_packed_bytearray(gen_finn_dt_tensor(idt, ifold), idt).shape
    opacked = finnpy_to_packed_bytearray(gen_finn_dt_tensor(odt, ofold), odt).shape
    return _lists({
        "idt": [idt.name], "odt": [odt.name],
        "ishape_normal": [tuple(model.get_tensor_shape(iname))], "ishape_folded": [ifold],
        "ishape_packed": [ipacked],
        "oshape_normal": [tuple(model.get_tensor_shape(oname))], "oshape_folded": [ofold],
        "oshape_packed": [opacked],
        "input_dma_name": ["idma0"], "output_dma_name": ["odma0"],
        "num_inputs": 1, "num_outputs": 1,
    })


def build_id(model) -> str:
    """Hash of the HW graph (nodes, attributes, initializers): 16 hex digits."""
    model = _load(model)
    data = model.model.graph.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:16]


def golden_doc(hw_model, meta: dict | None = None):
    """(graph document, arrays) of the golden model for `hw_model` (see write_golden)."""
    model = _load(hw_model)
    bid = build_id(model)
    flat = _inline_partitions(model)
    if len(flat.graph.input) != 1 or len(flat.graph.output) != 1:
        raise GoldenWriteError(f"HW graph has {len(flat.graph.input)} inputs and "
                               f"{len(flat.graph.output)} outputs, expected 1 and 1")
    arrays: dict = {}
    nodes = [node_spec(flat, n, k, arrays) for k, n in enumerate(flat.graph.node)]
    iname, oname = flat.graph.input[0].name, flat.graph.output[0].name
    ishape = list(flat.get_tensor_shape(iname))
    idt = flat.get_tensor_datatype(iname).name
    producer = flat.find_producer(oname)
    if producer is not None and base_op(producer.op_type) == "LabelSelect":
        int_tensor = producer.input[0]
        out = {"name": oname, "kind": "labels", "dtype": flat.get_tensor_datatype(oname).name,
               "K": nodes[-1]["attrs"]["K"] if nodes[-1]["outputs"] == [oname] else None,
               "int_tensor": int_tensor,
               "int_dtype": flat.get_tensor_datatype(int_tensor).name,
               "n_outputs": flat_size(flat.get_tensor_shape(int_tensor))}
    else:
        out = {"name": oname, "kind": "int", "dtype": flat.get_tensor_datatype(oname).name,
               "int_tensor": oname, "int_dtype": flat.get_tensor_datatype(oname).name,
               "n_outputs": flat_size(flat.get_tensor_shape(oname))}
    from importlib.metadata import PackageNotFoundError, version
    try:
        finn_version = version("finn-plus")
    except PackageNotFoundError:  # upstream FINN installed from git
        finn_version = "unknown"
    m = dict(meta or {})
    m["build_id"] = bid
    m["finn_version"] = finn_version
    if "fclk_mhz" not in m and m.get("clk_ns"):
        m["fclk_mhz"] = round(1000.0 / float(m["clk_ns"]), 6)
    if "io" not in m:
        m["io"] = driver_io(model)
    doc = {"format": GOLDEN_FORMAT, "meta": m,
           "input": {"name": iname, "shape": ishape, "dtype": idt,
                     "n_inputs": flat_size(ishape)},
           "output": out, "nodes": nodes}
    return doc, arrays


def write_golden(hw_model, path, meta: dict | None = None) -> Path:
    """Convert the HW-layer graph (ModelWrapper or .onnx path) into `path` (golden.npz).

    meta: anything to keep (board, clk_ns or fclk_mhz, model, dataset, io=driver_io(final
    model) after folding); build_id, finn_version and (if absent) io are added here.
    """
    doc, arrays = golden_doc(hw_model, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, graph=np.array(json.dumps(doc, default=_json_default)), **arrays)
    tmp.replace(path)
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        f = float(o)
        return int(f) if f.is_integer() else f
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o)}")

