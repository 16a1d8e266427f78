"""What a finished or failed training run recorded in its folder (`diagnose --run RUN`).

`run_record` reads `RUN/failure.json`, written by `train()` when the loss became NaN / Inf
(`clipdoctor.training.guards`): stage, epoch, step, learning rate and whether the inputs were
finite. A folder without the file is a run that did not fail that way.
"""

from __future__ import annotations

import json

from clipdoctor.doctor.probes import Context, Probes, ProbeSkipped, probe
from clipdoctor.training.guards import FAILURE_FILE


@probe("run_record")
def run_record(ctx: Context, probes: Probes) -> dict:
    if ctx.run is None:
        raise ProbeSkipped("no run folder given (diagnose DATA --run RUN)")
    path = ctx.run / FAILURE_FILE
    if not path.exists():
        return {"run": str(ctx.run), "failure": None, "config_lr": ctx.config.train.lr}
    try:
        failure = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ProbeSkipped(f"{path}: unreadable ({e})") from None
    if not isinstance(failure, dict):
        raise ProbeSkipped(f"{path}: expected a JSON object")
    return {"run": str(ctx.run), "failure": failure, "config_lr": ctx.config.train.lr}
