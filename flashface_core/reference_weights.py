"""How much each reference photo counts: user weights and the official padding to 4 copies.

The official demo pads the detected faces with random duplicates until there are
four (official `demo_gradio.py`). A reference repeated m times is the same as multiplicity
m (reference_attention adds log m to its logits), so padding costs nothing here;
we pad deterministically, spreading the copies as evenly as possible.
"""

OFFICIAL_REFERENCE_COUNT = 4


def parse_reference_weights(text, count):
    """'1,1,2' -> [1.0, 1.0, 2.0]; an empty string means 1 for every reference."""
    text = (text or "").strip()
    if not text:
        return [1.0] * count
    try:
        weights = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"weights must be comma-separated numbers like '1,1,2', got {text!r}") from None
    if len(weights) != count:
        raise ValueError(f"weights lists {len(weights)} numbers for {count} reference images; give one per image")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must all be positive, got {text!r}")
    return weights


def padded_multiplicity(count, pad_to=OFFICIAL_REFERENCE_COUNT):
    """Copies per reference when `count` photos are padded to `pad_to` (no padding when pad_to <= count)."""
    if count < 1:
        raise ValueError("need at least one reference")
    total = max(pad_to, count)
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def reference_multiplicity(weights, pad_to=OFFICIAL_REFERENCE_COUNT):
    """Final per-reference multiplicity: padding copies times the user's weights."""
    return [copies * weight for copies, weight in zip(padded_multiplicity(len(weights), pad_to), weights)]
