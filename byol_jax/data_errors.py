"""The data layer's one exception type, shared by the IDX reader and the input pipeline."""


class DatasetError(ValueError):
    """Raised with a clear, actionable message (what's wrong, how to fix)."""
