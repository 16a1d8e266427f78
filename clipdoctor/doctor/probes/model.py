"""Static model probes: what the model is, how it is wired, and what it was loaded with.

They work on the built-in ClipClassifier and on the user's own `nn.Module`
((B, T, C, H, W) float -> (B, classes)); where a measurement needs clipdoctor's structure
(backbone, pool, head) a user model makes the probe raise ProbeSkipped. Nothing here trains;
at most one forward pass on noise, and (`trained_parameters`, once per diagnosis) one forward /
backward of a user model on a few training clips to see which parameters get a gradient. The
behavioural probes (a batch through the model) are in `model_behaviour.py`, the probes of the
features the model reads in `model_features.py`; both share the helpers below.

- `model_summary`: parameters (trained and frozen, measured: `trained_parameters`), output
  width, parts (the report's "model" section).
- `structure`: static inspection: RNNs, frozen BatchNorm left in train mode, and (where
  torch.fx can trace the model) a final softmax and `output[:, -1]` reads of bidirectional RNNs.
- `label_range`: labels vs output width, and whether the loss accepts them.
- `weights`: how the backbone's (or a user model's promised) weights were loaded.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clipdoctor.doctor.optimizers import describe
from clipdoctor.doctor.probes import (Context, Probes, ProbeSkipped, base_model, loss_input,
                                        probe)

log = logging.getLogger(__name__)

LENGTH_NAMES = ("lengths", "length", "lens", "seq_lengths", "seq_lens")  # forward(clips, lengths)


# ---------------------------------------------------------------------------------------------
# helpers

def _num_classes(ctx: Context) -> int | None:
    return len(ctx.data.classes) if ctx.data is not None and hasattr(ctx.data, "classes") else None


def _takes_lengths(model: nn.Module) -> bool:
    """Whether forward accepts valid lengths (by parameter name) besides the clips."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return any(name in params for name in LENGTH_NAMES)


def _builtin(ctx: Context) -> nn.Module:
    """The built-in ClipClassifier, or ProbeSkipped for a user model."""
    if ctx.user_model:
        raise ProbeSkipped("user model: this measurement needs clipdoctor's ClipClassifier "
                           "(backbone, pool, head)")
    return base_model(ctx)


def _count(params: Any) -> int:
    return int(sum(p.numel() for p in params))


def _frozen_bns(model: nn.Module, trained: frozenset[str] | None = None
                ) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that track running statistics and belong to a frozen part (a frozen
    backbone's BatchNorm: training must not move it): their affine parameters are all frozen,
    or they have none and the nearest enclosing module with parameters is frozen. Frozen means
    not in `trained` (parameter names, `Trained.names`); without it, `requires_grad=False`."""
    frozen = frozen_modules(model, trained)
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and name in frozen]


def frozen_modules(model: nn.Module, trained: frozenset[str] | None = None) -> set[str]:
    """Names of the modules of a frozen part: a module with parameters none of which is
    trained, and a module without parameters (ReLU, a BatchNorm without affine) whose nearest
    enclosing module with parameters is frozen. Parameters are trained when their name is in
    `trained`; with None, when they require a gradient."""
    ids = {id(p) for n, p in model.named_parameters()
           if (n in trained if trained is not None else p.requires_grad)}
    state: dict[str, bool | None] = {}  # name -> frozen (True / False), None: no parameters
    for name, m in model.named_modules():
        params = list(m.parameters())
        state[name] = None if not params else not any(id(p) in ids for p in params)
    out = set()
    for name in state:
        up = name
        while state.get(up) is None and up:
            up = up.rpartition(".")[0]
        if state.get(up):
            out.add(name)
    return out


# ---------------------------------------------------------------------------------------------
# which parameters are trained (measured once per diagnosis)

@dataclass(frozen=True)
class Trained:
    """The parameters training actually updates, by name (`model.named_parameters()`; names
    are the same in every fresh copy). A parameter is trained when it requires a gradient,
    receives a non-zero one in a forward / backward pass on real training clips (a part run
    under `torch.no_grad()` or `.detach()`ed inside forward gets none), and the optimizer holds
    it (a part left out of the optimizer is never stepped). `frozen_by` counts the elements
    frozen for each reason (the first that applies)."""

    names: frozenset[str]
    total: int  # parameter elements in all
    trainable: int  # ... of trained parameters
    frozen_by: dict[str, int]  # requires_grad / no_gradient / zero_gradient / not_in_optimizer
    how: str  # "measured ..." or "requires_grad flags ..."
    error: str | None = None  # why the measurement fell back to the flags

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "frozen": self.total - self.trainable,
                "frozen_by": {k: v for k, v in self.frozen_by.items() if v},
                "trained_from": self.how, **({"trained_error": self.error} if self.error else {})}


def trained_parameters(ctx: Context) -> Trained:
    """Which parameters training updates (`Trained`), measured once per diagnosis on a fresh
    copy of the model and kept in `ctx.cache`: for a user's model one forward / backward in
    train mode on real training clips (2+, so BatchNorm1d heads run), plus which parameters the
    optimizer (`ctx.make_optimizer(model)`) holds. clipdoctor's own model freezes only through
    `requires_grad` and its optimizer holds every such parameter: the flags are read, nothing
    runs. A forward that fails falls back to the flags (the error is kept; the probes that run
    the model report it)."""
    if "trained" not in ctx.cache:
        ctx.cache["trained"] = _measure_trained(ctx)
    return ctx.cache["trained"]


def _measure_trained(ctx: Context) -> Trained:
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    named = dict(model.named_parameters())
    numel = {n: p.numel() for n, p in named.items()}
    flagged = {n for n, p in named.items() if p.requires_grad}
    held, error = set(flagged), None
    if flagged:
        try:
            opt = ctx.make_optimizer(model)
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            held = {n for n, p in named.items() if id(p) in ids}
        except Exception as e:  # noqa: BLE001 — the training probes report a broken optimizer
            error = f"optimizer: {type(e).__name__}: {str(e)[:200]}"
    reasons: dict[str, str] = {n: "requires_grad" for n in named if n not in flagged}
    how = "requires_grad flags and the optimizer's parameters"
    if ctx.user_model and flagged:
        graded, why = _gradients(ctx, model)
        if graded is None:
            error = why if error is None else f"{error}; {why}"
            how = "requires_grad flags and the optimizer's parameters (the pass failed)"
        else:
            reasons.update({n: "no_gradient" for n in flagged if graded.get(n) is None})
            reasons.update({n: "zero_gradient" for n in flagged if graded.get(n) is False})
            how = why
    reasons.update({n: "not_in_optimizer" for n in flagged if n not in held and n not in reasons})
    names = frozenset(n for n in named if n not in reasons)
    frozen_by = {k: sum(numel[n] for n, r in reasons.items() if r == k)
                 for k in ("requires_grad", "no_gradient", "zero_gradient", "not_in_optimizer")}
    return Trained(names=names, total=sum(numel.values()),
                   trainable=sum(numel[n] for n in names), frozen_by=frozen_by, how=how,
                   error=error)


def _gradients(ctx: Context, model: nn.Module) -> tuple[dict[str, bool | None] | None, str]:
    """One forward / backward of `model` (train mode) on a training batch: name -> True (a
    non-zero gradient), False (an all-zero one), None (no gradient) for each parameter that
    requires one; or (None, why) when the pass fails. The loss is the user's; when it cannot
    run on the output, a random projection of the output (any path to it shows)."""
    from clipdoctor.doctor.probes.model_behaviour import _probe_batch

    try:
        x, y, source = _probe_batch(ctx)
    except Exception as e:  # noqa: BLE001 — no batch: the flags decide
        return None, f"no training batch: {type(e).__name__}: {str(e)[:200]}"
    for p in model.parameters():
        p.grad = None
    try:
        out = model(x)
        if not isinstance(out, Tensor):
            return None, f"forward returned {type(out).__name__}, not a tensor"
        try:
            loss = ctx.loss_fn(out, y)
            if not (isinstance(loss, Tensor) and loss.requires_grad and loss.numel() == 1
                    and bool(torch.isfinite(loss))):
                raise ValueError("loss not usable")
            target = "the loss"
        except Exception:  # noqa: BLE001 — the loss checks say why
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(ctx.seed))
            loss = (torch.nan_to_num(out.float()) * w).sum()
            target = "a random projection of the output"
        if loss.requires_grad:
            loss.backward()
    except Exception as e:  # noqa: BLE001
        return None, f"forward / backward: {type(e).__name__}: {str(e)[:200]}"
    graded = {n: (None if p.grad is None else bool((p.grad.detach() != 0).any()))
              for n, p in model.named_parameters() if p.requires_grad}
    return graded, (f"measured: gradients of {target} on {len(x)} {source} in train mode, "
                    "and the optimizer's parameters")


# ---------------------------------------------------------------------------------------------
# model_summary

@probe("model_summary")
def model_summary(ctx: Context, probes: Probes) -> dict:
    """Parameters (total, trained, frozen and why: `trained_parameters`), output width and
    parts; becomes the report's model section. A user model's output shape comes from one
    forward pass on noise."""
    model = base_model(ctx)
    trained = trained_parameters(ctx)
    leaves = Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    out: dict = {"source": "user" if ctx.user_model else "built-in",
                 "class": type(model).__name__, "parameters": trained.total,
                 **trained.to_dict(), "optimizer": describe(ctx.make_optimizer),
                 "module_types": dict(leaves.most_common(12)),
                 "num_classes": _num_classes(ctx)}
    if ctx.data is not None and hasattr(ctx.data, "samples"):
        out["train_clips"] = sum(1 for s in ctx.data.samples if s.split == "train")
    if ctx.user_model:
        out.update(_output_shape(ctx))
        return out
    cfg = ctx.config.model
    info = getattr(model, "info", None)
    out.update({
        "backbone": cfg.backbone, "weights": getattr(info, "weights", None),
        "backbone_frozen": cfg.freeze_backbone,
        "backbone_parameters": _count(model.backbone.parameters()),
        "backbone_trainable": _count(p for p in model.backbone.parameters() if p.requires_grad),
        "pool": cfg.pool, "grid": cfg.grid if cfg.pool == "grid" else None,
        "feature_dim": model.feature_dim, "proj_dim": cfg.proj_dim, "head": cfg.head,
        "hidden": cfg.hidden, "readout_dim": int(getattr(model.head, "out_dim", 0)) or None,
        "output_width": model.num_classes,
    })
    return out


def _output_shape(ctx: Context) -> dict:
    """The output shape of a fresh model on 2 noise clips of the configured size."""
    T, S = ctx.config.data.frames, ctx.config.data.size
    model = ctx.make_model().eval()
    x = torch.randn(2, T, 3, S, S, generator=torch.Generator().manual_seed(ctx.seed))
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001 — a model that cannot run is evidence, not a crash
        return {"output_shape": None, "output_width": None,
                "output_error": f"{type(e).__name__}: {str(e)[:200]}"}
    if not isinstance(y, Tensor):
        return {"output_shape": None, "output_width": None,
                "output_error": f"forward returned {type(y).__name__}, not a tensor"}
    return {"output_shape": list(y.shape), "output_width": int(y.shape[-1]) if y.ndim else None}


# ---------------------------------------------------------------------------------------------
# structure (static)

_SOFTMAX_FNS = {torch.softmax: "softmax", torch.nn.functional.softmax: "softmax",
                torch.log_softmax: "log_softmax", torch.nn.functional.log_softmax: "log_softmax",
                torch.sigmoid: "sigmoid", torch.nn.functional.sigmoid: "sigmoid"}
_SOFTMAX_MODULES = ((nn.Softmax, "softmax"), (nn.LogSoftmax, "log_softmax"),
                    (nn.Sigmoid, "sigmoid"))
_PASS_THROUGH = ("view", "reshape", "squeeze", "flatten", "contiguous", "float")


@probe("structure", min_s=0.5)
def structure(ctx: Context, probes: Probes) -> dict:
    """RNNs and how they are configured, frozen BatchNorm in train mode after `.train()`, and
    what torch.fx can see: the operation producing the output, `output[:, -1]` reads."""
    trained = trained_parameters(ctx).names
    model = ctx.make_model()
    model.train()
    frozen = _frozen_bns(model, trained)
    rnns = [{"name": n, "type": type(m).__name__, "bidirectional": bool(m.bidirectional),
             "batch_first": bool(m.batch_first), "hidden": int(m.hidden_size),
             "layers": int(m.num_layers)}
            for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    out = {"rnns": rnns, "batchnorm_layers": sum(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                 for m in model.modules()),
           "frozen_batchnorm": len(frozen),
           "frozen_batchnorm_train_mode": [n for n, m in frozen if m.training],
           "takes_lengths": _takes_lengths(model), "fx": "not traced",
           "final_op": None, "last_step_reads": []}
    out.update(_fx_inspect(model))
    return out


def _fx_inspect(model: nn.Module) -> dict:
    """What symbolic tracing shows; models with data-dependent control flow cannot be traced
    (the built-in one among them), which only leaves these fields empty."""
    import torch.fx as fx

    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
        concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        gm = fx.symbolic_trace(model, concrete_args=concrete or None)
    except Exception as e:  # noqa: BLE001 — tracing is best effort
        return {"fx": f"not traceable ({type(e).__name__})"}
    modules = dict(gm.named_modules())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    final = _final_op(result, modules) if isinstance(result, fx.Node) else None
    reads = []
    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, nn.RNNBase) and mod.bidirectional:
            axis = 1 if mod.batch_first else 0
            outs = [u for u in node.users if _is_getitem(u, 0)]
            if any(_reads_last(u2, axis) for o in outs for u2 in o.users):
                reads.append(str(node.target))
    return {"fx": "traced", "final_op": final, "last_step_reads": reads}


def _final_op(node: Any, modules: dict, depth: int = 4) -> str | None:
    """'softmax' / 'log_softmax' / 'sigmoid' when that produced the output (through reshapes)."""
    for _ in range(depth):
        if node.op == "call_module":
            mod = modules.get(node.target)
            for cls, name in _SOFTMAX_MODULES:
                if isinstance(mod, cls):
                    return name
        elif node.op == "call_function" and node.target in _SOFTMAX_FNS:
            return _SOFTMAX_FNS[node.target]
        elif node.op == "call_method" and node.target in ("softmax", "log_softmax", "sigmoid"):
            return str(node.target)
        if node.op == "call_method" and node.target in _PASS_THROUGH and node.args:
            node = node.args[0]
            continue
        return None
    return None


def _is_getitem(node: Any, index: Any) -> bool:
    return (node.op == "call_function" and node.target is operator.getitem
            and len(node.args) > 1 and node.args[1] == index)


def _reads_last(node: Any, axis: int) -> bool:
    """`out[:, -1]` (axis 1) / `out[-1]` (axis 0), or `out.select(axis, -1)`."""
    if node.op == "call_method" and node.target == "select":
        return tuple(node.args[1:3]) == (axis, -1)
    if not (node.op == "call_function" and node.target is operator.getitem):
        return False
    idx = node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    return (len(idx) > axis and isinstance(idx[axis], int) and idx[axis] == -1
            and all(i == slice(None) for i in idx[:axis]))


# ---------------------------------------------------------------------------------------------
# label_range

@probe("label_range", needs=("model_summary",))
def label_range(ctx: Context, probes: Probes) -> dict:
    """Label range of the dataset vs the model's output width, and whether the loss takes the
    largest label with that width."""
    if ctx.data is None or not hasattr(ctx.data, "samples"):
        raise ProbeSkipped("no dataset given")
    labels = [int(s.label) for s in ctx.data.samples]
    summary = probes.get("model_summary")
    res = {"label_min": min(labels), "label_max": max(labels), "num_classes": _num_classes(ctx),
           "output_shape": summary.get("output_shape"), "output_width": summary.get("output_width"),
           "output_error": summary.get("output_error")}
    W = res["output_width"]
    if W:
        yy = torch.tensor([res["label_min"], res["label_max"]])
        try:
            with torch.no_grad():
                logits = loss_input(ctx.loss_fn, torch.zeros(2, W))  # uniform (probabilities
                # for a loss on probabilities)
                value = float(ctx.loss_fn(logits, yy))
            res["loss_accepts_labels"] = math.isfinite(value)
        except Exception as e:  # noqa: BLE001
            res["loss_accepts_labels"] = False
            res["loss_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return res


# ---------------------------------------------------------------------------------------------
# weights

@probe("weights")
def weights(ctx: Context, probes: Probes) -> dict:
    """How the built-in backbone's weights got there (missing / unexpected keys), or for a
    user model with a weights file (model.weights): whether its parameters hold the file's."""
    cfg = ctx.config.model
    if ctx.user_model:
        if cfg.weights is None:
            raise ProbeSkipped("user model without a weights file (model.weights): no weights "
                               "were promised to compare against")
        return _user_weights(base_model(ctx), cfg.weights)
    model = _builtin(ctx)
    info = model.info
    tensors = [k for k in model.backbone.model.state_dict()
               if not k.endswith("num_batches_tracked")]
    requested = (str(cfg.weights) if cfg.weights is not None
                 else "hub" if cfg.pretrained else "random")
    return {"source": "built-in", "requested": requested, "loaded": info.weights,
            "backbone_tensors": len(tensors), "missing": len(info.missing_keys),
            "unexpected": len(info.unexpected_keys),
            "missing_examples": list(info.missing_keys[:5]),
            "unexpected_examples": list(info.unexpected_keys[:5]),
            "backbone_frozen": cfg.freeze_backbone, "backbone": cfg.backbone}


def _user_weights(model: nn.Module, path: Any) -> dict:
    from clipdoctor.models.backbones import best_prefix, read_tensors

    file = read_tensors(path)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    prefix, _ = best_prefix(list(file), set(state))  # file keys may carry a wrapper's prefix
    named = {k[len(prefix):]: v for k, v in file.items() if k.startswith(prefix)}
    matched = [k for k in named if k in state and named[k].shape == state[k].shape]
    equal = [k for k in matched if torch.equal(named[k].to(state[k].dtype), state[k])]
    return {"source": "user", "requested": str(path), "file_tensors": len(file),
            "model_tensors": len(state), "matched": len(matched), "equal": len(equal),
            "missing": len(state) - len(equal),
            "differ_examples": [k for k in matched if k not in set(equal)][:5]}
