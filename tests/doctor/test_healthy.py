"""Few false alarms: the healthy demo configuration on clean data reports no error and no
warning, over several seeds, with every check of every area running."""

from __future__ import annotations

import pytest

from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.demo import demo_config
from clipdoctor.doctor.runner import diagnose


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("healthy") / "data"
    generate(root, clips_per_class=30, frames=12, size=64,
             classes=["move_left", "move_right", "grow", "shrink"], seed=3)
    return load_source(root)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_configuration_reports_no_error_or_warning(clean_data, tmp_path, seed):
    config = demo_config(tmp_path / "cache", seed=seed)
    report = diagnose(clean_data, config=config, budget_s=40)
    loud = [(f.code, f.severity, f.title) for f in report.findings
            if f.severity in ("error", "warning")]
    assert loud == [], loud
    assert report.failures == [], report.failures
    assert report.wall_s < 90
