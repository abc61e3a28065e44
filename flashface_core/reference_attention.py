"""FlashFace's extra reference attention for one transformer block (spec section 1.4).

Official block (`forward_with_ref`), y = norm1(x), R = the stored reference tokens:

    x += SA(y) + s * SA'(y, [y; R]) + (1 - s) * SA'(y)

This module computes the SA' term. It evaluates per row only the branch that
row needs (s = 0 never touches the references, s = 1 never computes SA'(y)),
projects the reference K/V once and shares them between rows, and mixes the two
branches before the output projection (valid because s + (1 - s) = 1 scales the
bias exactly once). A reference that the official code would repeat m times is
expressed as +log(m) on its attention logits, which gives the same softmax.

Given an attention that also returns each query's log-sum-exp (`attention_lse`), rows
that need both branches share the T x T part: the softmax over [y; R] is recombined
from the softmaxes over y and over R (the flash-attention merge), so a row costs
T*T + T*N*t logits instead of T*T + T*(T + N*t).
"""

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F


class Projections(Protocol):
    """A block's SA' layers: callables on [B, L, C] (nn.Linear or ComfyUI's casting Linear)."""

    to_q: Callable[[torch.Tensor], torch.Tensor]
    to_k: Callable[[torch.Tensor], torch.Tensor]
    to_v: Callable[[torch.Tensor], torch.Tensor]
    to_out: Callable[[torch.Tensor], torch.Tensor]


def sdpa_attention(q, k, v, heads, mask=None):
    """Multi-head attention on [B, L, C] tensors (same call shape as ComfyUI's optimized_attention)."""
    batch, length, channels = q.shape
    dim_head = channels // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, dim_head).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, length, channels)


@dataclass
class ReferenceKV:
    """Reference tokens of one block projected to keys/values once per step: [1, N*t, C] each."""

    key: torch.Tensor
    value: torch.Tensor
    log_weight: torch.Tensor | None  # [N*t] additive logit bias, None when every multiplicity is 1


def project_references(ref_tokens, projections: Projections, multiplicity=None):
    """Project stored reference hidden states [N, t, C] with the block's SA' layers.

    `multiplicity` ([N], positive) weights each reference as if it appeared that
    many times; the official padding of 1 photo to 4 copies is multiplicity 4.
    """
    count, tokens, channels = ref_tokens.shape
    flat = ref_tokens.reshape(1, count * tokens, channels)
    key = projections.to_k(flat)
    value = projections.to_v(flat)
    log_weight = None
    if multiplicity is not None:
        multiplicity = torch.as_tensor(multiplicity, dtype=torch.float64)
        if multiplicity.shape != (count,) or not bool((multiplicity > 0).all()):
            raise ValueError(f"multiplicity must be {count} positive numbers, got {multiplicity.tolist()}")
        if not bool((multiplicity == 1).all()):
            log_weight = multiplicity.log().repeat_interleave(tokens).to(key.device, key.dtype)
    return ReferenceKV(key, value, log_weight)


def cpu_attention_lse(q, k, v, heads, mask=None):
    """torch's fused CPU attention on [B, L, C] tensors; also returns the logits' log-sum-exp [B, heads, L]."""

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(split(q), split(k), split(v),
                                                                          attn_mask=mask)[:2]
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1), lse


def attention_lse_for(device):
    """`cpu_attention_lse` where torch has that kernel (CPU, torch >= 2.2); None elsewhere."""
    if torch.device(device).type != "cpu":
        return None
    return cpu_attention_lse if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu") else None


def reference_attention(y, strength, projections: Projections, heads, references=None, attention=sdpa_attention,
                        attention_lse=None):
    """The SA' term to add to the block's residual stream.

    y: [B, T, C] normed hidden states (norm1 output); strength: [B] per-row s;
    projections: the block's SA' layers; references: the
    block's ReferenceKV, required when any row has s != 0; attention_lse: see
    the module docstring (then `attention` is not used).
    """
    strength = torch.as_tensor(strength, dtype=y.dtype, device=y.device).reshape(-1)
    if strength.shape[0] != y.shape[0]:
        raise ValueError(f"need one strength per row: {strength.shape[0]} strengths for {y.shape[0]} rows")
    query, key, value = projections.to_q(y), projections.to_k(y), projections.to_v(y)
    if bool((strength != 0).any()) and references is None:
        raise ValueError("rows with a non-zero reference strength need the reference keys/values")
    if attention_lse is not None:
        mixed = _mix_branches_merged(query, key, value, strength, references, heads, attention_lse)
        return projections.to_out(mixed)

    mixed = torch.zeros_like(query)
    plain_rows = strength != 1
    if bool(plain_rows.any()):
        rows = _row_index(plain_rows)
        plain = attention(query[rows], key[rows], value[rows], heads)
        mixed[rows] += (1 - strength[rows]).reshape(-1, 1, 1) * plain

    ref_rows = strength != 0
    if bool(ref_rows.any()):
        rows = _row_index(ref_rows)
        with_refs = _attend_with_references(query[rows], key[rows], value[rows], references, heads, attention)
        mixed[rows] += strength[rows].reshape(-1, 1, 1) * with_refs

    return projections.to_out(mixed)


def _row_index(selected):
    """A slice when every row is selected (no gather copy), else the selected indices."""
    return slice(None) if bool(selected.all()) else selected.nonzero().flatten()


def _attend_with_references(query, key, value, references, heads, attention):
    rows = query.shape[0]
    ref_key = references.key.to(query.dtype).expand(rows, -1, -1)
    ref_value = references.value.to(query.dtype).expand(rows, -1, -1)
    full_key = torch.cat([key, ref_key], dim=1)
    full_value = torch.cat([value, ref_value], dim=1)
    if references.log_weight is None:
        return attention(query, full_key, full_value, heads)
    bias = torch.cat([references.log_weight.new_zeros(key.shape[1]), references.log_weight]).to(query.dtype)
    return attention(query, full_key, full_value, heads, mask=bias.reshape(1, 1, -1))


def _mix_branches_merged(query, key, value, strength, references, heads, attention_lse):
    """(1 - s) A(y) + s A(y, [y; R]) with A(y, [y; R]) = A(y) + w (A(R) - A(y)), where
    w = sigmoid(lse_R - lse_y) is the share of the softmax mass that falls on the references."""
    plain, lse_plain = attention_lse(query, key, value, heads)
    ref_rows = strength != 0
    if not bool(ref_rows.any()):
        return plain
    rows, count = _row_index(ref_rows), int(ref_rows.sum())
    mask = None if references.log_weight is None else references.log_weight.to(query.dtype).reshape(1, 1, 1, -1)
    with_refs, lse_refs = attention_lse(query[rows], references.key.to(query.dtype).expand(count, -1, -1),
                                        references.value.to(query.dtype).expand(count, -1, -1), heads, mask)
    precision = torch.promote_types(plain.dtype, torch.float32)  # lse is fp32 for half inputs
    share = torch.sigmoid(lse_refs.to(precision) - lse_plain[rows].to(precision))
    share = share * strength[rows].to(precision).reshape(-1, 1, 1)
    delta = (with_refs - plain[rows]).unflatten(-1, (heads, -1)) * share.transpose(1, 2).unsqueeze(-1).to(plain.dtype)
    delta = delta.flatten(-2)
    if isinstance(rows, slice):
        return plain + delta
    return plain.index_add(0, rows, delta)
