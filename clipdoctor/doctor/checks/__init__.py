"""One small pure function per check, one module per DESIGN §4 area: `data.py`, `model.py`,
`training.py`, `temporal.py` (a check lives in the area of the codes it emits). What more than
one of them uses is in `common.py`; they never import each other. Each check registers itself
with `@check(*codes, order=..., requires=(probe names...))` (`diagnose/registry.py`);
`diagnose/runner.py` imports these modules and runs the checks."""
