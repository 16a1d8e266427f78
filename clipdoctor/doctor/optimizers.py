"""The user's optimizer, rebuilt on every fresh copy of the model the probes train.

`diagnose(..., optimizer=...)` takes three forms (DESIGN §3):

- a factory of parameters, `lambda params: Adam(params, lr=1e-3)`: called with the parameters
  of the copy that require a gradient;
- a factory of the model, `lambda model: Adam(model.head.parameters())`: called with the copy,
  so a user who trains a subset (or builds parameter groups) says so;
- a ready `torch.optim.Optimizer` built on the user's model: its param groups say what is
  trained. On each copy an optimizer of the same class, hyper-parameters and groups is built,
  the parameters mapped by their names in the model. Its state (moments, steps) is not copied:
  every probe starts a fresh training.

A callable is told apart by its signature, else by trying: a single parameter named `model`,
`module`, `net`, `network` or `m`, or annotated with an `nn.Module` type, makes a model factory;
one named `params`, `parameters`, `param`, `ps` or `p` a parameter factory. Otherwise it is
called with a copy of the model: an Optimizer back makes it a model factory; a TypeError or
AttributeError (a parameter factory handed a module) makes it a parameter factory. The form is
decided once, on the first call. A factory whose optimizer holds parameters other than those of
the copy it was given (a closure over the user's own model: it would step the user's
parameters and train nothing of the copy) is refused with one clear error, at
`build_context`.

Neither the user's model nor their optimizer is ever touched: the model is deep-copied before
anything runs, and only the optimizer's `param_groups` and `defaults` are read.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable

import torch
from torch import nn

from clipdoctor.config import RunConfig
from clipdoctor.errors import ClipdoctorError

MODEL_NAMES = ("model", "module", "net", "network", "m")
PARAM_NAMES = ("params", "parameters", "param", "ps", "p")

MakeOptimizer = Callable[[Any], torch.optim.Optimizer]  # a model (or a list of parameters) -> opt


def trainable(target: Any) -> list[nn.Parameter]:
    """The parameters requiring a gradient of a module, or the given parameters as a list."""
    if isinstance(target, nn.Module):
        return [p for p in target.parameters() if p.requires_grad]
    return list(target)


def optimizer_maker(optimizer: Any, config: RunConfig, make_model: Callable[[], nn.Module],
                    model: nn.Module | None) -> MakeOptimizer:
    """`make_optimizer(model_copy)`: the user's optimizer built on a fresh copy (a list of
    parameters instead of a copy gets the same class and hyper-parameters on those
    parameters). `model` is the user's own module (None for the built-in one). Its `form()`
    says which form was given: 'run' (none given, the built-in model: `train`'s own
    optimizer), 'default' (none given, the user's model), 'parameters', 'model', 'instance'
    (None while a factory has not been called yet)."""
    if optimizer is None and model is None:
        return run_optimizer(config)
    if optimizer is None:
        def default(target: Any) -> torch.optim.Optimizer:
            return torch.optim.AdamW(trainable(target), lr=config.train.lr,
                                     weight_decay=config.train.weight_decay)
        default.form = lambda: "default"  # type: ignore[attr-defined]
        return default
    if isinstance(optimizer, torch.optim.Optimizer):
        rebuild = _from_instance(optimizer, model)
        rebuild.form = lambda: "instance"  # type: ignore[attr-defined]
        return rebuild
    if callable(optimizer):
        return _from_callable(optimizer, make_model)
    raise ClipdoctorError(
        f"optimizer= got a {type(optimizer).__name__}; it takes a factory of the parameters "
        "(lambda params: torch.optim.Adam(params, lr=1e-3)), a factory of the model "
        "(lambda model: torch.optim.Adam(model.head.parameters())) or a torch.optim.Optimizer "
        "built on the model you pass as model=")


def run_optimizer(config: RunConfig) -> MakeOptimizer:
    """The built-in model's optimizer, as `train` builds it (`training.module.make_optimizer`:
    AdamW, no weight decay on biases and norms, fused where it can be); a list of parameters
    gets the same AdamW on those parameters. The backbone LR multiplier is `train`'s first
    stage's (1: a frozen backbone is not in the optimizer, an unfrozen one trains at the LR)."""
    from clipdoctor.training.module import adamw, make_optimizer

    def build(target: Any) -> torch.optim.Optimizer:
        if isinstance(target, nn.Module):
            return make_optimizer(target, config.train)
        return adamw(trainable(target), config.train)

    build.form = lambda: "run"  # type: ignore[attr-defined]
    return build


# ---------------------------------------------------------------------------------------------
# a ready Optimizer

def _hyper(group: dict) -> dict:
    """A param group's hyper-parameters (everything but its parameters), copied."""
    return {k: copy.deepcopy(v) for k, v in group.items() if k not in ("params", "param_names")}


def construct(cls: type, groups: list[dict], defaults: dict) -> torch.optim.Optimizer:
    """`cls(groups, **defaults)`, passing only the defaults its constructor takes (each group
    carries its own values anyway)."""
    try:
        sig = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return cls(groups)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        kw = dict(defaults)
    else:
        kw = {k: v for k, v in defaults.items() if k in sig and k not in ("self", "params")}
    return cls(groups, **copy.deepcopy(kw))


def _from_instance(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> MakeOptimizer:
    if model is None:
        raise ClipdoctorError("optimizer= is a ready torch.optim.Optimizer but no model= was "
                              "given: pass the module it was built on (model=...), or a factory "
                              "(lambda params: ...) for the built-in model")
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [([names[id(p)] for p in g["params"] if id(p) in names], _hyper(g))
              for g in optimizer.param_groups]
    held = sum(len(n) for n, _ in groups)
    given = sum(len(g["params"]) for g in optimizer.param_groups)
    if not held:
        raise ClipdoctorError(
            f"the {type(optimizer).__name__} given as optimizer= holds none of the parameters "
            f"of the model given as model= ({given} parameters, none of the model's): build it "
            "on that model, e.g. torch.optim.Adam(model.head.parameters())")
    cls, defaults = type(optimizer), dict(optimizer.defaults)

    def rebuild(target: Any) -> torch.optim.Optimizer:
        if isinstance(target, nn.Module):
            params = dict(target.named_parameters())
            pg = [{**copy.deepcopy(hyper), "params": [params[n] for n in held_names]}
                  for held_names, hyper in groups if held_names]
        else:  # plain parameters: the first group's hyper-parameters on all of them
            pg = [{**copy.deepcopy(groups[0][1]), "params": list(target)}]
        return construct(cls, pg, defaults)

    return rebuild


# ---------------------------------------------------------------------------------------------
# a factory

def _declared_form(fn: Callable) -> str | None:
    """'model' / 'parameters' when the callable's only parameter says which, else None."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    if isinstance(fn, type) and issubclass(fn, torch.optim.Optimizer):
        return "parameters"  # optimizer=torch.optim.Adam: the class itself takes parameters
    if not params:
        return None
    first = params[0]
    ann = first.annotation
    if isinstance(ann, type) and issubclass(ann, nn.Module):
        return "model"
    if isinstance(ann, str) and ann.split(".")[-1] in ("Module", "nn.Module"):
        return "model"
    if first.name in MODEL_NAMES:
        return "model"
    if first.name in PARAM_NAMES:
        return "parameters"
    return None


def _check(opt: Any, form: str, target: Any = None) -> torch.optim.Optimizer:
    """`opt` must be an Optimizer holding only parameters of `target` (the copy or parameters
    it was given): one built on other parameters (a closure over the user's own model) would
    step those, and train nothing of the copy."""
    if not isinstance(opt, torch.optim.Optimizer):
        raise ClipdoctorError(f"optimizer= (a factory of the {form}) returned a "
                              f"{type(opt).__name__}, not a torch.optim.Optimizer")
    if target is not None:
        own = {id(p) for p in (target.parameters() if isinstance(target, nn.Module)
                               else target)}
        foreign = sum(id(p) not in own for g in opt.param_groups for p in g["params"])
        if foreign:
            raise ClipdoctorError(
                f"optimizer= (a factory of the {form}) built its optimizer on {foreign} "
                f"parameters that are not those of the {form} it was given: use its argument "
                "(lambda model: Adam(model.head.parameters())), not a variable from outside "
                "(the doctor calls it on copies of your model)")
    return opt


def _from_callable(fn: Callable, make_model: Callable[[], nn.Module]) -> MakeOptimizer:
    state: dict[str, Any] = {"form": _declared_form(fn), "template": None}

    def decide(model: nn.Module) -> torch.optim.Optimizer:
        """Try the model; a TypeError / AttributeError means a parameter factory."""
        try:
            opt = fn(model)
        except (TypeError, AttributeError) as as_model:
            params = trainable(model)
            try:
                opt = fn(params)
            except Exception as as_params:
                raise ClipdoctorError(
                    "optimizer= could not be called with the model "
                    f"({type(as_model).__name__}: {as_model}) nor with its parameters "
                    f"({type(as_params).__name__}: {as_params})") from as_params
            state["form"] = "parameters"
            return _check(opt, "parameters", params)
        if isinstance(opt, torch.optim.Optimizer):
            state["form"] = "model"
            return _check(opt, "model", model)
        state["form"] = "parameters"
        params = trainable(model)
        return _check(fn(params), "parameters", params)

    def build(target: Any) -> torch.optim.Optimizer:
        if isinstance(target, nn.Module):
            if state["form"] is None:
                return decide(target)
            if state["form"] == "model":
                return _check(fn(target), "model", target)
            params = trainable(target)
            return _check(fn(params), "parameters", params)
        params = list(target)
        if state["form"] is None:
            decide(make_model())
        if state["form"] == "parameters":
            return _check(fn(params), "parameters", params)
        if state["template"] is None:  # a model factory given bare parameters: its class
            copy_ = make_model()
            state["template"] = _check(fn(copy_), "model", copy_)
        t = state["template"]
        return construct(type(t), [{**_hyper(t.param_groups[0]), "params": params}], t.defaults)

    build.form = lambda: state["form"]  # type: ignore[attr-defined]
    return build


FORMS = {"run": "train's AdamW (train.lr, train.weight_decay; none on biases and norms)",
         "default": "clipdoctor's AdamW (train.lr, train.weight_decay)",
         "parameters": "the user's factory of the parameters",
         "model": "the user's factory of the model",
         "instance": "the user's Optimizer, rebuilt on each copy by parameter name",
         None: "the user's factory (not called yet)"}


def describe(make_optimizer: Any) -> str | None:
    """How `make_optimizer` (from `optimizer_maker`) builds the optimizer, as the report
    states it; None for any other callable."""
    form = getattr(make_optimizer, "form", None)
    return FORMS.get(form(), str(form())) if callable(form) else None
