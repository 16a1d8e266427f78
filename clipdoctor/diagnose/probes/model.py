"""Model probes: what the model is, how it is wired, and how it behaves on a few clips.

They work on the built-in ClipClassifier and on the user's own `nn.Module`
((B, T, C, H, W) float -> (B, classes)); where a measurement needs clipdoctor's structure
(backbone, pool, head) a user model makes the probe raise ProbeSkipped.

- `model_summary`: parameters, output width, parts (the report's "model" section).
- `structure`: static inspection: RNNs, frozen BatchNorm left in train mode, and (where
  torch.fx can trace the model) a final softmax and `output[:, -1]` reads of bidirectional RNNs.
- `behaviour`: a small batch through the model: are the outputs probabilities, does the loss
  expect logits, does one clip's output reach other clips' inputs (batch and time mixed),
  which time steps of a bidirectional RNN's output are read, how RNNs are fed, and whether
  padding after the valid steps changes the prediction.
- `bn_drift`: BatchNorm running statistics of frozen layers before / after one training step.
- `loss_at_init`: the loss of the fresh model on real clips vs ln(K) (Karpathy's recipe).
- `label_range`: labels vs output width, and whether the loss accepts them.
- `weights`: how the backbone's (or a user model's promised) weights were loaded.
- `widths`: the narrowest per-frame / per-clip width on the way to the logits.
- `motion_features`: can a linear probe over time read the motion from the features the model
  pools (gap, with the RGB-difference stream when the model has one) as well as from 2x2-grid
  features (uses the shared `clip_features` probe).
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections import Counter
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.diagnose.probes import (Context, Probes, ProbeSkipped, base_model, clip_batch,
                                        datamodule, pick, probe)

log = logging.getLogger(__name__)

PROB_TOL = 1e-3  # rows of a softmax sum to 1 within ~1e-6 in float32; 1e-3 leaves room for fp16
SHIFT_TOL = 1e-4  # loss(z + c) == loss(z) to float precision when the loss applies its own softmax
LENGTH_NAMES = ("lengths", "length", "lens", "seq_lengths", "seq_lens")  # forward(clips, lengths)
INIT_CLIPS = 32  # clips for the loss at init at a 120 s budget: the mean loss to about +-0.05
MOTION_CLIPS = 600  # clips for the motion probes at a 120 s budget (PCA + fits: 2-4 s measured
#                    on 2 cores for resnet10t at 112 px, beyond the shared clip_features)
MOTION_PCA = 32  # per-frame PCA components: measured on the synthetic pairs, the full width
#                  (16k dims for resnet10t grid) generalises worse on few clips and takes 20 s
BOTTLENECK_PCA_CLIPS = 400  # clips for the bottleneck's linear probe at a 120 s budget


# ---------------------------------------------------------------------------------------------
# helpers

def _probe_batch(ctx: Context) -> tuple[Tensor, Tensor, str]:
    """A few clips (B != T, so swapped axes show in shapes) with labels: real training clips
    when a dataset is given, else seeded noise. Shared by the behavioural probes."""
    if "model_batch" not in ctx.cache:
        T, S = ctx.config.data.frames, ctx.config.data.size
        B = 2 if T != 2 else 3  # two clips suffice for the cross-clip test; B != T
        if ctx.data is not None:
            dm = datamodule(ctx)
            train = [s for s in dm.samples if s.split == "train"] or dm.samples
            if len(train) < 2:
                raise ProbeSkipped(f"need 2+ readable clips, found {len(train)}")
            x, y = clip_batch(ctx, pick(train, B, ctx.seed), seed=ctx.seed)
            source = "clips"
        else:
            g = torch.Generator().manual_seed(ctx.seed)
            x, y = torch.randn(B, T, 3, S, S, generator=g), torch.zeros(B, dtype=torch.long)
            source = "random"
        ctx.cache["model_batch"] = (x, y, source)
    return ctx.cache["model_batch"]


def _num_classes(ctx: Context) -> int | None:
    return len(ctx.data.classes) if ctx.data is not None and hasattr(ctx.data, "classes") else None


def _takes_lengths(model: nn.Module) -> bool:
    """Whether forward accepts valid lengths (by parameter name) besides the clips."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return any(name in params for name in LENGTH_NAMES)


def _length_kw(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return next(n for n in LENGTH_NAMES if n in params)


def _builtin(ctx: Context) -> nn.Module:
    """The built-in ClipClassifier, or ProbeSkipped for a user model."""
    if ctx.user_model:
        raise ProbeSkipped("user model: this measurement needs clipdoctor's ClipClassifier "
                           "(backbone, pool, head)")
    return base_model(ctx)


def _count(params: Any) -> int:
    return int(sum(p.numel() for p in params))


def _frozen_bns(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that track running statistics and whose affine parameters are all
    frozen (a frozen backbone's BatchNorm: training must not move it)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                out.append((name, m))
    return out


# ---------------------------------------------------------------------------------------------
# model_summary

@probe("model_summary")
def model_summary(ctx: Context, probes: Probes) -> dict:
    """Parameters (total, trainable), output width and parts; becomes the report's model
    section. A user model's output shape comes from one forward pass on noise."""
    model = base_model(ctx)
    total, trainable = _count(model.parameters()), _count(p for p in model.parameters()
                                                          if p.requires_grad)
    leaves = Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    out: dict = {"source": "user" if ctx.user_model else "built-in",
                 "class": type(model).__name__, "parameters": total, "trainable": trainable,
                 "frozen": total - trainable, "module_types": dict(leaves.most_common(12)),
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
    model = ctx.make_model()
    model.train()
    frozen = _frozen_bns(model)
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
# behaviour

class _RNNTrace:
    """Forward hooks on every RNN: the input's shape, and its output tensor kept with a
    retained gradient (so we can see which time steps the rest of the model reads)."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: dict[str, dict] = {}
        self.handles = [m.register_forward_hook(self._hook(n))
                        for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.RNNBase, inputs: tuple, output: Any) -> None:
            x, y = inputs[0], output[0]
            packed = hasattr(x, "batch_sizes")
            rec = {"module": module, "packed": packed,
                   "input_shape": None if packed else list(x.shape), "output": None}
            if not packed and isinstance(y, Tensor) and y.requires_grad:
                y.retain_grad()
                rec["output"] = y
            self.seen[name] = rec
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def report(self, B: int, T: int) -> list[dict]:
        out = []
        for name, rec in self.seen.items():
            m = rec["module"]
            r = {"name": name, "bidirectional": bool(m.bidirectional),
                 "batch_first": bool(m.batch_first), "packed": rec["packed"],
                 "input_shape": rec["input_shape"], "fed": None,
                 "backward_last_share": None, "forward_last_share": None}
            shape = rec["input_shape"]
            if shape is not None and len(shape) == 3 and B != T:
                # (batch, time) as the RNN reads its input
                lead = (shape[0], shape[1]) if m.batch_first else (shape[1], shape[0])
                r["fed"] = ("as declared" if lead == (B, T) else
                            "swapped" if lead == (T, B) else "other")
            y = rec["output"]
            if m.bidirectional and y is not None and y.grad is not None:
                g = y.grad.detach().abs()
                g = g if m.batch_first else g.transpose(0, 1)  # -> (batch, time, 2H)
                H = m.hidden_size
                for half, sl in (("forward", slice(0, H)), ("backward", slice(H, 2 * H))):
                    per_step = g[..., sl].sum(dim=(0, 2))  # (time,)
                    total = float(per_step.sum())
                    r[f"{half}_last_share"] = float(per_step[-1]) / total if total > 0 else None
                r["output_read"] = bool(g.sum() > 0)
            out.append(r)
        return out


@probe("behaviour", min_s=2.0)
def behaviour(ctx: Context, probes: Probes) -> dict:
    """Behavioural tests on a few clips in eval mode (BatchNorm and dropout then neither mix
    nor perturb clips): output kind, what the loss expects, where gradients land (other
    clips, own frames, RNN time steps), how RNNs are fed, and what padding does."""
    x, y, source = _probe_batch(ctx)
    model = ctx.make_model().eval()
    B, T = int(x.shape[0]), int(x.shape[1])
    res: dict = {"input": source, "batch": B, "frames": T,
                 "batch_statistics_layers": _bypass_batch_statistics(model)}
    trace = _RNNTrace(model)
    xg = x.clone().requires_grad_(True)
    try:
        out = model(xg)
    finally:
        trace.remove()
    if not isinstance(out, Tensor):
        raise ProbeSkipped(f"the model returned {type(out).__name__}, not a tensor")
    res["output_shape"] = list(out.shape)
    res.update(_output_kind(out.detach()))
    if out.ndim == 2:
        res.update(_loss_kind(ctx.loss_fn, int(out.shape[1]), out.detach(), y))
    res.update(_gradient_tests(out, xg, trace, ctx.seed))
    with torch.no_grad():
        res["padding"] = _padding_test(ctx, model, x, out.detach())
    return res


def _bypass_batch_statistics(model: nn.Module) -> list[str]:
    """BatchNorm layers that use batch statistics even in eval mode (track_running_stats=False,
    or kept in train mode) mix clips by design: make them pass their input through, so only a
    mix-up of axes can link clips in the gradient test. Returns their names."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training
                                                                or not m.track_running_stats):
            m.register_forward_hook(lambda mod, inputs, output: inputs[0])
            names.append(name)
    return names


def _gradient_tests(out: Tensor, xg: Tensor, trace: _RNNTrace, seed: int) -> dict:
    """Backward of a random projection of all outputs (which RNN time steps are read), then of
    clip 0's output alone (which clips and frames it reaches). Random weights, because a
    softmax row's sum has no gradient."""
    B, T = int(xg.shape[0]), int(xg.shape[1])
    if not out.requires_grad:
        return {"rnns": trace.report(B, T),
                "gradient": "the output does not depend on the input (no gradient)"}
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * w).sum().backward(retain_graph=True)
    res: dict = {"rnns": trace.report(B, T)}
    xg.grad = None
    if out.ndim >= 1 and out.shape[0] == B:
        (out[0] * w[0]).sum().backward()
        res.update(_gradient_reach(xg.grad))
    return res


def _output_kind(o: Tensor) -> dict:
    o = o.float()
    finite = bool(torch.isfinite(o).all())
    if o.ndim != 2 or not finite or o.numel() == 0:
        return {"finite": finite, "probabilities": False, "log_probabilities": False,
                "unit_interval": False}
    lo, hi = float(o.min()), float(o.max())
    rows = o.sum(-1)
    return {"finite": True, "output_min": lo, "output_max": hi,
            "row_sum_max_dev": float((rows - 1).abs().max()),
            "unit_interval": lo >= -1e-6 and hi <= 1 + 1e-6,
            "probabilities": lo >= -1e-6 and hi <= 1 + 1e-6
            and float((rows - 1).abs().max()) < PROB_TOL,
            "log_probabilities": hi <= 1e-6 and float(o.logsumexp(-1).abs().max()) < PROB_TOL}


def _loss_kind(loss_fn: Callable, width: int, out: Tensor, y: Tensor) -> dict:
    """Does the loss apply its own softmax (shift invariance of cross-entropy), and what it
    gives on the model's actual outputs."""
    g = torch.Generator().manual_seed(0)
    yy = y.clamp(0, max(width - 1, 0))[: len(out)]
    z = torch.randn(len(yy), width, generator=g)
    try:
        with torch.no_grad():
            a, b = float(loss_fn(z, yy)), float(loss_fn(z + 3.0, yy))
            on_out = float(loss_fn(out.float(), yy))
    except Exception as e:  # noqa: BLE001
        return {"loss_error": f"{type(e).__name__}: {str(e)[:200]}"}
    return {"loss_shift_invariant": abs(a - b) < SHIFT_TOL * max(1.0, abs(a)),
            "loss_on_outputs": on_out}


def _gradient_reach(grad: Tensor | None) -> dict:
    """Where the gradient of clip 0's output lands: other clips (should be exactly 0) and
    which of clip 0's own frames."""
    if grad is None:
        return {"gradient": "no gradient reached the input"}
    per = torch.nan_to_num(grad.detach().abs()).flatten(2).sum(-1)  # (B, T)
    own, other = float(per[0].sum()), float(per[1:].sum())
    leak = other / own if own > 0 else (math.inf if other > 0 else 0.0)
    return {"cross_sample_leak": leak, "own_gradient": own, "other_gradient": other,
            "own_frames_reached": int((per[0] > 0).sum())}


def _padding_test(ctx: Context, model: nn.Module, x: Tensor, full: Tensor) -> dict:
    """Half of each clip's frames valid, the rest zero padding: how far the outputs move
    from the unpadded clip (or, when the model needs all T steps but takes lengths, from the
    same clip padded with noise), as a share of how far the outputs of two clips lie apart."""
    B, T = x.shape[:2]
    res: dict = {"pipeline_pads": ctx.config.data.short == "pad",
                 "takes_lengths": _takes_lengths(model)}
    if T < 2 or B < 2 or full.ndim != 2 or full.shape[0] != B:
        res["skipped"] = "needs 2+ clips of 2+ frames and (B, K) outputs"
        return res
    L = T // 2
    valid = x[:, :L]
    zeros = torch.zeros_like(x[:, L:])
    spread = float((full - full.roll(1, 0)).norm(dim=-1).mean())  # two different clips apart
    kw = {_length_kw(model): torch.full((B,), L, dtype=torch.long)} if res["takes_lengths"] else {}
    padded = model(torch.cat([valid, zeros], 1), **kw)
    try:
        change = float((padded - model(valid)).norm(dim=-1).mean())
        res["reference"] = "unpadded"
    except Exception as e:  # noqa: BLE001 — a model that needs exactly T steps
        res["unpadded_error"] = f"{type(e).__name__}: {str(e)[:120]}"
        if not kw:
            res["skipped"] = "the model takes neither shorter clips nor lengths"
            return res
        noise = torch.randn(zeros.shape, generator=torch.Generator().manual_seed(1))
        change = float((padded - model(torch.cat([valid, noise], 1), **kw)).norm(dim=-1).mean())
        res["reference"] = "noise padding"
    res.update({"valid_steps": L, "steps": T, "output_change": change, "clip_spread": spread,
                "relative_change": change / spread if spread > 0 else
                (math.inf if change > 0 else 0.0)})
    if res["pipeline_pads"]:
        res.update(_short_clips(ctx))
    return res


def _short_clips(ctx: Context) -> dict:
    """How many clips have fewer frames than T (those the pipeline pads)."""
    if ctx.data is None:
        return {"short_clips": None}
    dm = datamodule(ctx)
    T = ctx.config.data.frames
    samples = pick(dm.samples, ctx.budget.scale(2000, minimum=100), ctx.seed)
    if dm.cache is not None:
        counts = [len(dm.cache.frames(s)) for s in samples]
    else:
        from clipdoctor.data.cache import probe_sample

        counts = [probe_sample(s).frames for s in samples]
    return {"short_clips": sum(c < T for c in counts), "clips_checked": len(counts)}


# ---------------------------------------------------------------------------------------------
# bn_drift

@probe("bn_drift", min_s=1.0)
def bn_drift(ctx: Context, probes: Probes) -> dict:
    """Running statistics of BatchNorm layers with frozen parameters, before and after one
    training step (train mode, as the user's loop would run it)."""
    x, y, source = _probe_batch(ctx)
    model = ctx.make_model()
    model.train()
    frozen = _frozen_bns(model)
    res: dict = {"input": source, "frozen_batchnorm": len(frozen),
                 "train_mode": [n for n, m in frozen if m.training]}
    if not frozen:
        return {**res, "drifted": [], "max_relative_change": 0.0}
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in frozen}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = ctx.make_optimizer(params) if params else None
    out = model(x)
    try:
        loss = ctx.loss_fn(out, y)
        if opt is not None and loss.requires_grad:
            opt.zero_grad()
            loss.backward()
            opt.step()
    except Exception as e:  # noqa: BLE001 — statistics moved in the forward pass already
        res["step_error"] = f"{type(e).__name__}: {str(e)[:120]}"
    changes = {}
    for n, m in frozen:
        m0, v0 = before[n]
        dm = float((m.running_mean - m0).abs().max() / (m0.abs().mean() + 1e-3))
        dv = float((m.running_var - v0).abs().max() / (v0.abs().mean() + 1e-3))
        changes[n] = max(dm, dv)
    drifted = [n for n, c in changes.items() if c > 0]
    return {**res, "drifted": drifted, "max_relative_change": max(changes.values()),
            "changes": {n: changes[n] for n in drifted[:10]}}


# ---------------------------------------------------------------------------------------------
# loss_at_init

@probe("loss_at_init", min_s=2.0)
def loss_at_init(ctx: Context, probes: Probes) -> dict:
    """Mean loss of the fresh model (train mode, as the first step sees it) on real clips,
    with ln(K) and how peaked / collapsed the first predictions are."""
    K = _num_classes(ctx)
    if K is None:
        raise ProbeSkipped("no dataset given: the loss at init needs labelled clips")
    x, y, cached = _init_inputs(ctx, probes)
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    losses, outs = [], []
    try:
        with torch.no_grad():
            for i in range(0, len(x), 8):
                o = model.forward_cached(x[i:i + 8]) if cached else model(x[i:i + 8])
                losses.append(float(ctx.loss_fn(o, y[i:i + 8])) * len(o))
                outs.append(o.float())
    except Exception as e:  # noqa: BLE001 — loss-output-mismatch reports why
        return {"error": f"{type(e).__name__}: {str(e)[:200]}", "ln_k": math.log(K), "classes": K}
    o = torch.cat(outs)
    kind = _output_kind(o)
    p = o if kind["probabilities"] else o.softmax(-1)
    top = p.argmax(-1)
    loss = sum(losses) / len(o)
    return {"loss": loss, "ln_k": math.log(K), "classes": K, "ratio": loss / math.log(K) if K > 1
            else None, "clips": len(o), "mean_max_prob": float(p.max(-1).values.mean()),
            "top_class_share": float(torch.bincount(top).max()) / len(top),
            "logit_std": float(o.std()), "finite": kind["finite"]}


def _init_inputs(ctx: Context, probes: Probes) -> tuple[Tensor, Tensor, bool]:
    """Training clips (or the frozen features the built-in head trains on) for the loss at
    init: the training probes' inputs (`training_data`, measured once for all of them), else
    a few freshly decoded clips when that probe cannot run."""
    n = ctx.budget.scale(INIT_CLIPS, minimum=8)
    try:
        td = probes.get("training_data")
    except ProbeSkipped:
        td = None
    if isinstance(td, dict) and "_x_train" in td:
        return td["_x_train"][:n], td["_y_train"][:n], bool(td.get("cached"))
    dm = datamodule(ctx)
    train = [s for s in dm.samples if s.split == "train"] or dm.samples
    x, y = clip_batch(ctx, pick(train, n, ctx.seed), seed=ctx.seed)
    return x, y, False


# ---------------------------------------------------------------------------------------------
# label_range

@probe("label_range")
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
                value = float(ctx.loss_fn(torch.zeros(2, W), yy))
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
    from clipdoctor.models.backbones import _best_prefix, _read_tensors

    file = _read_tensors(path)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    prefix, _ = _best_prefix(list(file), set(state))  # file keys may carry a wrapper's prefix
    named = {k[len(prefix):]: v for k, v in file.items() if k.startswith(prefix)}
    matched = [k for k in named if k in state and named[k].shape == state[k].shape]
    equal = [k for k in matched if torch.equal(named[k].to(state[k].dtype), state[k])]
    return {"source": "user", "requested": str(path), "file_tensors": len(file),
            "model_tensors": len(state), "matched": len(matched), "equal": len(equal),
            "missing": len(state) - len(equal),
            "differ_examples": [k for k in matched if k not in set(equal)][:5]}


# ---------------------------------------------------------------------------------------------
# widths (feature bottleneck)

@probe("widths")
def widths(ctx: Context, probes: Probes) -> dict:
    """The narrowest width on the way from per-frame features to the logits (built-in:
    pooled feature, projection, head read-out; user model: RNN outputs and the input of the
    last Linear producing the logits). When it is under K - 1, a linear probe of the pooled
    features reduced to that width is compared with the full width (built-in only)."""
    K = _num_classes(ctx)
    model = base_model(ctx)
    if not ctx.user_model:
        parts = {"pooled feature (model.pool)": model.feature_dim,
                 "projection (model.proj_dim)": ctx.config.model.proj_dim,
                 "head read-out (model.hidden)": int(getattr(model.head, "out_dim", 0)) or None}
    else:
        parts = {f"{n} output": int(m.hidden_size) * (2 if m.bidirectional else 1)
                 for n, m in model.named_modules() if isinstance(m, nn.RNNBase)}
        W = probes.get("model_summary").get("output_width")
        heads = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and W is not None and m.out_features == W]
        if heads:
            n, m = heads[-1]
            parts[f"{n} input (classifier)"] = int(m.in_features)
    parts = {k: v for k, v in parts.items() if v}
    if not parts:
        raise ProbeSkipped("found no RNN or classifier Linear layer to read widths from")
    where = min(parts, key=parts.get)
    res = {"classes": K, "widths": parts, "narrowest": parts[where], "narrowest_at": where}
    if K is not None and parts[where] < K - 1 and not ctx.user_model:
        res.update(_bottleneck_probe(ctx, probes, parts[where]))
    return res


def _bottleneck_probe(ctx: Context, probes: Probes, width: int) -> dict:
    """Linear-probe accuracy of time-averaged pooled features, full width vs PCA to `width`."""
    try:
        feats, labels, groups = _model_features(ctx, probes)
    except ProbeSkipped as e:
        return {"probe_skipped": str(e)}
    X = feats.mean(1)  # (N, T, D) -> (N, D)
    full = _cv_accuracy(X, labels, groups, ctx.seed)
    narrow = _cv_accuracy(_pca(X, width, ctx.seed), labels, groups, ctx.seed)
    return {"probe_full_accuracy": full, "probe_narrow_accuracy": narrow, "probe_clips": len(X)}


# ---------------------------------------------------------------------------------------------
# motion_features

@probe("motion_features", min_s=3.0)
def motion_features(ctx: Context, probes: Probes) -> dict:
    """A linear probe over time on the features the model pools vs 2x2-grid features of the
    same frames; and how much each changes from frame to frame relative to its spread.

    With the RGB-difference input (model.rgb_diff) on a global pool, the features the model
    uses are the frames' and the frame differences' pooled vectors side by side, and the probe
    measures those (a backbone pass over the differences). Feature differences
    (model.feature_diff) change nothing here: the probe already reads late-minus-early
    differences of the pooled features."""
    model = _builtin(ctx)
    cfg = ctx.config.model
    used = "gap" if cfg.pool == "gap" or (cfg.pool == "grid" and cfg.grid == 1) else cfg.pool
    if used != "gap":  # grid keeps the position the probe asks about; attention learns it
        return {"pool": cfg.pool, "grid": cfg.grid, "used": used,
                "skipped": f"pool '{cfg.pool}' keeps position: nothing to compare"}
    if cfg.rgb_diff != "off":
        used = "gap+rgbdiff"
    cf = probes.get("clip_features")
    grid, gap = _as_array(cf["_grid"]), _as_array(cf["_gap"])
    labels = np.asarray(cf["labels"])
    groups = cf.get("groups")
    keep = _subsample(labels, ctx.budget.scale(MOTION_CLIPS, minimum=60), ctx.seed)
    grid, gap, labels = grid[keep], gap[keep], labels[keep]
    groups = [groups[i] for i in keep] if groups is not None else None
    if used == "gap+rgbdiff":
        diff = _difference_gap_features(ctx, model, [cf["names"][i] for i in keep])
        gap = np.concatenate([gap, diff], axis=-1)  # (N, T, C) + (N, T, C) -> (N, T, 2C)
    res: dict = {"pool": cfg.pool, "grid": cfg.grid, "used": used, "clips": int(len(labels)),
                 "classes": int(len(np.unique(labels))),
                 "chance": float(np.bincount(labels).max() / len(labels)),
                 "change_grid": _temporal_change(grid), "change_gap": _temporal_change(gap)}
    res["change_ratio"] = (res["change_gap"] / res["change_grid"]
                           if res["change_grid"] > 0 else None)
    if len(np.unique(labels)) < 2:
        res["skipped"] = "needs clips of 2+ classes"
        return res
    res["accuracy_grid"] = _cv_accuracy(_time_probe_features(grid, ctx.seed), labels, groups,
                                        ctx.seed)
    res["accuracy_gap"] = _cv_accuracy(_time_probe_features(gap, ctx.seed), labels, groups,
                                       ctx.seed)
    res["accuracy_used"] = res["accuracy_gap"]
    return res


@torch.no_grad()
def _difference_gap_features(ctx: Context, model: nn.Module, names: list[str]) -> np.ndarray:
    """Globally pooled backbone features of the frame differences x_t - x_{t-1} of the named
    clips, through the backbone the model sends them to, in eval mode: (N, T, C)."""
    from clipdoctor.models.motion import time_differences

    by_name = {s.name: s for s in datamodule(ctx).samples}
    backbone = model.diff_backbone if model.diff_backbone is not None else model.backbone
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for i in range(0, len(names), 8):
            clips, _ = clip_batch(ctx, [by_name[n] for n in names[i:i + 8]])  # (B, T, C, H, W)
            d = time_differences(clips)  # (B, T, C, H, W)
            f = backbone(d.flatten(0, 1)).mean(dim=(2, 3))  # (B*T, C, H, W) -> (B*T, C', h, w) -> (B*T, C')
            out.append(f.view(*d.shape[:2], -1).float().numpy())  # (B*T, C') -> (B, T, C')
    finally:
        backbone.train(was_training)
    return np.concatenate(out)


def _as_array(a: Any) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a, np.float32)


def _subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(labels), n, replace=False))


def _temporal_change(f: np.ndarray) -> float:
    """Mean frame-to-frame step of the features over their mean distance from the global
    mean: near 0 when the features stay put inside a clip."""
    if f.shape[1] < 2:
        return 0.0
    step = np.linalg.norm(np.diff(f, axis=1), axis=-1).mean()
    flat = f.reshape(-1, f.shape[-1])
    spread = np.linalg.norm(flat - flat.mean(0), axis=-1).mean()
    return float(step / spread) if spread > 0 else 0.0


def _pca(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    Z = StandardScaler().fit_transform(X)
    k = max(1, min(k, Z.shape[0] - 1, Z.shape[1]))
    with threadpool_limits(1):  # small problems: BLAS threads only contend on 2 cores (~70x)
        return PCA(k, random_state=seed,
                   svd_solver="randomized" if k < 64 else "auto").fit_transform(Z)


def _time_probe_features(f: np.ndarray, seed: int) -> np.ndarray:
    """(N, T, D) -> (N, 2k): per-frame PCA to k components, then the clip mean and the
    late-minus-early difference (second half mean - first half mean): the "feature
    differences" probe; on the synthetic pairs it beat the T x k concatenation by 0.1-0.2."""
    N, T, D = f.shape
    Z = _pca(f.reshape(N * T, D), MOTION_PCA, seed).reshape(N, T, -1)
    h = max(1, T // 2)
    return np.concatenate([Z.mean(1), Z[:, h:].mean(1) - Z[:, :h].mean(1)], axis=1)


def _cv_accuracy(X: np.ndarray, labels: np.ndarray, groups: list | None, seed: int) -> float | None:
    """Mean held-out accuracy of a logistic regression, 3-fold stratified (group-aware when
    clips carry source groups), repeated 3x on small sets."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from threadpoolctl import threadpool_limits
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels)
    folds = int(min(3, counts[counts > 0].min()))
    if folds < 2:
        return None
    repeats = 3 if len(labels) < 300 else 1
    scores = []
    keys = None
    if groups is not None and any(g is not None for g in groups):
        keys = np.array([g if g is not None else f"\0{i}" for i, g in enumerate(groups)])
    for r in range(repeats):
        if keys is not None:
            splits = StratifiedGroupKFold(folds, shuffle=True,
                                          random_state=seed + r).split(X, labels, keys)
        else:
            splits = StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(X, labels)
        for tr, te in splits:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
            with threadpool_limits(1):  # see _pca
                clf.fit(X[tr], labels[tr])
            scores.append(float((clf.predict(X[te]) == labels[te]).mean()))
    return float(np.mean(scores))


def _model_features(ctx: Context, probes: Probes) -> tuple[np.ndarray, np.ndarray, list | None]:
    """The pooled per-frame features the built-in model uses, from `clip_features`."""
    cfg = ctx.config.model
    cf = probes.get("clip_features")
    if cfg.pool == "gap" or (cfg.pool == "grid" and cfg.grid == 1):
        f = cf["_gap"]
    elif cfg.pool == "grid" and cfg.grid == 2:
        f = cf["_grid"]
    else:
        raise ProbeSkipped(f"no cached features for pool '{cfg.pool}' (grid {cfg.grid})")
    labels = np.asarray(cf["labels"])
    keep = _subsample(labels, ctx.budget.scale(BOTTLENECK_PCA_CLIPS, minimum=60), ctx.seed)
    groups = cf.get("groups")
    return (_as_array(f)[keep], labels[keep],
            [groups[i] for i in keep] if groups is not None else None)
