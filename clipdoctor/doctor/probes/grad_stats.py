"""The `grad_stats` probe: per-layer gradient norms, zero ReLU outputs and saturated tanh /
sigmoid inputs over a few steps at the config's LR on a fresh model (AUTOTRAINER,
DeepDiagnosis), and the first non-finite value.

Only what training updates is watched (`trained_parameters`): a frozen part (requires_grad
False, run under `torch.no_grad()` / `.detach()`ed in forward, or left out of the optimizer)
has no gradient by design, which is no vanishing gradient, and its units are not the
training's to kill."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import Context, Probes, ProbeSkipped, probe
from clipdoctor.doctor.probes.model import frozen_modules, trained_parameters
from clipdoctor.doctor.probes.results import (Activations, ActivationSteps, GradStats,
                                                NonFiniteStep)
from clipdoctor.doctor.probes.training import (SHARE, _batches, _clip_value, _finite,
                                                 _forward, _fresh_run)

GRAD_STEPS = 8  # steps of the gradient / activation monitor
SATURATION_X = 5.0  # DeepDiagnosis: a tanh / sigmoid input with |x| >= 5 is saturated


class _ActivationMonitor:
    """Forward hooks: share of exactly-zero ReLU outputs (and channels zero everywhere), and
    share of tanh / sigmoid inputs with |x| >= 5 (for RNNs: the input part of the gates)."""

    def __init__(self, model: nn.Module, skip: set[str] = frozenset()) -> None:
        self.active = False
        self.relu: dict[str, list[float]] = {}  # name -> [zero share, dead channel share, channels]
        self.saturation: dict[str, float] = {}
        self.handles = []
        for name, m in model.named_modules():
            if name in skip:  # a frozen part's units: not the training's to kill
                continue
            if isinstance(m, (nn.ReLU, nn.ReLU6)):
                self.handles.append(m.register_forward_hook(self._relu_hook(name)))
            elif isinstance(m, (nn.Tanh, nn.Sigmoid)):
                self.handles.append(m.register_forward_hook(self._sat_hook(name)))
            elif isinstance(m, (nn.LSTM, nn.GRU)):
                self.handles.append(m.register_forward_hook(self._rnn_hook(name)))

    def _relu_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not self.active or not isinstance(output, Tensor) or output.ndim < 2:
                return
            o = output.detach()
            cdim = 1 if o.ndim == 4 else o.ndim - 1  # (N, C, H, W) or (..., D)
            alive = (o != 0).transpose(0, cdim).flatten(1).any(1)  # (C,)
            self.relu[name] = [float((o == 0).float().mean()), float(1 - alive.float().mean()),
                               int(alive.numel())]
        return hook

    def _sat_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if self.active and inputs and isinstance(inputs[0], Tensor):
                self.saturation[name] = float((inputs[0].detach().abs() >= SATURATION_X)
                                              .float().mean())
        return hook

    def _rnn_hook(self, name: str) -> Callable:
        def hook(module: nn.RNNBase, inputs: tuple, output: Any) -> None:
            if not self.active or not inputs:
                return
            x = inputs[0]
            x = x.data if hasattr(x, "batch_sizes") else x  # PackedSequence -> (N, D)
            with torch.no_grad():
                z = x.detach() @ module.weight_ih_l0.detach().t()
                if module.bias:
                    z = z + module.bias_ih_l0.detach() + module.bias_hh_l0.detach()
            self.saturation[f"{name} (gate inputs, layer 0)"] = float(
                (z.abs() >= SATURATION_X).float().mean())
        return hook

    def summary(self) -> Activations:
        layers = self.relu
        zero = [v[0] for v in layers.values()]
        channels = sum(v[2] for v in layers.values())
        dead = sum(v[1] * v[2] for v in layers.values())
        worst = max(layers, key=lambda n: layers[n][0]) if layers else None
        sat_worst = max(self.saturation, key=self.saturation.get) if self.saturation else None
        return Activations(
            relu_layers=len(layers),
            relu_zero_share_mean=float(np.mean(zero)) if zero else None,
            relu_zero_share_max=max(zero) if zero else None,
            relu_worst_layer=worst,
            relu_dead_channel_share=dead / channels if channels else None,
            relu_per_layer={n: round(v[0], 4) for n, v in layers.items()},
            saturation_layers=len(self.saturation),
            saturation_share_max=self.saturation[sat_worst] if sat_worst else None,
            saturation_worst_layer=sat_worst,
            saturation_per_layer={n: round(v, 4) for n, v in self.saturation.items()})

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _param_layers(model: nn.Module, trained: frozenset[str] | None = None
                  ) -> list[tuple[str, list[nn.Parameter]]]:
    """Modules owning trained parameters directly (names in `trained`; None: those requiring
    a gradient), in registration order (input first)."""
    ids = {id(p) for n, p in model.named_parameters()
           if (n in trained if trained is not None else p.requires_grad)}
    out = []
    for name, m in model.named_modules():
        ps = [p for p in m.parameters(recurse=False) if id(p) in ids]
        if ps:
            out.append((name or type(m).__name__, ps))
    return out


def _norm(params: list[nn.Parameter]) -> float:
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def _groups(layers: list[tuple[str, list]]) -> dict[str, list[nn.Parameter]]:
    """Layers grouped by top-level child (built-in: backbone, pool, proj, head)."""
    out: dict[str, list[nn.Parameter]] = {}
    for name, ps in layers:
        out.setdefault(name.split(".")[0], []).extend(ps)
    return out


def _record_norms(layers: list[tuple[str, list]], groups: dict[str, list], rec: dict,
                  group_norms: dict[str, list[float]]) -> str | None:
    """Append this step's gradient norms (total, first and last layer, per group); return the
    first layer whose gradient is not finite, if any."""
    norms = [_norm(ps) for _, ps in layers]
    rec["total_norms"].append(float(np.sqrt(np.sum(np.square(norms)))))
    rec["first_norms"].append(norms[0])
    rec["last_norms"].append(norms[-1])
    for g, ps in groups.items():
        group_norms[g].append(_norm(ps))
    return next((n for (n, _), v in zip(layers, norms) if not math.isfinite(v)), None)


@probe("grad_stats", min_s=2.0, share=SHARE["grad_stats"], needs=("training_data",))
def grad_stats(ctx: Context, probes: Probes) -> GradStats:
    """A few steps at the config's LR on a fresh model: per-layer gradient norms before
    clipping, activation statistics at the first and last step, the first non-finite value."""
    d, _, steps, model, opt = _fresh_run(  # cheap: GRAD_STEPS is not scaled down
        ctx, probes, "grad_stats", GRAD_STEPS, 2,
        "gradient statistics need {n}+ steps of {s:.2f} s; only {left:.0f} s are left for them",
        step_cost=1.3)
    x, y, cached, bs = d["_x_train"], d["_y_train"], d["cached"], d["batch_size"]
    trained = trained_parameters(ctx).names
    layers = _param_layers(model, trained)
    if not layers:
        raise ProbeSkipped("no parameter of the model is trained (frozen, no gradient, or not "
                           "in the optimizer)")
    groups = _groups(layers)
    monitor = _ActivationMonitor(model, frozen_modules(model, trained))
    rec: dict[str, list] = {"losses": [], "total_norms": [], "first_norms": [], "last_norms": []}
    group_norms: dict[str, list[float]] = {g: [] for g in groups}
    activations = ActivationSteps()
    nonfinite = None
    batches = _batches(len(y), bs, ctx.seed)
    try:
        for step in range(steps):
            idx = batches[step % len(batches)]
            xb, yb = x[idx], y[idx]
            monitor.active = step in (0, steps - 1)
            opt.zero_grad(set_to_none=True)
            logits = _forward(model, xb, cached)
            loss = ctx.loss_fn(logits, yb)
            rec["losses"].append(float(loss.detach()))
            if monitor.active and step == 0:
                activations.init = monitor.summary()
            elif monitor.active:
                activations.final = monitor.summary()
            if not _finite(loss):
                where = "output" if not _finite(logits.detach()) else "loss"
                nonfinite = NonFiniteStep(step=step, where=where, inputs_finite=_finite(xb))
                break
            loss.backward()
            bad = _record_norms(layers, groups, rec, group_norms)
            if bad is not None:
                nonfinite = NonFiniteStep(step=step, where=f"gradient of {bad}",
                                          inputs_finite=_finite(xb))
                break
            torch.nn.utils.clip_grad_norm_([p for _, ps in layers for p in ps],
                                           _clip_value(ctx) or float("inf"))
            opt.step()
    finally:
        monitor.remove()
    ratios = [f / l if l > 0 else math.inf for f, l in zip(rec["first_norms"], rec["last_norms"])]
    grads = [p.grad.detach().abs().mean() for _, ps in layers[:1] for p in ps if p.grad is not None]
    return GradStats(
        steps=len(rec["losses"]), planned_steps=steps, lr=opt.param_groups[0]["lr"],
        first_layer=layers[0][0], last_layer=layers[-1][0], layers=len(layers),
        **rec, ratios=ratios, group_norms=group_norms,
        first_mean_abs_grad=float(torch.stack(grads).mean()) if grads else None,
        activations=activations, nonfinite=nonfinite)
