"""Exceptions raised by coinpp_pipeline. All are ValueErrors so callers can catch broadly."""


class CoinppError(ValueError):
    """Base class of every error this package raises on bad input."""


class BitstreamError(CoinppError):
    """Chunk bytes are truncated, corrupted, of an unknown format version or not ours."""


class ModelMismatchError(CoinppError):
    """Chunk bytes or a model file do not belong to the model that was given or expected."""


class ModelFileError(CoinppError):
    """A model file cannot be read: unknown format version, bad header, hash mismatch."""


class NotFittedError(CoinppError):
    """An entropy model or quantizer was used before it was fitted."""
