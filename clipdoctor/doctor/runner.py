"""Running the doctor: `diagnose()` builds the probes' context, loads the checks, plans the
time budget over the probes the selected checks require, runs the checks and assembles the
Report.

Each check sees only the probes it declares (`requires`). A check whose measurement could not
be taken is listed as skipped with that probe and its reason; a check that crashes (or reads a
probe it does not declare) becomes a reported failure instead of sinking the whole report
(cleanlab Datalab's rule). Every probe that was skipped is listed too, with the checks that
needed it, so a measurement never goes missing silently; a probe that raised (often inside the
user's model) is also listed under `failures`, with the exception and the checks it stopped.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from clipdoctor.config import RunConfig
from clipdoctor.doctor.findings import Finding, Report, rank
from clipdoctor.doctor.optimizers import optimizer_maker
from clipdoctor.doctor.probes import (PROBES, Budget, Context, Probes, ProbeSkipped, RunLoss,
                                        data_classes, default_loss, samples, with_needs)
from clipdoctor.doctor.probes.results import TIMING_KEY, Result
from clipdoctor.doctor.registry import CHECKS, Check
from clipdoctor.errors import ClipdoctorError

log = logging.getLogger(__name__)


def load_checks() -> None:
    """Import the probe and check modules (each registers itself on import); ValueError when
    a check requires, or a probe needs, a probe that does not exist."""
    from clipdoctor.doctor.checks import data, model, temporal, training  # noqa: F401
    from clipdoctor.doctor.probes import (clip_scan, features, grad_stats,  # noqa: F401
                                            keras_graph, lr_range, model_behaviour,
                                            model_features, overfit_batch, run, short_run,
                                            temporal_eval)
    from clipdoctor.doctor.probes import data as _d, model as _m, training as _t  # noqa: F401

    reads = [(f"check '{c.name}'", p) for c in CHECKS.values() for p in c.requires]
    reads += [(f"probe '{s.name}'", p) for s in PROBES.values() for p in s.needs]
    unknown = sorted(f"{who} reads unknown probe '{p}'" for who, p in reads if p not in PROBES)
    if unknown:
        raise ValueError("; ".join(unknown))


def selected_checks(names: list[str] | None = None) -> list[Check]:
    """The registered checks (or those named), cheapest first."""
    load_checks()
    return [c for c in sorted(CHECKS.values(), key=lambda c: (c.order, c.name))
            if names is None or c.name in names]


def run_checks(probes: Probes, names: list[str] | None = None
               ) -> tuple[list[Finding], list[dict], list[dict]]:
    """Run the registered checks (or `names`) -> (findings, skipped, failures)."""
    findings: list[Finding] = []
    skipped: list[dict] = []
    failures: list[dict] = []
    for c in selected_checks(names):
        try:
            out = c.fn(probes.only(c.requires)) or []
        except ProbeSkipped as e:
            skipped.append({"name": c.name, "codes": list(c.codes), "reason": str(e),
                            "probe": e.probe})
            continue
        except Exception as e:  # noqa: BLE001 — reported, never lost
            log.debug("check %s crashed", c.name, exc_info=True)
            failures.append({"name": c.name, "error": f"{type(e).__name__}: {e}"})
            continue
        bad = [f.code for f in out if f.code not in c.codes]
        if bad:
            failures.append({"name": c.name, "error": f"emitted undeclared codes {bad}"})
        findings += [f for f in out if f.code in c.codes]
    return findings, skipped, failures


def skipped_probes(probes: Probes, checks: list[Check]) -> list[dict]:
    """Every probe that was not measured, why, and which of `checks` needed it (directly or
    through another probe)."""
    needs = {c.name: with_needs(c.requires) for c in checks}
    return [{"name": name, "reason": reason,
             "checks": [c.name for c in checks if name in needs[c.name]]}
            for name, reason in probes.skipped.items()]


def failed_probes(probes: Probes, checks: list[Check]) -> list[dict]:
    """Every probe that raised (inside the user's model, or a bug): its name, the exception
    and where it was raised, and which of `checks` it kept from running (they are listed as
    skipped, their reason pointing here)."""
    needs = {c.name: with_needs(c.requires) for c in checks}
    return [{"name": name, "kind": "probe", "error": error,
             "checks": [c.name for c in checks if name in needs[c.name]]}
            for name, error in probes.failed.items()]


def as_data(data: Any, augment: Callable | None = None) -> Any:
    """The diagnosed data as the probes read it: None, a SourceIndex, or UserData. A path or
    (X, y) arrays are loaded, the user's own Dataset / DataLoader wrapped (`augment` rides
    along); anything else is one DataError naming the accepted forms (never an empty report)."""
    from clipdoctor import load_dataset
    from clipdoctor.data.sources import SourceIndex
    from clipdoctor.data.user import UserData, is_user_data_form
    from clipdoctor.errors import DataError

    if data is None:
        if augment is not None:
            raise DataError("augment= needs data to test it on: pass your Dataset too")
        return None
    if isinstance(data, SourceIndex):
        return data
    if isinstance(data, UserData):
        return data.with_augment(augment) if augment is not None else data
    if is_user_data_form(data):
        return load_dataset(data, augment=augment)
    return load_dataset(data)  # a path or (X, y): `augment` is kept in the context


def fit_config(config: RunConfig, data: Any) -> RunConfig:
    """For the user's own Datasets, the run config's data section made to describe them: T,
    frame size (square frames) and batch size (a DataLoader's) as the user's clips have them."""
    from clipdoctor.data.user import UserData

    if not isinstance(data, UserData) or data.first_shape is None:
        return config
    shape = data.first_shape
    t, h, w = (shape[0], shape[2], shape[3]) if data.layout.order == "TCHW" else shape[:3]
    update: dict = {"frames": t}
    if h == w:
        update.update(size=h, frame_size=max(h, config.data.frame_size))
    if data.batch_size:
        update["batch_size"] = data.batch_size
    try:
        fitted = type(config.data).model_validate({**config.data.model_dump(), **update})
    except Exception as e:  # noqa: BLE001 — sizes the config refuses: keep it as it is
        log.info("run config not fitted to the user's data (%s)", e)
        return config
    return config.model_copy(update={"data": fitted})


@dataclass
class KerasInputs:
    """A Keras model as the doctor takes it (`keras_inputs`): the torch module, loss and
    optimizer, the run config fitted to the model's input, and the architecture facts."""

    model: nn.Module
    loss_fn: Callable
    optimizer: Callable | torch.optim.Optimizer
    config: RunConfig
    facts: dict


def keras_inputs(model: Any, config: RunConfig, loss_fn: Callable | None,
                 optimizer: Callable | torch.optim.Optimizer | None) -> KerasInputs | None:
    """For a ``keras.Model`` (or an `interop.keras.KerasAdapter`) given as `model`: its torch
    wrapper (`KerasAdapter.module`), the compiled loss unless `loss_fn` is given, the
    compiled optimizer unless `optimizer` is given, the config's data.frames / data.size set
    from the model's input shape, and its facts; None for any other model (keras is never
    imported for it).

    A model saved without a compile config: categorical cross-entropy matching the output
    (on probabilities after a softmax, as Keras' default from_logits=False, else on logits),
    and Adam at the config's train.lr (``--lr``), each stated in the facts' notes."""
    from clipdoctor.interop.keras import (KerasAdapter, ProbabilityCrossEntropy,
                                          TorchOptimizerFactory, is_keras_model)

    if isinstance(model, KerasAdapter):
        adapter = model
    elif is_keras_model(model):
        adapter = KerasAdapter(model)
    else:
        return None
    facts = adapter.facts()
    notes = facts.setdefault("notes", [])
    if loss_fn is None:
        loss_fn = adapter.loss_fn
        if loss_fn is None:
            loss_fn = (ProbabilityCrossEntropy() if adapter.outputs_probabilities
                       else torch.nn.functional.cross_entropy)
            notes.append("the model was saved without a compile config: the doctor trains it "
                         "with categorical cross-entropy on its "
                         f"{'probabilities' if adapter.outputs_probabilities else 'logits'}")
    if optimizer is None:
        optimizer = adapter.make_optimizer
        if optimizer is None:
            optimizer = TorchOptimizerFactory("Adam", (("lr", float(config.train.lr)),))
            notes.append(f"the model was saved without a compile config: the doctor trains it "
                         f"with Adam at lr {config.train.lr:g} (set it with --lr)")
    facts["loss_fn"] = getattr(loss_fn, "describe", lambda: getattr(
        loss_fn, "__name__", type(loss_fn).__name__))()
    facts["optimizer_fn"] = (optimizer.describe() if hasattr(optimizer, "describe")
                             else type(optimizer).__name__)
    return KerasInputs(adapter.module, loss_fn, optimizer,
                       _keras_config(config, adapter.frames, adapter.size), facts)


def _keras_config(config: RunConfig, frames: int | None, size: Any) -> RunConfig:
    """The run config's data section fitted to a Keras model's input: T frames of size x size
    (a fixed, square input; a dynamic or non-square one leaves that part as it is)."""
    update: dict = {}
    if frames:
        update["frames"] = int(frames)
    if isinstance(size, int):
        update.update(size=size, frame_size=max(size, config.data.frame_size))
    if not update:
        return config
    try:
        fitted = type(config.data).model_validate({**config.data.model_dump(), **update})
    except Exception as e:  # noqa: BLE001 — sizes the config refuses: one clear line
        raise ClipdoctorError(f"the Keras model takes {frames} frames of {size} px, which the "
                              f"run config refuses ({_first_line(e)})") from None
    return config.model_copy(update={"data": fitted})


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def build_context(data: Any = None, *, config: RunConfig | None = None,
                  model: Any = None, loss_fn: Callable | None = None,
                  optimizer: Callable | torch.optim.Optimizer | None = None,
                  budget_s: float = 120.0, run: str | Path | None = None,
                  augment: Callable | None = None) -> Context:
    """The probes' context for the built-in model (from `config`) or the user's own module;
    `run` is a run folder whose recorded training (e.g. a non-finite loss) checks may read.
    A ``keras.Model`` given as `model` is diagnosed through its torch wrapper
    (`keras_inputs`: its compiled loss and optimizer unless given, its facts in `ctx.keras`).

    `optimizer`: a factory of the parameters, a factory of the model, or a ready Optimizer
    built on `model` (`doctor/optimizers.py` says how the forms are told apart); rebuilt on
    each fresh copy. The probes work on deep copies: `model` and `optimizer` stay as given.

    The built-in model trains as `train` trains it: its loss (unless `loss_fn` is given) is
    `train`'s (`RunLoss`: class weights per `train.class_weighting`, label smoothing) and its
    optimizer (unless `optimizer` is given) `train`'s AdamW with its parameter groups."""
    data = as_data(data, augment)  # the user's own Datasets -> UserData (DataError otherwise)
    config = fit_config(config or RunConfig(), data)
    keras = keras_inputs(model, config, loss_fn, optimizer)
    if keras is not None:  # a keras.Model: its torch wrapper, compiled loss and optimizer
        model, loss_fn, optimizer = keras.model, keras.loss_fn, keras.optimizer
        config = keras.config
    if model is not None:
        initial = copy.deepcopy(model).cpu()  # the user's module is never touched
        for p in initial.parameters():
            p.grad = None  # gradients left from the user's training are not the copy's

        def make_model() -> nn.Module:
            return copy.deepcopy(initial)
    else:
        from clipdoctor.models.classifier import build_classifier

        num_classes = len(data.classes) if data is not None else 2

        def make_model() -> nn.Module:
            if MODEL_ERROR in ctx.cache:  # tried once: the probes that need it are skipped
                raise ProbeSkipped(ctx.cache[MODEL_ERROR])
            torch.manual_seed(config.seed)
            try:
                return build_classifier(config.model, num_classes)
            except ClipdoctorError as e:  # e.g. hub weights with no network: a finding
                ctx.cache[MODEL_ERROR] = f"the model could not be built (model-not-built): {e}"
                ctx.cache[MODEL_ERROR + ".raw"] = str(e)
                raise ProbeSkipped(ctx.cache[MODEL_ERROR]) from None

    make_optimizer = optimizer_maker(optimizer, config, make_model, model)
    if model is not None and optimizer is not None:
        make_optimizer(make_model())  # a factory that cannot serve a copy: one clear error now
    ctx = Context(config=config, make_model=make_model, loss_fn=loss_fn or default_loss,
                  make_optimizer=make_optimizer, data=data, user_model=model is not None,
                  budget=Budget(budget_s), seed=config.seed,
                  run=Path(run) if run is not None else None,
                  augment=augment if augment is not None else getattr(data, "augment", None),
                  keras=keras.facts if keras is not None else None)
    if model is None and loss_fn is None:  # the built-in model trains with train's own loss
        ctx.loss_fn = RunLoss(config.train.class_weighting, config.train.label_smoothing,
                              lambda: run_class_weights(ctx))
    return ctx


MODEL_ERROR = "model_error"  # ctx.cache key: why the built-in model could not be built


def model_not_built(error: str, config: RunConfig) -> Finding:
    """The finding for a built-in model that could not be built: the error names the fix
    (its text after the first ';', e.g. --weights FILE, --no-pretrained, an offline backbone)."""
    what, _, fix = error.partition("; ")
    return Finding(
        "model-not-built", "error", f"The model could not be built: {what}",
        {"error": error, "backbone": config.model.backbone,
         "pretrained": bool(config.model.pretrained), "weights": config.model.weights,
         "examined": "the data only: every model and training check is skipped"},
        (fix[:1].upper() + fix[1:] if fix else "Fix the model configuration")
        + "; then run the diagnosis again for the model and training checks.",
        effect=10.0)


def run_class_weights(ctx: Context) -> torch.Tensor | None:
    """The class weights `train` gives the loss under `class_weighting: balanced`: the same
    function (`data.datamodule.class_weights`, scikit-learn's n / (k * count)) on the labels of
    the training split; None without data."""
    from clipdoctor.data.datamodule import class_weights

    if ctx.data is None:
        return None
    labels = [s.label for s in samples(ctx) if s.split == "train"]
    if not labels:
        return None
    return class_weights(labels, len(data_classes(ctx)))


def _public(value: Any) -> Any:
    """A probe's value as the report keeps it: typed results as their JSON, dicts without
    their `_key` entries (raw arrays, models)."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if not str(k).startswith("_")}
    return value


def diagnose(data: Any = None, *, config: RunConfig | None = None, model: Any = None,
             loss_fn: Callable | None = None,
             optimizer: Callable | torch.optim.Optimizer | None = None,
             budget_s: float = 120.0, checks: list[str] | None = None,
             run: str | Path | None = None, augment: Callable | None = None) -> Report:
    """Run every check (or those named in `checks`) on `data` with the built-in model
    (`config`) or the user's `model`; with `run`, also what that run folder recorded
    (RUN/failure.json). `data`: what `load_dataset` returns, or anything it takes (a path,
    (X, y) arrays, the user's own Dataset / DataLoader); `augment`: the user's own clip
    augmentation (a callable on one clip), tested by `inconsistent-augmentation`. `model` may
    be a ``keras.Model`` (Keras 3; see `keras_inputs`): the report's model section then holds
    ``framework: "keras"`` and the facts read from its graph under ``keras``."""
    started = time.perf_counter()
    selected = selected_checks(checks)
    # build_context loads / wraps the data first (`as_data`): a bad data form is one clear error
    ctx = build_context(data, config=config, model=model, loss_fn=loss_fn, optimizer=optimizer,
                        budget_s=budget_s, run=run, augment=augment)
    ctx.budget.plan(with_needs(p for c in selected for p in c.requires))
    probes = Probes(ctx)
    findings, skipped, failures = run_checks(probes, checks)
    if MODEL_ERROR in ctx.cache:
        findings = rank([model_not_built(ctx.cache[MODEL_ERROR + ".raw"], ctx.config)]
                        + findings)
    public = {name: _public(value) for name, value in probes.values.items()}
    for name, seconds in probes.seconds.items():
        if isinstance(public.get(name), dict):
            public[name][TIMING_KEY] = seconds
    dataset = public.pop("dataset", {})
    if hasattr(ctx.data, "describe"):  # the user's own Datasets: form and layout, always stated
        dataset = {**ctx.data.describe(), **dataset}
    model_info = public.pop("model_summary", {})
    public.pop("keras_graph", None)  # the facts are the model section's (below), not a probe's
    if ctx.keras is not None:  # what was read from the Keras graph, beside torch's view
        model_info = {**model_info, "framework": "keras", "keras": ctx.keras}
    return Report(findings=findings, probes=public, dataset=dataset, model=model_info,
                  skipped=skipped, skipped_probes=skipped_probes(probes, selected),
                  failures=failed_probes(probes, selected) + failures,
                  wall_s=time.perf_counter() - started, probe_seconds=dict(probes.seconds))
