"""FlashFace's extra reference attention for one transformer block (official
`ff/models/reference_unet.py`, `forward_with_ref`).

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

Several identities k (several people in one image), each with references R_k and a weight
w_k = s_k * m_k per row and query token (strength times region), generalise the term to
(1 - sum_k w_k) SA'(y) + sum_k w_k SA'(y, [y; R_k]); one identity with w = s is the block above.
Each identity attends only with the rows and query tokens it covers, and the merge shares SA'(y)
and its log-sum-exp between all identities.
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


def identity_weights(row_strengths, regions):
    """Each identity's weight s_k * m_k per row and query token for `identities_reference_attention`.

    row_strengths: K tensors [B] (the identities' s_k per row); regions: K tensors [B, T] in 0..1 or None
    (the whole image). Where the regions of the identities that act in a row (s_k != 0) sum to more
    than 1 at a query they are scaled down proportionally, so the weights never take more than the
    whole SA' term; an identity that is off in a row (strength 0, or outside its start/end) takes no
    share there. Without any region the weights stay [B, 1] (one value per row)."""
    given = [region.shape for region in regions if region is not None]
    shape = given[0] if given else (row_strengths[0].shape[0], 1)
    filled = [torch.ones(shape, dtype=s.dtype, device=s.device) if m is None else m.to(s.dtype)
              for s, m in zip(row_strengths, regions)]
    acting = [m * (s != 0).to(m.dtype).reshape(-1, 1) for s, m in zip(row_strengths, filled)]
    total = torch.stack(acting).sum(0).clamp(min=1)
    return [s.reshape(-1, 1) * (m / total) for s, m in zip(row_strengths, filled)]


def identities_reference_attention(y, weights, projections: Projections, heads, references, attention=sdpa_attention,
                                   attention_lse=None):
    """The SA' term for K identities, each with its own references R_k and weight w_k = s_k * m_k per
    row and query token (`identity_weights`):

        (1 - sum_k w_k) * SA'(y) + sum_k w_k * SA'(y, [y; R_k])

    weights: K tensors [B, T] or [B, 1] (one value per row); references: K ReferenceKV (None where that
    identity's weights are all 0). An identity only attends for the rows and query tokens it covers.
    """
    query, key, value = projections.to_q(y), projections.to_k(y), projections.to_v(y)
    weights = [w.to(y.device, y.dtype) for w in weights]
    for w, refs in zip(weights, references):
        if w.shape[0] != y.shape[0] or w.shape[1] not in (1, y.shape[1]):
            raise ValueError(f"identity weights {tuple(w.shape)} do not fit {y.shape[0]} rows of {y.shape[1]} tokens")
        if refs is None and bool((w != 0).any()):
            raise ValueError("rows with a non-zero reference strength need the reference keys/values")
    covered = [(w, refs, _covered(w)) for w, refs in zip(weights, references)]
    covered = [(w, refs, where) for w, refs, where in covered if where is not None]
    if attention_lse is not None:
        return projections.to_out(_mix_branches_merged(query, key, value, covered, heads, attention_lse))

    mixed = torch.zeros_like(query)
    plain_weight = 1 - sum(w for w, _, _ in covered) if covered else torch.ones_like(query[:, :1, 0])
    plain_rows = (plain_weight != 0).any(1)
    if bool(plain_rows.any()):
        rows = _row_index(plain_rows)
        plain = attention(query[rows], key[rows], value[rows], heads)
        mixed[rows] += plain_weight[rows].unsqueeze(-1) * plain

    for w, refs, (rows, tokens) in covered:
        with_refs = _attend_with_references(_take(query, rows, tokens), key[rows], value[rows], refs, heads, attention)
        mixed = _add_at(mixed, rows, tokens, _take(w, rows, tokens).unsqueeze(-1) * with_refs)
    return projections.to_out(mixed)


def _covered(weight):
    """(rows, tokens) where `weight` [B, T or 1] is non-zero, as slices where all are, or None."""
    nonzero = weight != 0
    rows = nonzero.any(1)
    if not bool(rows.any()):
        return None
    row_index = _row_index(rows)
    tokens = slice(None) if weight.shape[1] == 1 else _row_index(nonzero[row_index].any(0))
    return row_index, tokens


def _take(t, rows, tokens):
    """t[rows][:, tokens] for [B, T, ...] tensors; a [B, 1] weight keeps its single column."""
    t = t[rows]
    return t if isinstance(tokens, slice) or t.shape[1] == 1 else t[:, tokens]


def _add_at(base, rows, tokens, delta):
    """base + delta at the given rows and tokens (a new tensor where it must be scattered)."""
    if isinstance(tokens, slice):
        if isinstance(rows, slice):
            return base + delta
        return base.index_add(0, rows, delta)
    row_index = torch.arange(base.shape[0], device=base.device)[rows]
    return base.index_put((row_index[:, None], tokens[None, :]), delta, accumulate=True)


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


def _mix_branches_merged(query, key, value, covered, heads, attention_lse):
    """A(y) + sum_k w_k (A(y, [y; R_k]) - A(y)) with A(y, [y; R_k]) = A(y) + p_k (A(R_k) - A(y)), where
    p_k = sigmoid(lse_R_k - lse_y) is the share of the softmax mass that falls on R_k. A(y) and its
    log-sum-exp are computed once for all identities."""
    plain, lse_plain = attention_lse(query, key, value, heads)
    mixed = plain
    precision = torch.promote_types(plain.dtype, torch.float32)  # lse is fp32 for half inputs
    for w, references, (rows, tokens) in covered:
        queries = _take(query, rows, tokens)
        count = queries.shape[0]
        mask = None if references.log_weight is None else references.log_weight.to(query.dtype).reshape(1, 1, 1, -1)
        with_refs, lse_refs = attention_lse(queries, references.key.to(query.dtype).expand(count, -1, -1),
                                            references.value.to(query.dtype).expand(count, -1, -1), heads, mask)
        lse_y = lse_plain[rows] if isinstance(tokens, slice) else lse_plain[rows][:, :, tokens]
        share = torch.sigmoid(lse_refs.to(precision) - lse_y.to(precision))
        share = share * _take(w, rows, tokens).to(precision).reshape(count, 1, -1)
        delta = (with_refs - _take(plain, rows, tokens)).unflatten(-1, (heads, -1))
        delta = (delta * share.transpose(1, 2).unsqueeze(-1).to(plain.dtype)).flatten(-2)
        mixed = _add_at(mixed, rows, tokens, delta)
    return mixed
