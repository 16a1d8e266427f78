"""Errors that reach the user as one clear line (the CLI prints them and exits with code 2)."""

from __future__ import annotations

from pathlib import Path


class ClipdoctorError(Exception):
    """Bad input or usage. The message says what was received, what is allowed and what to do."""


class DataError(ClipdoctorError):
    """A dataset that cannot be used as given (missing folder, unknown layout, bad manifest...)."""


class DecodeError(ClipdoctorError):
    """One clip file that cannot be decoded; `reason` is short and human readable."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep pickling (DataLoader workers) working with two arguments
        return (type(self), (self.path, self.reason))
