"""The doctor: probes measure once, checks turn measurements into ranked findings.

`registry.py` holds the checks (`@check`), `checks/` the checks themselves by area, `probes/`
the measurements, `runner.py` runs them (`diagnose()`), `findings.py` the Report.
"""
