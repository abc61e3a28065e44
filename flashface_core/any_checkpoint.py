"""FlashFace on any SD1.5 checkpoint: the fine-tune applied as a difference on top of it.

FlashFace fine-tuned every weight of SD1.5's U-Net. Moving a user's checkpoint by the same amount
keeps what the user's checkpoint changed in SD1.5 (its style) and adds what FlashFace changed:

    W = W_flashface + strength * (W_user - W_base)

for every main-U-Net weight the two share; W_base is the SD1.5 FlashFace was fine-tuned from.
strength 0 is plain FlashFace, 1 the whole difference (IC-Light's recipe for other bases).
"""

import torch

CONV_IN = "input_blocks.0.0.weight"
CROSS_ATTENTION_KEY_SUFFIX = "attn2.to_k.weight"  # its input width is the text context width
KNOWN_INPUT_CHANNELS = {8: "an instruct-pix2pix model?", 9: "a 9-channel inpainting model?"}
KNOWN_CONTEXT_WIDTHS = {1024: "an SD2.x model?", 2048: "an SDXL model?"}


def add_flashface_difference_(weight, w_flashface, w_base, strength: float) -> torch.Tensor:
    """weight <- w_flashface + strength * (weight - w_base), in place: `weight` is the working copy of
    the user's weight that ComfyUI hands to patches. The other two are read on weight's device in their
    own dtype (mixed-dtype in-place ops: no full-size float copies)."""
    device = weight.device
    weight.sub_(w_base.to(device))
    if strength != 1:
        weight.mul_(strength)
    return weight.add_(w_flashface.to(device))


def unet_mismatch(expected: dict[str, tuple], found: dict[str, tuple]) -> str | None:
    """None when `found` (key -> shape) has every `expected` key with the same shape; otherwise what
    differs, e.g. "input_blocks.0.0.weight is [320, 9, 3, 3] where SD1.5 has [320, 4, 3, 3] (a 9-channel
    inpainting model?); 1 of 686 weights differ"."""
    differing = [key for key, shape in expected.items() if found.get(key) != tuple(shape)]
    if not differing:
        return None
    first = CONV_IN if CONV_IN in differing else differing[0]
    have = found.get(first)
    described = f"{first} is missing" if have is None else f"{first} is {list(have)}"
    text = f"{described} where SD1.5 has {list(expected[first])}"
    hints = [hint for hint in (_input_channels_hint(expected, found), _context_hint(expected, found)) if hint]
    if hints:
        text += f" ({'; '.join(hints)})"
    return f"{text}; {len(differing)} of {len(expected)} weights differ"


def _input_channels_hint(expected, found):
    if CONV_IN not in found or CONV_IN not in expected or found[CONV_IN][1] == expected[CONV_IN][1]:
        return None
    channels = found[CONV_IN][1]
    return KNOWN_INPUT_CHANNELS.get(channels, f"{channels} input channels, SD1.5 has {expected[CONV_IN][1]}")


def _context_hint(expected, found):
    want = _context_width(expected)
    have = _context_width(found)
    if want is None or have is None or have == want:
        return None
    known = KNOWN_CONTEXT_WIDTHS.get(have)
    return f"text context {have} wide, SD1.5's is {want}" + (f": {known}" if known else "")


def _context_width(shapes):
    return next((shape[1] for key, shape in shapes.items() if key.endswith(CROSS_ATTENTION_KEY_SUFFIX)), None)
