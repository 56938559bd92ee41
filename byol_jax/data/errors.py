"""The data layer's one exception type, shared by every source and stream."""


class DatasetError(ValueError):
    """Raised with a clear, actionable message (what's wrong, how to fix)."""
