"""Typed errors shared by every part of edgeae; each message is one line that says what to do."""

from __future__ import annotations


class EdgeaeError(Exception):
    """Base of every error edgeae raises on purpose. The CLI prints its message, no traceback."""


class InputError(EdgeaeError, ValueError):
    """An image, array or path given by the user cannot be used (wrong shape, dtype, unreadable file)."""


class DataError(EdgeaeError):
    """A dataset path is missing or malformed."""


class RunDirError(EdgeaeError):
    """A training run directory is missing, incomplete, or its weights do not match its config."""


class BundleError(EdgeaeError):
    """A bundle is missing a file, has a tampered file, or its manifest does not validate."""


class ExportError(EdgeaeError):
    """An export failed verification. `failures` lists every check that failed."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        self.failures = list(failures or [])
        if self.failures:
            message = f"{message}: " + "; ".join(self.failures)
        super().__init__(message)


# What goes wrong when exporting a model (edgeae.export); each is an ExportError, so one `except` catches all.
class ModelLoadError(ExportError):
    """`--model file.py:factory` cannot be imported or its factory raised; weights do not load."""


class TraceError(ExportError):
    """The model cannot be traced to a static graph (data-dependent control flow, a failing forward)."""


class UnsupportedOperatorError(ExportError):
    """The model uses an operator the chosen ONNX opset cannot express."""


class ParityError(ExportError):
    """An exported graph's outputs differ from PyTorch beyond the tolerance (the message names output and item)."""


class ShapeMismatchError(ExportError):
    """The decoder does not give back the input's shape, or the latent has a shape the runtime cannot code."""


class NonFiniteError(ExportError):
    """NaN or infinity in a model's outputs."""


class CalibrationError(ExportError):
    """Calibration or validation data of the wrong shape, dtype or range, or too little of it."""


class DeviceProfileError(EdgeaeError):
    """A device profile (TOML) is missing or invalid; the message names the field."""


class PayloadError(EdgeaeError):
    """A payload cannot be decoded. Subclasses say why; `code` is a stable machine-readable name."""

    code = "payload_error"


class BadMagic(PayloadError):
    code = "bad_magic"


class UnsupportedVersion(PayloadError):
    code = "unsupported_version"


class Truncated(PayloadError):
    code = "truncated"


class ChecksumMismatch(PayloadError):
    code = "checksum_mismatch"


class FingerprintMismatch(PayloadError):
    code = "fingerprint_mismatch"


class CorruptStream(PayloadError):
    """The header was valid but the entropy-coded body, or a header field, is inconsistent."""

    code = "corrupt_stream"


class SelfTestFailed(EdgeaeError):
    """`edgeae doctor` found this install unable to encode or decode correctly."""
