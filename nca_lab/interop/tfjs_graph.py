"""Reading the authors' TF.js graph-models (``*.tfjs_graph.json``).

The notebook's ``export_model`` freezes ``CAModel.call`` and dumps the GraphDef as JSON:
every weight is a ``Const`` node (read through an ``Identity``) with its tensor inline. Node
names carry Keras layer counters that differ between files, so the layers are found by op
type and data flow: the ``Conv2D`` reading the ``DepthwiseConv2dNative`` perception is
layer 1, its ``BiasAdd`` and ``Relu`` follow, the ``Conv2D`` reading that ``Relu`` is layer 2.
The perception's 3x3 constants must be the identity and Sobel filters, and the alive mask
a ``MaxPool`` then ``Greater``, so a graph of a clearly other model is refused; how the
graph combines them (the filters' order, the update after layer 2) is taken to be the
notebook's, not checked.

Reference: google-research/self-organising-systems, ``notebooks/growing_ca.ipynb``
(``CAModel``, ``export_model``); Mordvintsev et al., "Growing Neural Cellular Automata",
Distill 2020.
"""

import base64
import binascii
import math
from collections.abc import Iterator

import numpy as np

from nca_lab.errors import ConfigError, require
from nca_lab.interop.original import CHANNELS, HIDDEN, PERCEPTION, original_nca
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import IDENTITY, SOBEL_X, SOBEL_Y

#: GraphDef dtype -> (little-endian buffer dtype, value-list field).
_DTYPES = {"DT_FLOAT": (np.dtype("<f4"), "floatVal"), "DT_INT32": (np.dtype("<i4"), "intVal")}


def is_tfjs_graph(document) -> bool:
    """Whether a parsed JSON document is a TF.js graph-model."""
    return isinstance(document, dict) and document.get("format") == "graph-model" and "modelTopology" in document


def read_tfjs_graph(document, source: str) -> NCA:
    """The :class:`NCA` of a parsed TF.js graph-model; ``source`` names the file in errors.

    Raises:
        ConfigError: the graph lacks an op of the Growing-NCA step, a weight has the wrong
            shape (the message names the layer), or a tensor payload is broken.
    """
    topology = document.get("modelTopology") if isinstance(document, dict) else None
    nodes = topology.get("node") if isinstance(topology, dict) else None
    require(
        isinstance(nodes, list) and all(isinstance(n, dict) and "name" in n and "op" in n for n in nodes),
        f"{source}: modelTopology.node is not a list of nodes",
    )
    graph = _Graph({node["name"]: node for node in nodes}, source)

    perception = graph.unique("DepthwiseConv2dNative", "the depthwise perception convolution")
    graph.check_sobel(perception)
    conv1 = graph.consumer(perception, "Conv2D", "the perception")
    bias1 = graph.consumer(conv1, "BiasAdd", "layer 1's Conv2D")
    relu = graph.consumer(bias1, "Relu", "layer 1's BiasAdd")
    conv2 = graph.consumer(relu, "Conv2D", "layer 1's Relu")
    bias2 = graph.consumer(conv2, "BiasAdd", "layer 2's Conv2D")
    w1 = graph.weight(conv1, [1, 1, PERCEPTION, HIDDEN], "layer 1 kernel")
    b1 = graph.weight(bias1, [HIDDEN], "layer 1 bias")
    w2 = graph.weight(conv2, [1, 1, HIDDEN, CHANNELS], "layer 2 kernel")
    b2 = graph.weight(bias2, [CHANNELS], "layer 2 bias")
    graph.unique("RandomUniform", "the stochastic update's random draw")
    return original_nca(w1[0, 0], b1, w2[0, 0], b2, alive_threshold=graph.alive_threshold())


class _Graph:
    """Lookups on the nodes of one GraphDef; every failure is a :class:`ConfigError` naming the file."""

    def __init__(self, nodes: dict[str, dict], source: str):
        self.nodes = nodes
        self.source = source

    def inputs(self, node: dict) -> list[str]:
        """Names of the nodes whose outputs ``node`` reads (control inputs ``^x`` skipped)."""
        return [name.split(":")[0] for name in node.get("input", []) if not name.startswith("^")]

    def resolve(self, name: str) -> dict:
        """The node ``name``, looking through ``Identity`` nodes (how weights are read)."""
        seen = set()
        while True:
            require(name in self.nodes, f"{self.source}: the graph reads node {name!r}, which it does not contain")
            node = self.nodes[name]
            if node["op"] != "Identity" or name in seen or not self.inputs(node):
                return node
            seen.add(name)
            name = self.inputs(node)[0]

    def unique(self, op: str, what: str) -> dict:
        """The one node of type ``op``."""
        found = [node for node in self.nodes.values() if node["op"] == op]
        require(found, f"{self.source}: the graph has no {op} node ({what}); not a Growing-NCA graph-model")
        require(len(found) == 1, f"{self.source}: the graph has {len(found)} {op} nodes, expected one ({what})")
        return found[0]

    def consumer(self, node: dict, op: str, what: str) -> dict:
        """The one node of type ``op`` that reads ``node``'s output."""
        found = [
            other
            for other in self.nodes.values()
            if other["op"] == op and any(self.resolve(name) is node for name in self.inputs(other))
        ]
        require(found, f"{self.source}: the graph has no {op} reading {what}; not a Growing-NCA graph-model")
        require(len(found) == 1, f"{self.source}: {len(found)} {op} nodes read {what}, expected one")
        return found[0]

    def weight(self, node: dict, shape: list[int], what: str) -> np.ndarray:
        """The float32 constant that ``node`` takes as its second input, checked to be ``shape``."""
        inputs = self.inputs(node)
        require(len(inputs) == 2, f"{self.source}: {node['op']} node {node['name']!r} has no {what} input")
        const = self.resolve(inputs[1])
        require(const["op"] == "Const", f"{self.source}: the {what} is computed, not a constant")
        dtype, actual = self.tensor_header(const)
        require(dtype == "DT_FLOAT", f"{self.source}: the {what} is {dtype}, expected DT_FLOAT")
        require(actual == shape, f"{self.source}: the {what} has shape {actual}, expected {shape}")
        return self.tensor(const, what)

    def tensor_header(self, const: dict) -> tuple[str, list[int]]:
        """``(dtype, shape)`` of a ``Const`` node."""
        tensor = const.get("attr", {}).get("value", {}).get("tensor")
        require(isinstance(tensor, dict), f"{self.source}: Const node {const['name']!r} holds no tensor")
        dims = tensor.get("tensorShape", {}).get("dim", [])
        return tensor.get("dtype"), [int(dim.get("size", 0)) for dim in dims]

    def tensor(self, const: dict, what: str) -> np.ndarray:
        """The value of a ``Const`` node: ``tensorContent`` (base64, little-endian) or a value list."""
        dtype, shape = self.tensor_header(const)
        require(dtype in _DTYPES, f"{self.source}: the {what} has unsupported dtype {dtype}")
        buffer_dtype, list_field = _DTYPES[dtype]
        native = buffer_dtype.newbyteorder("=")
        tensor = const["attr"]["value"]["tensor"]
        count = int(np.prod(shape, dtype=np.int64))
        if "tensorContent" in tensor:
            try:
                raw = base64.b64decode(tensor["tensorContent"], validate=True)
            except (binascii.Error, ValueError, TypeError) as err:
                raise ConfigError(
                    f"{self.source}: the {what}'s tensorContent is not valid base64 (truncated?)"
                ) from err
            expected = count * buffer_dtype.itemsize
            require(
                len(raw) == expected,
                f"{self.source}: the {what}'s tensorContent holds {len(raw)} bytes, expected {expected} (truncated?)",
            )
            return np.frombuffer(raw, buffer_dtype).astype(native).reshape(shape)
        values = np.asarray(tensor.get(list_field, []), native)
        require(values.size in (1, count), f"{self.source}: the {what} has {values.size} values for shape {shape}")
        return np.full(shape, values[0], native) if values.size == 1 else values.reshape(shape)

    def ancestors(self, node: dict) -> Iterator[dict]:
        """Every node that ``node`` depends on through data inputs, each once."""
        stack, seen = list(self.inputs(node)), set()
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            yield self.nodes[name]
            stack.extend(self.inputs(self.nodes[name]))

    def check_sobel(self, perception: dict) -> None:
        """Require the depthwise kernel to be built from the identity and Sobel 3x3 constants only."""
        kernels = [
            self.tensor(node, "perception kernel")
            for node in self.ancestors(perception)
            if node["op"] == "Const" and self.tensor_header(node) == ("DT_FLOAT", [3, 3])
        ]
        expected = (IDENTITY, SOBEL_X, SOBEL_Y)
        require(
            kernels
            and all(any(np.allclose(k, e) for e in expected) for k in kernels)
            and all(any(np.allclose(k, e) for k in kernels) for e in expected),
            f"{self.source}: the perception is not the identity + Sobel filters of a Growing NCA",
        )

    def alive_threshold(self) -> float:
        """The alpha threshold of the alive mask: the constant of the ``Greater`` reading a ``MaxPool``."""
        thresholds = set()
        for node in self.nodes.values():
            if node["op"] != "Greater":
                continue
            inputs = [self.resolve(name) for name in self.inputs(node)]
            if len(inputs) == 2 and inputs[0]["op"] == "MaxPool" and inputs[1]["op"] == "Const":
                shape = self.tensor_header(inputs[1])[1]  # before reading: a value list splats to its shape
                require(math.prod(shape) == 1, f"{self.source}: the alive threshold has shape {shape}, not one value")
                thresholds.add(float(self.tensor(inputs[1], "alive threshold").reshape(-1)[0]))
        require(
            thresholds,
            f"{self.source}: the graph has no alive mask (MaxPool then Greater); not a Growing-NCA graph-model",
        )
        require(len(thresholds) == 1, f"{self.source}: the alive masks use different thresholds {sorted(thresholds)}")
        return thresholds.pop()
