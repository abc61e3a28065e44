"""Import-only stand-in for torchvision: ComfyUI imports it at module level, SD1.5 never calls it,
and PyPI's torchvision cannot load next to the CPU torch used here. Put on sys.path only when no
real torchvision is installed."""

from . import transforms  # noqa: F401
