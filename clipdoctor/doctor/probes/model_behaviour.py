"""Behavioural model probes: a few clips through a fresh model, and what it does with them.

Like the static probes (`model.py`, whose helpers they share) they work on the built-in
ClipClassifier and on the user's own `nn.Module`.

- `behaviour`: a small batch through the model: are the outputs probabilities, does the loss
  expect logits, does one clip's output reach other clips' inputs (batch and time mixed),
  which time steps of a bidirectional RNN's output are read, how RNNs are fed, and whether
  padding after the valid steps changes the prediction.
- `bn_drift`: BatchNorm running statistics of frozen layers before / after one training step.
- `loss_at_init`: the loss of the fresh model on real clips vs ln(K) (Karpathy's recipe).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import (Context, Probes, ProbeSkipped, clip_batch, datamodule,
                                        pick, probe)
from clipdoctor.doctor.probes.model import (LENGTH_NAMES, _frozen_bns, _num_classes,
                                              _takes_lengths)

PROB_TOL = 1e-3  # rows of a softmax sum to 1 within ~1e-6 in float32; 1e-3 leaves room for fp16
SHIFT_TOL = 1e-4  # loss(z + c) == loss(z) to float precision when the loss applies its own softmax
INIT_CLIPS = 32  # clips for the loss at init at a 120 s budget: the mean loss to about +-0.05


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


def _length_kw(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return next(n for n in LENGTH_NAMES if n in params)


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
    counts = [dm.frames.count(s) for s in samples]
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

@probe("loss_at_init", min_s=2.0, needs=("training_data",))
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
