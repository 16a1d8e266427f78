"""`repair`: findings -> configuration changes -> brief re-training over several seeds.

The remedies (remedies.py) are run-config changes answering the report's findings (the LR
from the range test, class weights, clip-consistent augmentation, masked padding, a wider
projection, more frames, grid pooling and feature differences, dropping broken clips, ...);
findings no config change can answer stay as advice. The evidence is a controlled comparison
on the user's data, each configuration trained briefly with the same seeds:
  before          the config as given
  all-lr<x>       every remedy applied, at each LR candidate (the range test's valley and
                  multiples: the valley alone is cautious); the best becomes `all`
  without-<r>     every remedy but r (only when there are two or more)
A remedy is kept when `all` beats `without-<r>` (it helped with the others in place); when
some are dropped, the kept set is trained once more as `kept` and reported as `after`.
Configurations are compared (`better`) on the mean over seeds of the unweighted validation
balanced accuracy, on the validation loss when accuracies tie (ACC_TIE), and on the loss alone
when one is LOSS_BLOWUP times the other (diverging or overconfident). Every configuration is
measured by the same evaluation, so a change of class weighting cannot move the yardstick.

RUN/  config.yaml (the repaired config: `clipdoctor train DATA --config RUN/config.yaml`),
      repair.json (findings, remedies, per-seed trials), diagnosis.json, trials/<name>/seed<k>/
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clipdoctor.config import RunConfig, save_config, with_overrides
from clipdoctor.doctor.findings import Finding, Report
from clipdoctor.doctor.remedies import Remedy, apply, plan
from clipdoctor.errors import ClipdoctorError

log = logging.getLogger(__name__)

ACC_TIE = 0.01  # balanced-accuracy differences below this are noise at 3 seeds: compare losses
LOSS_BLOWUP = 2.0  # a validation loss this many times another's decides on its own
# The range test's valley is a cautious LR (on the healthy demo it sits about 7x below the LR
# that trains well, checks/training.py): repair tries it and these multiples, in brief runs
LR_FACTORS = (1.0, 3.0, 10.0)
# brief re-training: enough for a fixed LR or weighting to show. Epochs on cached features
# (frozen backbone) cost about a second; end to end, each re-decodes and runs the backbone.
TRIAL_EPOCHS_CACHED, TRIAL_EPOCHS_CLIPS = 30, 8

# ---------------------------------------------------------------------------------------------
# brief re-training over seeds

@dataclass
class Trial:
    """One configuration trained briefly with each seed."""

    name: str
    runs: list[dict] = field(default_factory=list)  # per seed: seed, val_loss, balanced_acc | error

    def _values(self, key: str, failed: float) -> list[float]:
        return [r[key] if "error" not in r else failed for r in self.runs]

    def acc(self, chance: float) -> float:
        return statistics.fmean(self._values("balanced_acc", chance))

    def loss(self) -> float:
        return statistics.fmean(self._values("val_loss", math.inf))

    def summary(self, chance: float) -> dict:
        accs = self._values("balanced_acc", chance)
        losses = self._values("val_loss", math.inf)
        return {"name": self.name, "balanced_acc": round(statistics.fmean(accs), 4),
                "balanced_acc_std": round(statistics.pstdev(accs), 4),
                "val_loss": round(statistics.fmean(losses), 4) if all(map(math.isfinite, losses))
                else "inf", "failed": sum("error" in r for r in self.runs), "runs": self.runs}


def better(a: Trial, b: Trial, chance: float) -> bool:
    """a beats b: a validation loss under 1/LOSS_BLOWUP of b's wins outright (a model whose
    loss is several times higher is diverging or overconfident, whatever its accuracy); else
    a higher mean balanced accuracy, or a tie (ACC_TIE) and a lower loss."""
    la, lb = a.loss(), b.loss()
    if la * LOSS_BLOWUP < lb:
        return True
    if lb * LOSS_BLOWUP < la:
        return False
    da = a.acc(chance) - b.acc(chance)
    if abs(da) >= ACC_TIE:
        return da > 0
    return a.loss() < b.loss()


def _train_briefly(data: Any, config: RunConfig, out: Path, name: str, seeds: list[int],
                   epochs: int, say: Callable[[str], None]) -> Trial:
    from clipdoctor.training.guards import NonFiniteLoss
    from clipdoctor.training.run import train

    trial = Trial(name)
    for seed in seeds:
        cfg = with_overrides(config, {"seed": seed, "train.epochs": epochs,
                                      "train.finetune_epochs": min(config.train.finetune_epochs,
                                                                   epochs)})
        folder = out / "trials" / name / f"seed{seed}"
        say(f"training '{name}' (seed {seed}, {epochs} epochs)")
        try:
            run = train(data, cfg, folder)
            val = run.metrics["val"]
            if math.isfinite(val["loss"]):
                trial.runs.append({"seed": seed, "val_loss": round(val["loss"], 5),
                                   "balanced_acc": round(val["balanced_acc"], 5),
                                   "wall_s": run.metrics.get("wall_s")})
            else:  # NaN weights predict nothing: counted as chance with an infinite loss
                trial.runs.append({"seed": seed, "error": "validation loss is not finite"})
        except NonFiniteLoss as e:  # a diverging config is a result; other errors stop repair
            trial.runs.append({"seed": seed, "error": str(e)})
        for heavy in ("checkpoints", "logs"):  # trials are evidence, not runs to keep
            shutil.rmtree(folder / heavy, ignore_errors=True)
    return trial


def _with_best_lr(config: RunConfig, remedies: list[Remedy],
                  run: Callable[[RunConfig, str], Trial], chance: float
                  ) -> tuple[Trial, dict[float, Trial]]:
    """Every remedy applied and trained. With a learning-rate remedy, its LR is the best of
    the range test's suggestion times LR_FACTORS (only LRs on the remedy's side of the
    config's own, and none past the LR of the range test's lowest loss); the remedy is
    updated to the winner."""
    lr_remedy = next((r for r in remedies if "train.lr" in r.changes), None)
    if lr_remedy is None:
        return run(apply(config, remedies), "all"), {}
    base, old = lr_remedy.changes["train.lr"], config.train.lr
    ceiling = lr_remedy.changes.pop("_lr_ceiling", math.inf)  # the range test's lowest loss
    lowering = base < old
    candidates = [float(f"{base * f:.2g}") for f in LR_FACTORS]
    candidates = [lr for lr in dict.fromkeys(candidates)
                  if (lr < old if lowering else lr > old) and (lr == base or lr <= ceiling)]
    trials: dict[float, Trial] = {}
    best: float | None = None
    for lr in candidates or [base]:
        lr_remedy.changes["train.lr"] = lr
        trials[lr] = run(apply(config, remedies), f"all-lr{lr:g}")
        if best is None or better(trials[lr], trials[best], chance):
            best = lr
    lr_remedy.changes["train.lr"] = best
    lr_remedy.why = (f"--lr {best:g}: the best of {', '.join(f'{x:g}' for x in trials)} "
                     "(the LR range test's valley and multiples) in brief runs")
    return trials[best], trials


@dataclass
class RepairResult:
    path: Path
    config: RunConfig  # the repaired config (the original when nothing helped)
    report: Report
    remedies: list[Remedy]  # proposed
    kept: list[Remedy]
    advice: list[Finding]
    before: Trial
    after: Trial
    ablations: dict[str, Trial]
    chance: float
    everything: Trial | None = None  # every remedy applied
    lr_trials: dict[float, Trial] = field(default_factory=dict)  # LR candidates, every remedy

    def to_dict(self) -> dict:
        b, a = self.before.summary(self.chance), self.after.summary(self.chance)
        delta_loss = (None if "inf" in (a["val_loss"], b["val_loss"])
                      else round(a["val_loss"] - b["val_loss"], 4))
        return {
            "version": 1,
            "findings": [f.code for f in self.report.findings if f.severity != "info"],
            "remedies": [dict(r.to_dict(), kept=r in self.kept,
                              without=self.ablations[r.name].summary(self.chance)
                              if r.name in self.ablations else None) for r in self.remedies],
            "advice": [{"code": f.code, "remedy": f.remedy} for f in self.advice],
            "before": b, "all": self.everything.summary(self.chance) if self.everything else None,
            "after": a,
            "change": {"balanced_acc": round(a["balanced_acc"] - b["balanced_acc"], 4),
                       "val_loss": delta_loss},
            "lr_candidates": {f"{lr:g}": t.summary(self.chance) for lr, t in self.lr_trials.items()},
            "chance": round(self.chance, 4),
            "improved": bool(self.kept) and better(self.after, self.before, self.chance),
            "config": str(self.path / "config.yaml"),
        }


def repair(data: Any, *, config: RunConfig | None = None, out: str | Path = "runs/repair",
           seeds: int = 3, epochs: int | None = None, budget_s: float = 120.0,
           report: Report | None = None, say: Callable[[str], None] | None = None
           ) -> RepairResult:
    """Diagnose `data` with `config`, apply the remedies, keep those that help over `seeds`
    brief trainings of `epochs` each, and write the repaired config to OUT/config.yaml."""
    from clipdoctor.doctor.runner import diagnose
    from clipdoctor.io import atomic_write_text
    from clipdoctor.training.run import check_writable

    config = config or RunConfig()
    out = Path(out)
    check_writable(out)
    say = say or log.info
    if seeds < 1:
        raise ClipdoctorError(f"--seeds must be at least 1 (got {seeds})")
    if epochs is not None and epochs < 1:
        raise ClipdoctorError(f"--trial-epochs must be at least 1 (got {epochs})")
    epochs = epochs or min(config.train.epochs, TRIAL_EPOCHS_CACHED
                           if config.model.freeze_backbone else TRIAL_EPOCHS_CLIPS)
    k = len(data.classes)
    chance = 1.0 / k
    if report is None:
        say(f"diagnosing (budget {budget_s:g} s)")
        report = diagnose(data, config=config, budget_s=budget_s)
    report.to_json(out / "diagnosis.json")
    remedies, advice = plan(report, config, k)
    seed_list = [config.seed + i for i in range(seeds)]
    run = lambda cfg, name: _train_briefly(data, cfg, out, name, seed_list, epochs, say)  # noqa: E731

    before = run(config, "before")
    if not remedies:
        result = RepairResult(out, config, report, [], [], advice, before, before, {}, chance)
    else:
        everything, lr_trials = _with_best_lr(config, remedies, run, chance)
        ablations: dict[str, Trial] = {}
        if len(remedies) > 1:
            for r in remedies:
                ablations[r.name] = run(apply(config, [x for x in remedies if x is not r]),
                                        f"without-{r.name}")
            kept = [r for r in remedies if better(everything, ablations[r.name], chance)]
            if not kept and better(everything, before, chance):
                kept = list(remedies)  # they help together but stand in for each other
        else:
            kept = remedies if better(everything, before, chance) else []
        if kept and len(kept) < len(remedies):
            after = run(apply(config, kept), "kept")
        else:
            after = everything if kept else before
        if kept and not better(after, before, chance):
            say("the kept remedies do not beat the original config: keeping the original")
            kept, after = [], before
        result = RepairResult(out, apply(config, kept), report, remedies, kept, advice, before,
                              after, ablations, chance, everything, lr_trials)
    save_config(result.config, out / "config.yaml")
    atomic_write_text(out / "repair.json", json.dumps(result.to_dict(), indent=1))
    return result


# ---------------------------------------------------------------------------------------------
# models repair cannot re-train

KERAS_NO_RETRAIN = ("repair re-trains clipdoctor's own models from a run config; it cannot "
                    "re-train a Keras model. Apply the advice below in your Keras code, then "
                    "run `clipdoctor diagnose` again on the re-saved model")


def advise(data: Any, model: Any, *, config: RunConfig | None = None,
           optimizer: Any = None, out: str | Path = "runs/repair", budget_s: float = 120.0,
           say: Callable[[str], None] | None = None) -> tuple[Report, list[dict]]:
    """`repair` for a model it cannot re-train (a Keras model, given as a keras.Model or an
    `interop.keras.KerasAdapter`; `optimizer` as `diagnose` takes it): diagnose it, write
    OUT/diagnosis.json and OUT/advice.json, and return (report, advice): each finding's code,
    severity, title and remedy (worded for the model's framework by the checks), most
    important first."""
    from clipdoctor.doctor.runner import diagnose
    from clipdoctor.io import atomic_write_text
    from clipdoctor.training.run import check_writable

    out = Path(out)
    check_writable(out)
    say = say or log.info
    say(f"diagnosing (budget {budget_s:g} s)")
    report = diagnose(data, config=config, model=model, optimizer=optimizer, budget_s=budget_s)
    report.to_json(out / "diagnosis.json")
    advice = [{"code": f.code, "severity": f.severity, "title": f.title, "remedy": f.remedy}
              for f in report.findings]
    atomic_write_text(out / "advice.json", json.dumps(
        {"retrained": False, "why": KERAS_NO_RETRAIN, "advice": advice}, indent=1))
    return report, advice
