"""Refusals the CLI reports as such (exit 1), kept free of heavy imports so every command can name them."""


class MlError(Exception):
    """Base of the ml package's expected failures."""


class DataError(MlError, ValueError):
    """The training data cannot be used as asked (no files, missing columns, too few rows)."""


class ExportMismatchError(MlError, RuntimeError):
    """The ONNX graph does not reproduce PyTorch's scores within tolerance."""
