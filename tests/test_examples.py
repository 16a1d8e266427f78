"""The examples the README points to run as shipped and say what the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_diagnose_my_model_finds_the_drift_and_clears_the_fix(tmp_path):
    html = tmp_path / "report.html"
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "diagnose_my_model.py"),
                          "--budget", "30", "--html", str(html)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    faulty, fixed = out.stdout.split("== fixed model")
    assert "data (T, C, H, W) float32" in faulty
    assert "errors and warnings: frozen-batchnorm-drift" in faulty, out.stdout
    assert "errors and warnings: none" in fixed, out.stdout
    assert html.exists() and "frozen-batchnorm-drift" in html.read_text()
    assert out.stderr.strip() == "", out.stderr[-2000:]  # no warnings or tracebacks for the user
