"""The doctor: probes measure once, checks turn measurements into ranked findings."""
