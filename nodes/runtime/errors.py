"""The one error type the nodes raise for bad input: its message names the node, the input and the fix."""


class FlashFaceNodeError(ValueError):
    """A user-facing error: names the node, the input and the fix."""
