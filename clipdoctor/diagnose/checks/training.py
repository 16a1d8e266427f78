"""training checks (see DESIGN §4)."""

from __future__ import annotations
