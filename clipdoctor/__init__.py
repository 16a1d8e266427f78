"""clipdoctor: train CNN-LSTM clip classifiers and find out why the loss stays high."""

from clipdoctor.errors import ClipdoctorError, DataError, DecodeError

__version__ = "0.1.0"

__all__ = ["ClipdoctorError", "DataError", "DecodeError", "__version__"]
