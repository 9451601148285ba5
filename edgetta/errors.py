"""Exception types shared by every layer. Each message names the problem and the fix."""


class EdgettaError(Exception):
    """Base class for errors edgetta reports to users."""


class ExportError(EdgettaError):
    """The model, its specification or an export option cannot be turned into an artifact."""


class ArtifactError(EdgettaError):
    """An artifact directory is missing, malformed, tampered with or of an unsupported version."""


class ConfigError(EdgettaError):
    """A configuration value is invalid; the message names the key."""


class CheckpointError(EdgettaError, ValueError):
    """A checkpoint is missing, unreadable, foreign, too new, or does not match this configuration."""


class DataError(EdgettaError):
    """Input data (a stream file, arrays, a label) cannot be read or does not fit the model."""


class OutputError(EdgettaError):
    """An output location cannot be created or written."""


class SigningKeyError(EdgettaError):
    """A signing or verification key file is missing, unreadable, of the wrong kind or would be overwritten."""


class BundleRejected(EdgettaError):
    """A parameter bundle was refused. ``code``: a stable machine-readable reason (``bad_signature``,
    ``stale_version``, ... see docs/bundles.md); the message says what was wrong and what to do."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
