"""The runner and the registry: each check sees only the probes it declares, a skipped check
names the probe it missed, every skipped probe is listed, and the budget's shares go to the
probes the selected checks need.

Every check's sick and healthy tests (test_*_checks.py) run through `run_checks`, where a read
of an undeclared probe fails the check: they are what keeps each `requires` complete.
"""

from __future__ import annotations

import pytest

from clipdoctor.doctor.probes import PROBES, Budget, Probes, UndeclaredProbe, with_needs
from clipdoctor.doctor.registry import CHECKS, Check, check
from clipdoctor.doctor.runner import load_checks, run_checks, selected_checks, skipped_probes


def _dataset(weighting: str) -> dict:
    return {"classes": ["a", "b"], "counts": {"train": [50, 10], "val": [5, 5], "test": [5, 5]},
            "class_weighting": weighting, "weighting_source": "loss_fn", "loss": "my_loss"}


def test_a_check_that_reads_an_undeclared_probe_fails(monkeypatch):
    load_checks()

    def sneaky(probes: Probes) -> list:
        probes.get("clip_scan")
        return []

    monkeypatch.setitem(CHECKS, "sneaky", Check("sneaky", sneaky, ("class-imbalance",), 0,
                                                ("dataset",)))
    probes = Probes(values={"dataset": _dataset("none"), "clip_scan": {}})
    findings, skipped, failures = run_checks(probes, ["sneaky"])
    assert findings == [] and skipped == []
    assert failures == [{"name": "sneaky", "error": "UndeclaredProbe: 'clip_scan' is read but "
                                                    "not declared (declared: dataset)"}]
    with pytest.raises(UndeclaredProbe):
        Probes(values={"dataset": {}}).only(["clip_scan"]).get("dataset")


def test_checks_and_probes_must_declare_known_probes(monkeypatch):
    with pytest.raises(ValueError, match="requires"):
        check("nan-loss")(lambda probes: [])
    load_checks()
    monkeypatch.setitem(CHECKS, "typo", Check("typo", lambda p: [], ("nan-loss",), 0,
                                              ("grad_stat",)))
    with pytest.raises(ValueError, match="check 'typo' reads unknown probe 'grad_stat'"):
        load_checks()


def test_a_skipped_check_names_the_probe_it_missed():
    probes = Probes(values={"dataset": _dataset("unknown")})
    _, skipped, _ = run_checks(probes, ["fit_curves", "class_weights"])
    by_name = {s["name"]: s for s in skipped}
    assert by_name["fit_curves"]["probe"] == "short_run"
    assert by_name["fit_curves"]["reason"] == "'short_run' was not measured"
    assert by_name["fit_curves"]["codes"] == ["overfitting", "underfitting", "not-converged"]
    # a check that declines on what it measured names no probe
    assert by_name["class_weights"]["probe"] is None
    assert "my_loss" in by_name["class_weights"]["reason"]


def test_skipped_probes_are_listed_even_when_their_check_ran():
    probes = Probes(values={"run_record": {"run": "RUN", "failure": None, "config_lr": 1e-3}})
    findings, skipped, failures = run_checks(probes, ["nan_loss"])
    assert findings == skipped == failures == []  # the run record alone decides
    listed = skipped_probes(probes, selected_checks(["nan_loss"]))
    assert {p["name"]: p["checks"] for p in listed} == {"grad_stats": ["nan_loss"],
                                                        "short_run": ["nan_loss"]}
    assert all(p["reason"] == f"'{p['name']}' was not measured" for p in listed)


def test_the_budget_goes_to_the_probes_the_selected_checks_need():
    load_checks()
    declared = {name: spec.share for name, spec in PROBES.items() if spec.share}
    full = Budget(100.0)
    full.plan(with_needs(p for c in selected_checks() for p in c.requires))
    assert {name: full.share(name) for name in declared} == declared  # the default run

    needed = with_needs(CHECKS["learning_rate"].requires)
    assert needed == {"lr_range", "short_run", "overfit_batch", "training_data"}
    narrow = Budget(100.0)
    narrow.plan(needed)
    assert sum(narrow.share(n) for n in needed) == pytest.approx(sum(declared.values()))
    assert narrow.allowance("short_run") > full.allowance("short_run")
    assert narrow.share("lr_range") / narrow.share("short_run") == pytest.approx(
        declared["lr_range"] / declared["short_run"])


def test_a_model_that_cannot_be_built_is_a_finding_and_the_data_is_still_examined(
        tmp_path, monkeypatch):
    """No network and the hub's weights not cached (issue 15: 0 findings, exit 0, 234 s):
    `model-not-built` first, with the error's fix; the data checks run without the model
    (corrupt files and the imbalance found); the model's probes are skipped, not failed."""
    import time

    import clipdoctor.models.backbones as backbones
    from clipdoctor.config import RunConfig, with_overrides
    from clipdoctor.data.sources import load_source
    from clipdoctor.data.synthetic import generate
    from clipdoctor.doctor.runner import diagnose
    from clipdoctor.errors import ClipdoctorError

    def offline(name: str) -> None:
        raise ClipdoctorError(f"cannot download timm's pretrained weights for '{name}': no "
                              "network; give a local file with --weights FILE, or train from "
                              "random weights with --no-pretrained")

    monkeypatch.setattr(backbones, "hub_cached_file", lambda name: None)
    monkeypatch.setattr(backbones, "check_hub_reachable", offline)
    generate(tmp_path / "data", clips_per_class=12, frames=8, size=32,
             classes=["move_left", "move_right"], imbalance=4.0, corrupt=0.15, seed=3)
    config = with_overrides(RunConfig(), {"model.backbone": "resnet10t", "data.size": 32,
                                          "data.frames": 8, "data.cache_dir": str(tmp_path / "c")})
    started = time.perf_counter()
    report = diagnose(load_source(tmp_path / "data"), config=config, budget_s=20)
    assert time.perf_counter() - started < 120
    first = report.findings[0]
    assert first.code == "model-not-built" and first.severity == "error"
    assert first.remedy.startswith("Give a local file with --weights FILE")
    assert {"corrupt-clips", "class-imbalance"} <= set(report.codes())
    assert report.failures == []
    reasons = {s["name"]: s["reason"] for s in report.skipped_probes}
    assert "model-not-built" in reasons["training_data"]
