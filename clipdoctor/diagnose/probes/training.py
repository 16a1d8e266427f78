"""training probes."""

from __future__ import annotations
