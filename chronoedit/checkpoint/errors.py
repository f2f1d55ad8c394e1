"""The one error type for everything that can be wrong with a checkpoint on disk."""


class CheckpointError(ValueError):
    """A checkpoint file or folder cannot be loaded; the message names the file and the keys."""


def name_some(keys, limit: int = 12) -> str:
    """'a, b, c … (+N more)' for error messages."""
    keys = sorted(keys)
    head = ", ".join(keys[:limit])
    return head + (f" … (+{len(keys) - limit} more)" if len(keys) > limit else "")
