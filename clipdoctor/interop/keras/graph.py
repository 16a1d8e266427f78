"""Walking a Keras model's layers and functional graphs: the architecture facts torch
module inspection cannot see (per-frame pooling and augmentation inside TimeDistributed,
last-step reads of bidirectional sequences, the output activation, training=True calls,
recurrent layers)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .loading import import_keras

# Random augmentation layers: the class names that do not start with "Random".
_AUGMENTATION_EXTRA = {"AugMix", "RandAugment", "CutMix", "MixUp", "Solarization"}
_GLOBAL_POOLS = {"GlobalAveragePooling2D", "GlobalMaxPooling2D"}
_CONV_RNNS = {"ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}
# Operations that leave the class scores' values as they are (the output activation is read
# through them), and the operations that are an activation themselves.
_SHAPE_ONLY = {"Reshape", "Flatten", "Identity", "Squeeze", "ExpandDims"}
_ACTIVATION_OPS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid"}


@dataclass(frozen=True)
class _Visit:
    """One layer met while walking the model: its path of names from the top model, whether
    a TimeDistributed wrapper lies above it, whether it or a parent is frozen."""

    path: str
    layer: Any
    in_time_distributed: bool
    frozen: bool


def _sublayers(layer: Any) -> list[Any]:
    """The layers directly inside `layer` (a model's layers, a wrapper's wrapped layer, a
    custom layer's tracked sublayers), in order; none for a Bidirectional (a unit here)."""
    if type(layer).__name__ == "Bidirectional":
        return []
    if _is_model(layer):  # Functional / Sequential models: their layers, in graph order
        return list(layer.layers)
    inner = getattr(layer, "layer", None)  # TimeDistributed and other wrappers
    if inner is not None and hasattr(inner, "trainable"):
        return [inner]
    flatten = getattr(layer, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=False)) if flatten else []


def _is_model(layer: Any) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(layer, keras.Model)


def _walk(model: Any) -> Iterator[_Visit]:
    """Every layer inside `model` (depth first, in graph order), the model itself excluded."""
    def visit(layer: Any, prefix: str, in_td: bool, frozen: bool) -> Iterator[_Visit]:
        for sub in _sublayers(layer):
            path = f"{prefix}/{sub.name}" if prefix else sub.name
            sub_frozen = frozen or not sub.trainable
            yield _Visit(path, sub, in_td, sub_frozen)
            yield from visit(sub, path, in_td or type(sub).__name__ == "TimeDistributed",
                             sub_frozen)
    yield from visit(model, "", False, not model.trainable)


def _is_random_augmentation(layer: Any) -> bool:
    name = type(layer).__name__
    return name.startswith("Random") or name in _AUGMENTATION_EXTRA


def _is_batchnorm(layer: Any) -> bool:
    return type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization")


def _contains_batchnorm(layer: Any) -> bool:
    """Is `layer` a BatchNormalization, or does it hold one (a model, a wrapper)?"""
    return _is_batchnorm(layer) or any(_is_batchnorm(v.layer) for v in _walk(layer))


def _graph_of(model: Any) -> Any:
    """The functional graph of a model: itself, or the Functional a Sequential builds once
    its input shape is known."""
    inner = getattr(model, "_functional", None)
    return inner if inner is not None else model


def _graphs(model: Any) -> Iterator[tuple[str, Any]]:
    """(path, functional graph) for the model and every model nested in it ('' for the top)."""
    yield "", _graph_of(model)
    for v in _walk(model):
        if _is_model(v.layer):
            yield v.path, _graph_of(v.layer)


def _graph_nodes(graph: Any) -> Iterator[tuple[Any, Any]]:
    """(operation, node) for the calls recorded inside `graph`: nodes whose inputs come from
    the graph's own operations (a layer shared with another model has nodes there too)."""
    try:
        ops = list(graph.operations)
    except (AttributeError, TypeError, ValueError):  # a Sequential never built on an input
        return
    own = {id(op) for op in ops}
    for op in ops:
        for node in getattr(op, "_inbound_nodes", []):
            sources = [t._keras_history.operation for t in node.input_tensors
                       if getattr(t, "_keras_history", None) is not None]
            if not sources or all(id(s) in own for s in sources):
                yield op, node


def _op_name(prefix: str, op: Any) -> str:
    return f"{prefix}/{op.name}" if prefix else op.name


def _reads_last_step(op: Any, node: Any, tensor: Any) -> bool:
    """Does `op`, called as `node` records, turn the (B, T, D) sequence `tensor` into its last
    step x[:, -1]? Tried on a random sequence (the call's other arguments as recorded)."""
    shape = tuple(tensor.shape)
    if len(shape) != 3 or shape[-1] is None:
        return False
    t = shape[1] if shape[1] is not None else 5
    g = torch.Generator().manual_seed(0)
    seq = torch.randn(2, t, shape[-1], generator=g)
    try:
        args, kwargs = node.arguments.fill_in({id(tensor): seq})
        with torch.no_grad():
            out = op(*args, **kwargs)
    except Exception:  # noqa: BLE001 — an op that cannot run alone tells nothing
        return False
    out = out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, shape[-1]):
        return False
    return bool(torch.allclose(out.detach().cpu().float(), seq[:, -1], atol=1e-6))


def _bidirectional_last_steps(model: Any) -> list[dict[str, str]]:
    """Reads of x[:, -1] from a Bidirectional RNN's full sequence (return_sequences=True):
    there the backward half has seen only the last frame. A Bidirectional with
    return_sequences=False is right (Keras joins the forward RNN's last step with the backward
    RNN's own last step, i.e. the first frame's)."""
    found = []
    for prefix, graph in _graphs(model):
        for op, node in _graph_nodes(graph):
            tensors = list(node.input_tensors)
            if len(tensors) != 1:
                continue
            src = tensors[0]._keras_history.operation
            if type(src).__name__ != "Bidirectional" or not getattr(src, "return_sequences", False):
                continue
            if _reads_last_step(op, node, tensors[0]):
                found.append({"layer": _op_name(prefix, src), "read_by": _op_name(prefix, op)})
    return found


def _forced_training_calls(model: Any) -> list[Any]:
    """The operations called with ``training=True`` written into the graph
    (``bn(x, training=True)``). Keras saves call arguments with each node, so this is read
    from a saved file too. (``training=False`` cannot be told apart from a signature default
    such as Dropout's, which Keras records the same way.)"""
    return [(prefix, op) for prefix, graph in _graphs(model) for op, node in _graph_nodes(graph)
            if node.arguments.kwargs.get("training") is True]


def _final_pool(layer: Any, path: str) -> str | None:
    """The path of the global pooling that produces `layer`'s output (the layer itself, or
    the last layer of a model, through reshapes and dropout), else None. Pools inside a
    backbone (EfficientNet's squeeze-excitation blocks) do not end it and are not counted."""
    for _ in range(64):  # nested models, never forever
        if type(layer).__name__ in _GLOBAL_POOLS:
            return path
        if not _is_model(layer):
            return None
        op = _output_op(layer)
        while op is not None and type(op).__name__ in _SHAPE_ONLY | {"Dropout"}:
            op = _input_op(op)
        if op is None:
            return None
        layer, path = op, f"{path}/{op.name}"
    return None


def _per_frame_global_pools(walk: list[_Visit]) -> list[str]:
    """Global poolings that end what a TimeDistributed applies to each frame: each frame's
    feature map is reduced to one vector (where things are is lost before the RNN)."""
    found = []
    for v in walk:
        if type(v.layer).__name__ == "TimeDistributed":
            inner = v.layer.layer
            pool = _final_pool(inner, f"{v.path}/{inner.name}")
            if pool is not None:
                found.append(pool)
    return found


def _output_op(model: Any) -> Any:
    """The operation that produces a model's (first) output; None when unknown."""
    outputs = getattr(model, "outputs", None)
    if outputs:
        return outputs[0]._keras_history.operation
    layers = getattr(model, "layers", None)
    return layers[-1] if layers else None


def _input_op(op: Any) -> Any:
    """The operation whose output `op` takes, when it takes exactly one tensor; else None."""
    nodes = getattr(op, "_inbound_nodes", None)
    tensors = list(nodes[0].input_tensors) if nodes else []
    return tensors[0]._keras_history.operation if len(tensors) == 1 else None


def _output_activation(model: Any) -> str | None:
    """The activation that produces the model's output: 'softmax', 'log_softmax', 'sigmoid',
    'linear'... read through reshapes, nested models and TimeDistributed; None when unknown
    (an op that is not a layer with an activation, such as a custom layer)."""
    op = _output_op(model)
    for _ in range(64):  # a chain of reshapes and nested models, never forever
        if op is None:
            return None
        name = type(op).__name__
        if name in _ACTIVATION_OPS:  # the Softmax layer, ops.softmax, ops.log_softmax...
            return _ACTIVATION_OPS[name]
        activation = getattr(op, "activation", None)
        if callable(activation):  # Dense, Conv, Activation: a function such as softmax
            act = getattr(activation, "__name__", type(activation).__name__)
            if not (name == "Activation" and act == "linear"):
                return act
            op = _input_op(op)
        elif _is_model(op):
            op = _output_op(op)
        elif name == "TimeDistributed":
            op = op.layer
        elif name in _SHAPE_ONLY:
            op = _input_op(op)
        else:
            return None
    return None


def _recurrent_layers(model: Any) -> list[dict[str, Any]]:
    """RNNs of the model (Bidirectional as one entry), with what the checks need."""
    keras = import_keras()
    out = []
    for v in _walk(model):
        layer = v.layer
        name = type(layer).__name__
        if name == "Bidirectional":
            fwd = layer.forward_layer
            out.append({"name": v.path, "class": f"Bidirectional({type(fwd).__name__})",
                        "bidirectional": True, "units": _units(fwd),
                        "return_sequences": bool(layer.return_sequences),
                        "merge_mode": layer.merge_mode,
                        "in_time_distributed": v.in_time_distributed})
        elif isinstance(layer, keras.layers.RNN) or name in _CONV_RNNS:
            out.append({"name": v.path, "class": name, "bidirectional": False,
                        "units": _units(layer),
                        "return_sequences": bool(getattr(layer, "return_sequences", False)),
                        "merge_mode": None, "in_time_distributed": v.in_time_distributed})
    return out


def _units(layer: Any) -> int | None:
    units = getattr(layer, "units", None) or getattr(layer, "filters", None)
    if units is None and getattr(layer, "cell", None) is not None:
        units = getattr(layer.cell, "units", None) or getattr(layer.cell, "filters", None)
    return int(units) if units is not None else None


def _count(variables: Iterable[Any]) -> int:
    return int(sum(math.prod(int(d) for d in v.shape) for v in variables))
