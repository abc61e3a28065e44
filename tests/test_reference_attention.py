"""Reference attention against a literal transcription of the official block math."""

import pytest
import torch
import torch.nn.functional as F

from flashface_core.reference_attention import (attention_lse_for, identities_reference_attention, identity_weights,
                                                 project_references, sdpa_attention)

HEADS = 4
C = 32


class Projections(torch.nn.Module):
    """A block's SA' layers as plain nn.Linear modules over the given weights."""

    def __init__(self, w):
        super().__init__()
        for name in ("to_q", "to_k", "to_v"):
            setattr(self, name, torch.nn.Linear(C, C, bias=False, dtype=w[name + ".weight"].dtype))
            getattr(self, name).weight.data = w[name + ".weight"]
        self.to_out = torch.nn.Linear(C, C, dtype=w["to_out.0.weight"].dtype)
        self.to_out.weight.data, self.to_out.bias.data = w["to_out.0.weight"], w["to_out.0.bias"]


@pytest.fixture()
def raw_weights():
    g = torch.Generator().manual_seed(0)
    w = {name: torch.randn(C, C, generator=g, dtype=torch.float64) / C**0.5
         for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")}
    w["to_out.0.bias"] = torch.randn(C, generator=g, dtype=torch.float64)
    return w


@pytest.fixture()
def weights(raw_weights):
    return Projections(raw_weights)


def reference_attention(y, strength, projections, heads, references=None, attention=sdpa_attention, attention_lse=None):
    """One identity acting on the whole image with strength s per row."""
    strength = torch.as_tensor(strength, dtype=y.dtype).reshape(-1, 1)
    return identities_reference_attention(y, [strength], projections, heads, [references], attention=attention,
                                          attention_lse=attention_lse)


def official_term(y, refs, strength, projections):
    """Official `forward_with_ref`: refs repeated for every row, both SA' branches for every row, mixed after o."""
    w = {name: p for name, p in projections.named_parameters()}
    w = {k.replace("to_out.", "to_out.0."): v for k, v in w.items()}

    def attn(q_src, kv_src):
        q = F.linear(q_src, w["to_q.weight"])
        k = F.linear(kv_src, w["to_k.weight"])
        v = F.linear(kv_src, w["to_v.weight"])
        return F.linear(sdpa_attention(q, k, v, HEADS), w["to_out.0.weight"], w["to_out.0.bias"])

    rows = y.shape[0]
    ctx = torch.cat([y, refs.reshape(1, -1, C).repeat(rows, 1, 1)], dim=1)
    s = strength.reshape(-1, 1, 1)
    return s * attn(y, ctx) + (1 - s) * attn(y, y)


@torch.no_grad()
def test_matches_official_math_for_mixed_strengths(weights):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(4, 16, C, generator=g, dtype=torch.float64)
    refs = torch.randn(3, 9, C, generator=g, dtype=torch.float64)
    strength = torch.tensor([1.2, 0.0, 1.0, 0.85], dtype=torch.float64)
    ours = reference_attention(y, strength, weights, HEADS, project_references(refs, weights))
    assert (ours - official_term(y, refs, strength, weights)).abs().max() < 1e-12


@torch.no_grad()
def test_multiplicity_equals_duplicated_references(weights):
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 16, C, generator=g, dtype=torch.float64)
    refs = torch.randn(2, 9, C, generator=g, dtype=torch.float64)
    strength = torch.tensor([1.2, 0.85], dtype=torch.float64)
    padded = refs[[0, 0, 0, 1]]  # official padding: the first photo three times
    expected = official_term(y, padded, strength, weights)
    ours = reference_attention(y, strength, weights, HEADS, project_references(refs, weights, [3, 1]))
    assert (ours - expected).abs().max() < 1e-12
    unweighted = reference_attention(y, strength, weights, HEADS, project_references(refs, weights))
    assert (unweighted - expected).abs().max() > 1e-3  # the weighting matters


@torch.no_grad()
def test_each_row_runs_only_the_branch_it_needs(weights):
    calls = []

    def counting_attention(q, k, v, heads, mask=None):
        calls.append((q.shape[0], k.shape[1]))
        return sdpa_attention(q, k, v, heads, mask)

    g = torch.Generator().manual_seed(3)
    y = torch.randn(3, 16, C, generator=g, dtype=torch.float64)
    refs = torch.randn(4, 9, C, generator=g, dtype=torch.float64)
    kv = project_references(refs, weights)
    reference_attention(y, [1.0, 0.0, 0.0], weights, HEADS, kv, attention=counting_attention)
    assert sorted(calls) == [(1, 16 + 36), (2, 16)]
    calls.clear()
    reference_attention(y, [0.0, 0.0, 0.0], weights, HEADS, None, attention=counting_attention)
    assert calls == [(3, 16)]


@torch.no_grad()
def test_zero_strength_rows_ignore_references(weights):
    g = torch.Generator().manual_seed(4)
    y = torch.randn(2, 16, C, generator=g, dtype=torch.float64)
    a = project_references(torch.randn(2, 9, C, generator=g, dtype=torch.float64), weights)
    b = project_references(torch.randn(2, 9, C, generator=g, dtype=torch.float64), weights)
    out_a = reference_attention(y, [1.2, 0.0], weights, HEADS, a)
    out_b = reference_attention(y, [1.2, 0.0], weights, HEADS, b)
    assert torch.equal(out_a[1], out_b[1])
    assert not torch.allclose(out_a[0], out_b[0])


def test_bad_inputs_are_explained(weights):
    y = torch.randn(2, 16, C, dtype=torch.float64)
    with pytest.raises(ValueError, match="do not fit 2 rows"):
        reference_attention(y, [1.0], weights, HEADS, None)
    with pytest.raises(ValueError, match="need the reference"):
        reference_attention(y, [1.0, 0.0], weights, HEADS, None)
    with pytest.raises(ValueError, match="positive"):
        project_references(torch.randn(2, 9, C, dtype=torch.float64), weights, [1, 0])


@torch.no_grad()
def test_merged_softmax_path_matches_the_two_branch_path(raw_weights):
    """The CPU path that shares the T x T attention between branches (log-sum-exp merge) gives the
    same term as computing both branches, with and without multiplicity."""

    merged = attention_lse_for("cpu")
    assert merged is not None
    g = torch.Generator().manual_seed(7)
    w32 = Projections({k: v.float() for k, v in raw_weights.items()})
    y = torch.randn(3, 16, C, generator=g)
    refs = torch.randn(2, 9, C, generator=g)
    for multiplicity in (None, [3, 1]):
        kv = project_references(refs, w32, multiplicity)
        for strength in ([1.2, 0.0, 0.0], [0.85, 0.85, 0.85], [1.0, 0.5, 0.0]):
            expected = reference_attention(y, strength, w32, HEADS, kv)
            ours = reference_attention(y, strength, w32, HEADS, kv, attention_lse=merged)
            assert (ours - expected).abs().max() < 1e-5, (multiplicity, strength)


# --- several identities, each with a region ----------------------------------------------------


def literal_identities_term(y, refs, strengths, regions, projections):
    """The several-people formula (docs/guide.md), transcribed per query:
    (1 - sum_k s_k m_k) SA'(y) + sum_k s_k m_k SA'(y, [y; R_k]),
    with the m_k of a query scaled down proportionally where those of the identities acting in that row
    (s_k != 0) sum to more than 1."""
    plain = official_term(y, refs[0], torch.zeros(y.shape[0], dtype=y.dtype), projections)
    out = torch.zeros_like(y)
    for b in range(y.shape[0]):
        for q in range(y.shape[1]):
            m = [float(region[b, q]) if float(s[b]) != 0 else 0.0 for s, region in zip(strengths, regions)]
            if sum(m) > 1:
                m = [value / sum(m) for value in m]
            weighted = [float(s[b]) * value for s, value in zip(strengths, m)]
            out[b, q] = (1 - sum(weighted)) * plain[b, q]
            for k, weight in enumerate(weighted):
                with_refs = official_term(y[b:b + 1], refs[k], torch.ones(1, dtype=y.dtype), projections)
                out[b, q] += weight * with_refs[0, q]
    return out


def two_identities(seed, rows=3, tokens=16):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(rows, tokens, C, generator=g, dtype=torch.float64)
    refs = [torch.randn(2, 9, C, generator=g, dtype=torch.float64), torch.randn(3, 9, C, generator=g, dtype=torch.float64)]
    regions = [torch.rand(rows, tokens, generator=g, dtype=torch.float64) for _ in refs]
    regions[0][:, :4] = 0  # queries only the second identity covers
    regions[1][:, :2] = 0  # and queries no identity covers
    regions[0][:, 8:] += 0.6  # sums above 1: scaled down
    regions[0] = regions[0].clamp(max=1)
    return y, refs, regions


@torch.no_grad()
def test_identities_match_the_literal_formula(weights):

    y, refs, regions = two_identities(10)
    assert bool(((regions[0] + regions[1]) > 1).any())
    strengths = [torch.tensor([1.2, 0.0, 0.85], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)]
    expected = literal_identities_term(y, refs, strengths, regions, weights)
    kv = [project_references(r, weights) for r in refs]
    ours = identities_reference_attention(y, identity_weights(strengths, regions), weights, HEADS, kv)
    assert (ours - expected).abs().max() < 1e-12
    # without a region the identities share the whole image: each m_k = 1/K
    halves = [torch.full_like(regions[0], 0.5)] * 2
    shared = identities_reference_attention(y, identity_weights(strengths, [None, None]), weights, HEADS, kv)
    assert (shared - literal_identities_term(y, refs, strengths, halves, weights)).abs().max() < 1e-12


@torch.no_grad()
def test_an_identity_that_is_off_in_a_row_takes_no_share_of_it(weights):
    """Overlapping regions are normalised only over the identities acting in that row: the second
    identity at strength 0 (rows 0 and 2) leaves the first at its full weight there."""

    y, refs, regions = two_identities(14)
    overlap = (regions[0] + regions[1]) > 1
    assert bool(overlap.all(0).any())
    strengths = [torch.tensor([1.2, 0.85, 1.0], dtype=torch.float64), torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)]
    first, second = identity_weights(strengths, regions)
    alone = identity_weights(strengths[:1], regions[:1])[0]
    assert torch.equal(first[[0, 2]], alone[[0, 2]]) and not bool(second[[0, 2]].any())
    assert bool((first[1][overlap[1]] < alone[1][overlap[1]]).all())  # where both act they share the query
    kv = [project_references(r, weights) for r in refs]
    ours = identities_reference_attention(y, [first, second], weights, HEADS, kv)
    expected = literal_identities_term(y, refs, strengths, regions, weights)
    assert (ours - expected).abs().max() < 1e-12
    single = identities_reference_attention(y[[0, 2]], [alone[[0, 2]]], weights, HEADS, kv[:1])
    assert (ours[[0, 2]] - single).abs().max() < 1e-12


@torch.no_grad()
def test_one_identity_with_a_full_region_is_the_single_identity_term(weights):

    g = torch.Generator().manual_seed(11)
    y = torch.randn(4, 16, C, generator=g, dtype=torch.float64)
    refs = torch.randn(3, 9, C, generator=g, dtype=torch.float64)
    kv = project_references(refs, weights, [2, 1, 1])
    strength = torch.tensor([1.2, 0.0, 1.0, 0.85], dtype=torch.float64)
    single = reference_attention(y, strength, weights, HEADS, kv)
    assert (single - official_term(y, refs[[0, 0, 1, 2]], strength, weights)).abs().max() < 1e-12
    for region in (None, torch.ones(4, 16, dtype=torch.float64)):
        ours = identities_reference_attention(y, identity_weights([strength], [region]), weights, HEADS, [kv])
        assert (ours - single).abs().max() <= 1e-12


@torch.no_grad()
def test_identities_attend_only_where_they_cover(weights):
    """Rows and query tokens no identity covers never touch references; an identity attends with only
    the queries it covers."""

    calls = []

    def counting_attention(q, k, v, heads, mask=None):
        calls.append((q.shape[0], q.shape[1], k.shape[1]))
        return sdpa_attention(q, k, v, heads, mask)

    g = torch.Generator().manual_seed(12)
    y = torch.randn(3, 16, C, generator=g, dtype=torch.float64)
    kv = [project_references(torch.randn(n, 9, C, generator=g, dtype=torch.float64), weights) for n in (2, 4)]
    left, right = torch.zeros(3, 16, dtype=torch.float64), torch.zeros(3, 16, dtype=torch.float64)
    left[:, :6], right[:, 10:] = 1, 1
    strengths = [torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)] * 2
    identities_reference_attention(y, identity_weights(strengths, [left, right]), weights, HEADS, kv,
                                   attention=counting_attention)
    assert sorted(calls) == [(1, 6, 16 + 18), (1, 6, 16 + 36), (3, 16, 16)]


@torch.no_grad()
def test_merged_softmax_path_matches_for_identities(raw_weights):

    w32 = Projections({k: v.float() for k, v in raw_weights.items()})
    y, refs, regions = two_identities(13)
    y, refs, regions = y.float(), [r.float() for r in refs], [m.float() for m in regions]
    kv = [project_references(refs[0], w32, [3, 1]), project_references(refs[1], w32)]
    for strengths in ([[1.2, 0.0, 0.0], [1.2, 0.0, 0.0]], [[0.85] * 3, [0.5] * 3], [[1.0, 0.5, 0.0], [0.0] * 3]):
        weighted = identity_weights([torch.tensor(s) for s in strengths], regions)
        expected = identities_reference_attention(y, weighted, w32, HEADS, kv)
        ours = identities_reference_attention(y, weighted, w32, HEADS, kv, attention_lse=attention_lse_for("cpu"))
        assert (ours - expected).abs().max() < 1e-5, strengths
