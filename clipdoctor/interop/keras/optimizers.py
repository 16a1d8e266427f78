"""The compiled Keras optimizer rebuilt as a torch optimizer factory (read_optimizer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .losses import KERAS_EPSILON


@dataclass(frozen=True)
class TorchOptimizerFactory:
    """``factory(params) -> torch.optim.Optimizer``: the compiled Keras optimizer's class and
    hyper-parameters in torch. Its one parameter is named ``params``, so the doctor takes it
    for a factory of the parameters; given an ``nn.Module`` it uses the module's parameters
    that require a gradient."""

    torch_class: str  # "Adam", "AdamW", "SGD", "RMSprop" (a torch.optim class)
    kwargs: tuple[tuple[str, Any], ...]  # its keyword arguments, lr included

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        if isinstance(params, nn.Module):
            params = [p for p in params.parameters() if p.requires_grad]
        return getattr(torch.optim, self.torch_class)(params, **dict(self.kwargs))

    def with_lr(self, lr: float) -> TorchOptimizerFactory:
        """The same optimizer at learning rate `lr` (a ``--lr`` override)."""
        return TorchOptimizerFactory(self.torch_class, tuple(
            (k, float(lr) if k == "lr" else v) for k, v in self.kwargs))

    def describe(self) -> str:
        args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.kwargs)
        return f"torch.optim.{self.torch_class}({args})"


def _float(value: Any) -> float:
    """A float32 hyper-parameter as saved (0.0020000000949949026) back to what was typed
    (0.002)."""
    return float(f"{float(value):.7g}")


def read_optimizer(model: Any) -> tuple[str | None, float | None, TorchOptimizerFactory | None,
                                        list[str]]:
    """(Keras class name, learning rate, torch factory, notes) of the compiled optimizer;
    (None, None, None, []) for a model that was not compiled.

    Mapping: Adam, AdamW, SGD (momentum, nesterov), RMSprop (rho -> alpha, momentum, centered)
    with Keras' epsilon; any other class -> torch Adam at its learning rate (with a note).
    Keras applies `weight_decay` decoupled (AdamW-style) in every optimizer: Adam with weight
    decay becomes torch AdamW; SGD and RMSprop get torch's coupled (L2) weight decay (a note).
    A learning-rate schedule gives its initial rate (a note); gradient clipping, EMA and
    gradient accumulation are not reproduced (a note each)."""
    opt = getattr(model, "optimizer", None)
    if opt is None:
        return None, None, None, []
    name = type(opt).__name__
    cfg = dict(opt.get_config())
    notes: list[str] = []
    lr_cfg = cfg.get("learning_rate")
    if isinstance(lr_cfg, dict):  # a serialised LearningRateSchedule
        inner = lr_cfg.get("config", {})
        lr = _float(inner.get("initial_learning_rate", inner.get("learning_rate", 1e-3)))
        notes.append(f"the learning rate follows a schedule ({lr_cfg.get('class_name', '?')}); "
                     f"the torch optimizer keeps its initial rate {lr:g}")
    elif lr_cfg is not None and not hasattr(lr_cfg, "get_config"):
        lr = _float(lr_cfg)
    else:
        lr = _float(getattr(lr_cfg, "initial_learning_rate", 1e-3))
        notes.append(f"the learning rate follows a schedule; the torch optimizer keeps {lr:g}")
    eps = _float(cfg.get("epsilon") or KERAS_EPSILON)
    wd = _float(cfg.get("weight_decay") or 0.0)
    kwargs: dict[str, Any] = {"lr": lr}
    if name in ("Adam", "AdamW"):
        cls = "AdamW" if name == "AdamW" or wd else "Adam"
        kwargs.update(betas=(_float(cfg.get("beta_1", 0.9)), _float(cfg.get("beta_2", 0.999))),
                      eps=eps, amsgrad=bool(cfg.get("amsgrad", False)))
        if cls == "AdamW":
            kwargs["weight_decay"] = wd
            if name == "Adam":
                notes.append("Keras Adam applies weight_decay decoupled: torch AdamW")
    elif name == "SGD":
        cls = "SGD"
        momentum = _float(cfg.get("momentum", 0.0) or 0.0)
        kwargs.update(momentum=momentum, nesterov=bool(cfg.get("nesterov")) and momentum > 0)
    elif name == "RMSprop":
        cls = "RMSprop"
        kwargs.update(alpha=_float(cfg.get("rho", 0.9)), eps=eps,
                      momentum=_float(cfg.get("momentum", 0.0) or 0.0),
                      centered=bool(cfg.get("centered", False)))
    else:
        cls = "Adam"
        notes.append(f"no torch counterpart mapped for Keras {name}: torch Adam at lr {lr:g}")
    if wd and cls in ("SGD", "RMSprop"):
        kwargs["weight_decay"] = wd
        notes.append(f"Keras {name} applies weight_decay decoupled, torch {cls} as L2 in the "
                     "gradient")
    for key, what in (("clipnorm", "clipnorm"), ("global_clipnorm", "global_clipnorm"),
                      ("clipvalue", "clipvalue"), ("use_ema", "use_ema"),
                      ("gradient_accumulation_steps", "gradient_accumulation_steps")):
        if cfg.get(key):
            notes.append(f"the Keras optimizer's {what}={cfg[key]} is not reproduced in torch")
    return name, lr, TorchOptimizerFactory(cls, tuple(kwargs.items())), notes
