"""Behavioural model probes: a few clips through a fresh model, and what it does with them.

Like the static probes (`model.py`, whose helpers they share) they work on the built-in
ClipClassifier and on the user's own `nn.Module`.

- `behaviour`: a small batch through the model: are the outputs probabilities, does the loss
  expect logits, does one clip's output reach other clips' inputs (batch and time mixed),
  which time steps of a bidirectional RNN's output are read, how RNNs are fed, and whether
  padding after the valid steps changes the prediction.
- `bn_drift`: BatchNorm running statistics of frozen layers before / after one training step.
- `loss_at_init`: the loss of the fresh model on real clips vs ln(K) (Karpathy's recipe).
- `input_dependence`: how far the fresh model's logits move when its clips are replaced by
  other clips (of other classes), by other clips of the same batch, by flat clips, and by
  numerical noise alone (the noise floor): does the output depend on the input at all?
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import (Context, Probes, work_clock, ProbeSkipped, clip_batch, datamodule,
                                        is_user_data,
                                        pick, probe, samples, uniform_loss)
from clipdoctor.doctor.probes.model import (LENGTH_NAMES, _frozen_bns, _num_classes,
                                              _takes_lengths, trained_parameters)

# PROB_TOL and SHIFT_TOL judge identities, not data-dependent changes (so no noise floor): a
# softmax row sums to 1 whatever the clips, and a loss with its own softmax is shift-invariant on
# any logits (here seeded normal ones, at scale 1, compared relative to the loss)
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
            every = samples(ctx)  # clipdoctor's readable clips, or the user's items
            train = [s for s in every if s.split == "train"] or every
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
    res: dict = {"pipeline_pads": _pads(ctx), "takes_lengths": _takes_lengths(model)}
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


def _pads(ctx: Context) -> bool:
    """Whether the data the model is fed is padded: clipdoctor's pipeline under
    `data.short: pad`; the user's own Datasets when their items carry a length (padded along T
    by the collate, or by the Dataset itself up to a fixed T)."""
    if is_user_data(ctx.data):
        return bool(ctx.data.with_length)
    return ctx.config.data.short == "pad"


def _short_clips(ctx: Context) -> dict:
    """How many clips have fewer frames than T (those the pipeline pads); for the user's own
    Datasets with lengths, how many of a sample of items have a length below the longest clip
    (their collate, or the Dataset itself, pads those)."""
    if ctx.data is None:
        return {"short_clips": None}
    if is_user_data(ctx.data):
        seen = [ctx.data.clip(s) for s in pick(ctx.data.readable(),
                                               ctx.budget.scale(64, minimum=16), ctx.seed)]
        t = max(int(c.shape[0]) for c, _ in seen)
        return {"short_clips": sum(n is not None and n < t for _, n in seen),
                "clips_checked": len(seen)}
    dm = datamodule(ctx)
    T = ctx.config.data.frames
    samples = pick(dm.samples, ctx.budget.scale(2000, minimum=100), ctx.seed)
    counts = [dm.frames.count(s) for s in samples]
    return {"short_clips": sum(c < T for c in counts), "clips_checked": len(counts)}


# ---------------------------------------------------------------------------------------------
# bn_drift

@probe("bn_drift", min_s=1.0)
def bn_drift(ctx: Context, probes: Probes) -> dict:
    """Running statistics of the BatchNorm layers of frozen parts, before and after one
    training step (`model.train()`, as the user's loop would run it). Frozen is measured
    (`trained_parameters`): requires_grad=False, no gradient (`torch.no_grad()` / `.detach()`
    in forward) or left out of the optimizer."""
    x, y, source = _probe_batch(ctx)
    trained = trained_parameters(ctx)
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    frozen = _frozen_bns(model, trained.names)
    res: dict = {"input": source, "frozen_batchnorm": len(frozen),
                 "train_mode": [n for n, m in frozen if m.training],
                 "frozen_from": trained.how}
    if not frozen:
        return {**res, "drifted": [], "max_relative_change": 0.0}
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in frozen}
    try:
        opt = ctx.make_optimizer(model) if trained.names else None
    except Exception as e:  # noqa: BLE001 — the statistics move in the forward pass anyway
        opt, res["optimizer_error"] = None, f"{type(e).__name__}: {str(e)[:120]}"
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
        starts = list(range(0, len(x), 8))
        if len(starts) > 1 and len(x) - starts[-1] == 1:  # never a batch of one in train mode
            starts.pop()  # (a BatchNorm1d head raises on it): the last chunk takes 9 clips
        with torch.no_grad():
            for i, j in zip(starts, starts[1:] + [len(x)]):
                o = model.forward_cached(x[i:j]) if cached else model(x[i:j])
                losses.append(float(ctx.loss_fn(o, y[i:j])) * len(o))
                outs.append(o.float())
    except Exception as e:  # noqa: BLE001 — loss-output-mismatch reports why
        return {"error": f"{type(e).__name__}: {str(e)[:200]}", "ln_k": math.log(K), "classes": K}
    o = torch.cat(outs)
    kind = _output_kind(o)
    p = o if kind["probabilities"] else o.softmax(-1)
    top = p.argmax(-1)
    loss = sum(losses) / len(o)
    # a uniform guess's loss: ln K for cross-entropy, with class weights or label smoothing
    # too (about ln K with both: PyTorch weights the smoothing term per class); measured with
    # the loss itself when it is a known cross-entropy, the reference of `ratio`
    uniform = uniform_loss(ctx.loss_fn, y[:len(o)], int(o.shape[-1])) if o.ndim == 2 else None
    ref = uniform if uniform and uniform > 0 else math.log(K)
    return {"loss": loss, "ln_k": math.log(K), "uniform_loss": uniform, "classes": K,
            "ratio": loss / ref if K > 1 else None, "clips": len(o),
            "mean_max_prob": float(p.max(-1).values.mean()),
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
    every = samples(ctx)  # clipdoctor's readable clips, or the user's items
    train = [s for s in every if s.split == "train"] or every
    x, y = clip_batch(ctx, pick(train, n, ctx.seed), seed=ctx.seed)
    return x, y, False


# ---------------------------------------------------------------------------------------------
# input_dependence

INPUT_CLIPS = 4  # clips per batch at a 120 s budget (2 at the least): the change from replacing
# them is a maximum over all their logits, so a few clips show any real dependence (about 4
# passes over them in all: a user's ResNet CNN-LSTM at 224 px costs seconds a pass on 2 cores)
FLOAT_REL = 1e-6  # float32 rounding at the logits' scale: eps 1.2e-7 times the ~8 roundings a
# reordered reduction accumulates (measured batch-reorder noise: exactly 0 on CPU for the
# built-in model and user CNN-LSTMs, batches of 2 to 8 clips, so this term sets the floor)
CONFIRM_BELOW = 1e3  # a fresh model whose logits move less than 1000x the noise floor is trained
# CONFIRM_STEPS steps and measured again: a zero-initialised last layer ignores the input only
# until its first update. 1000x is 100x the factor the check uses (checks' INPUT_FACTOR), so
# whenever the check could fire it has the trained measurement too (healthy fresh models
# measured 4.0e3x and more: they are not retrained)
CONFIRM_STEPS = 3  # two stacked zero-initialised layers need two updates before the output moves


@probe("input_dependence", min_s=1.0)
def input_dependence(ctx: Context, probes: Probes) -> dict:
    """A fresh model in eval mode (no dropout, BatchNorm on running statistics: each clip's
    logits depend on that clip alone) on a batch of real clips, and on

    - other real clips, each of another class than the clip it replaces (`replaced_change`),
    - the same clips moved one place along the batch (`shuffled_change`: each row now holds
      another clip of the batch),
    - flat clips of each clip's mean value (`constant_change`, the first two clips),

    each the largest absolute logit difference. The noise floor is what the logits move by
    numerical noise alone: the same clips in another batch order and in a smaller batch
    (`reorder_noise`), and never less than FLOAT_REL x max|logit| (`float_floor`, float32
    rounding at the logits' scale). When the change from other clips is within CONFIRM_BELOW x
    the floor, the model is trained CONFIRM_STEPS steps on the clips and measured again
    (`trained`)."""
    a, ya, b, yb, source = _replacement_batches(ctx)
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    fresh = _dependence(model, a, b)
    res: dict = {"input": source, "clips": len(a),
                 "other_class_pairs": int((ya != yb).sum()) if source == "clips" else None,
                 "fresh": fresh, "trained": None, "float_rel": FLOAT_REL,
                 "confirm_below": CONFIRM_BELOW}
    if fresh["input_change"] <= CONFIRM_BELOW * fresh["noise_floor"]:
        steps, error = _train_a_little(ctx, model, a, ya)
        res["trained_steps"] = steps
        if error:
            res["trained_error"] = error
        if steps:
            res["trained"] = _dependence(model, a, b)
    return res


def _replacement_batches(ctx: Context) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(clips, labels, other clips, their labels, source): real training clips, each paired
    with another clip of a different class where the data allows; seeded noise clips when
    no dataset is given."""
    n = ctx.budget.scale(INPUT_CLIPS, minimum=2)
    if ctx.data is None:
        T, S = ctx.config.data.frames, ctx.config.data.size
        g = torch.Generator().manual_seed(ctx.seed)
        x = torch.randn(2 * n, T, 3, S, S, generator=g)
        y = torch.zeros(2 * n, dtype=torch.long)
        return x[:n], y[:n], x[n:], y[n:], "random"
    every = samples(ctx)
    train = [s for s in every if s.split == "train"]
    if len(train) < 4:
        train = list(every)
    chosen = pick(train, 2 * n, ctx.seed)
    if len(chosen) < 4:
        raise ProbeSkipped(f"needs 4+ readable clips (2 to replace 2), found {len(chosen)}")
    x, y = clip_batch(ctx, chosen, seed=ctx.seed)
    n = len(y) // 2
    a, ya, b, yb = x[:n], y[:n], x[n:2 * n], y[n:2 * n]
    order = _partners(ya.tolist(), yb.tolist())
    return a, ya, b[order], yb[order], "clips"


def _partners(ya: list[int], yb: list[int]) -> list[int]:
    """An order of the other clips giving clip i a partner of another class where possible."""
    free = list(range(len(yb)))
    order = []
    for label in ya:
        j = next((j for j in free if yb[j] != label), free[0])
        free.remove(j)
        order.append(j)
    return order


def _outputs(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != len(x):
        raise ProbeSkipped(f"the model returned {type(out).__name__}"
                           f"{tuple(out.shape) if isinstance(out, Tensor) else ''} for "
                           f"{len(x)} clips, not one row of logits per clip")
    out = out.detach().double().reshape(len(x), -1)
    if not bool(torch.isfinite(out).all()):
        raise ProbeSkipped("the model's outputs are not finite (nan-loss says why)")
    return out


@torch.no_grad()
def _dependence(model: nn.Module, a: Tensor, b: Tensor) -> dict:
    """The changes and the noise floor of section `input_dependence`, in eval mode."""
    model.eval()
    n = len(a)
    out = _outputs(model, a)
    replaced = _outputs(model, b)
    rolled = _outputs(model, a.roll(1, 0))
    # flat clips of each clip's mean value, in the clips' own dtype (a user's uint8 included)
    two = a[:2]
    flat = two.double().mean(dim=tuple(range(1, a.ndim)), keepdim=True).expand_as(two).to(a.dtype)
    constant = _outputs(model, flat)
    noise = float((rolled.roll(-1, 0) - out).abs().max())  # the same clips, another order
    if n >= 4:  # the same clips in a smaller batch (other kernel blocking); never a batch of one
        half = n // 2
        noise = max(noise, float((_outputs(model, a[:half]) - out[:half]).abs().max()))
    scale = float(out.abs().max())
    float_floor = FLOAT_REL * scale
    res = {"replaced_change": float((replaced - out).abs().max()),
           "shuffled_change": float((rolled - out).abs().max()),
           "constant_change": float((constant - out[:2]).abs().max()),
           "reorder_noise": noise, "float_floor": float_floor,
           "noise_floor": max(noise, float_floor), "logit_scale": scale,
           "clip_spread": float((out - out.roll(1, 0)).abs().max())}
    # what replacing the input moves: other real clips, from outside the batch or inside it
    res["input_change"] = max(res["replaced_change"], res["shuffled_change"])
    return res


def _train_a_little(ctx: Context, model: nn.Module, x: Tensor, y: Tensor
                    ) -> tuple[int, str | None]:
    """CONFIRM_STEPS optimizer steps on (x, y) (train mode, the run's optimizer and loss) ->
    (steps taken, why it stopped early or None)."""
    from clipdoctor.doctor.probes.training import _optimizer  # the run's optimizer, one place

    try:
        opt = _optimizer(ctx, model)
    except ProbeSkipped as e:
        return 0, str(e)
    torch.manual_seed(ctx.seed)
    model.train()
    steps = 0
    deadline = ctx.budget.deadline()
    try:
        for _ in range(CONFIRM_STEPS):
            if steps and work_clock() > deadline:
                return steps, f"stopped after {steps} steps: the time for this check was spent"
            opt.zero_grad(set_to_none=True)
            loss = ctx.loss_fn(model(x), y)
            if not loss.requires_grad:
                return steps, "the loss does not depend on any trainable parameter"
            if not bool(torch.isfinite(loss)):
                return steps, "the loss is not finite"
            loss.backward()
            opt.step()
            steps += 1
    except Exception as e:  # noqa: BLE001 — the fresh measurement stands on its own
        return steps, f"{type(e).__name__}: {str(e)[:160]}"
    finally:
        model.eval()
    return steps, None
