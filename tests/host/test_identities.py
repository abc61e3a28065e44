"""Several people in one image: chained ApplyReferenceAttention nodes, each identity in its own region.

Runs through the public nodes and FlashFaceSampler from a seed on the golden random FlashFace; results
are compared to 1e-5 of max|x0|."""

import pytest
import torch

from support.pipeline import LATENT, apply, relative, sample

RTOL = 1e-5


def halves(size=8 * LATENT):
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1
    return left, 1 - left


def test_region_of_ones_is_no_region(host, flashface, parts):
    plain = sample(host, apply(host, parts.base, flashface, parts), parts)
    ones = sample(host, apply(host, parts.base, flashface, parts, region=torch.ones(1, 40, 24)), parts)
    print("region of ones vs none:", relative(ones, plain))
    assert relative(ones, plain) <= RTOL


def test_same_identity_on_complementary_halves_is_one_identity(host, flashface, parts):
    left, right = halves()
    one = sample(host, apply(host, parts.base, flashface, parts), parts)
    first = apply(host, parts.base, flashface, parts, region=left)
    chained = sample(host, apply(host, first, flashface, parts, region=right), parts)
    print("same identity on two halves vs one identity:", relative(chained, one))
    assert relative(chained, one) <= RTOL


def test_second_identity_with_an_empty_region_changes_nothing(host, flashface, parts, monkeypatch):
    first = apply(host, parts.base, flashface, parts)
    alone = sample(host, first, parts)
    wrapper_class = host.call.ReferenceAttentionWrapper
    reference_keys_values = wrapper_class.reference_keys_values
    passes = []

    def record(self, timesteps, x, identity):
        passes.append(next(i for i, known in enumerate(self.identities) if known is identity))
        return reference_keys_values(self, timesteps, x, identity)

    monkeypatch.setattr(wrapper_class, "reference_keys_values", record)
    empty = sample(host, apply(host, first, flashface, parts, identity=1, region=torch.zeros(1, 64, 64)), parts)
    print("second identity with an empty region vs the first alone:", relative(empty, alone))
    assert relative(empty, alone) <= RTOL
    assert passes == [0, 0, 0]  # one reference pass per step, never for the empty region


@pytest.mark.parametrize("off", [dict(reference_strength=0.0, strength_before_launch=0.0),
                                 dict(start_percent=0.95, end_percent=1.0)], ids=["strength 0", "no step in start/end"])
def test_second_identity_that_is_off_does_not_dilute_the_first(host, flashface, parts, off):
    """A on the whole image, B over the right half but off at every step: where their regions overlap
    B takes no share of the normalisation, so the chain is A alone."""
    first = apply(host, parts.base, flashface, parts)
    alone = sample(host, first, parts)
    _, right = halves()
    chained = sample(host, apply(host, first, flashface, parts, identity=1, region=right, **off), parts)
    print(f"A -> B ({off}) vs A alone:", relative(chained, alone))
    assert relative(chained, alone) <= RTOL
    acting = sample(host, apply(host, first, flashface, parts, identity=1, region=right), parts)
    assert relative(acting, alone) > 1e-3  # B acting does change the result


def test_two_identities_on_two_halves_differ_from_each_alone(host, flashface, parts):
    left, right = halves()
    first = apply(host, parts.base, flashface, parts, region=left)
    both = sample(host, apply(host, first, flashface, parts, identity=1, region=right), parts)
    singles = [sample(host, apply(host, parts.base, flashface, parts, identity=k), parts) for k in (0, 1)]
    deltas = [relative(both, single) for single in singles]
    print("two identities vs each alone:", deltas)
    assert torch.isfinite(both).all() and min(deltas) > 1e-3


def test_region_at_image_or_latent_resolution_is_the_same(host, flashface, parts):
    image_left, _ = halves(8 * LATENT)
    latent_left, _ = halves(LATENT)
    at_image = sample(host, apply(host, parts.base, flashface, parts, region=image_left), parts)
    at_latent = sample(host, apply(host, parts.base, flashface, parts, region=latent_left), parts)
    print("region at image vs latent resolution:", relative(at_image, at_latent))
    assert relative(at_image, at_latent) <= RTOL
    assert relative(at_image, sample(host, apply(host, parts.base, flashface, parts), parts)) > 1e-3


def test_regions_per_image_follow_the_batch(host, flashface, parts):
    """Regions per image (batch 2: left half, whole image): each image equals that image of a batch run
    with its region for both images."""
    left, _ = halves()
    per_image = torch.cat([left, torch.ones_like(left)])
    mixed = sample(host, apply(host, parts.base, flashface, parts, region=per_image), parts, batch=2)
    all_left = sample(host, apply(host, parts.base, flashface, parts, region=left), parts, batch=2)
    everywhere = sample(host, apply(host, parts.base, flashface, parts), parts, batch=2)
    assert relative(mixed[:1], all_left[:1]) <= RTOL and relative(mixed[1:], everywhere[1:]) <= RTOL
    assert relative(mixed[1:], all_left[1:]) > 1e-3


# --- bad input ---------------------------------------------------------------------------------


def test_chain_errors_leave_the_model_unpatched(host, flashface, parts):
    first = apply(host, parts.base, flashface, parts)
    patches = (dict(first.object_patches), list(first.wrappers["diffusion_model"][host.call.WRAPPER_KEY]))
    other = host.flashface_model.FlashFaceModel("other.safetensors", flashface.weights)
    with pytest.raises(host.errors.FlashFaceNodeError, match=r"ApplyReferenceAttention: flashface: .*'golden'.*"
                                                             r"'other\.safetensors'.*same LoadFlashFace"):
        apply(host, first, other, parts, identity=1)
    with pytest.raises(host.errors.FlashFaceNodeError, match="ApplyReferenceAttention: base_model: .*first"):
        apply(host, first, flashface, parts, identity=1, base_model=parts.base)
    chain = first
    for _ in range(3):
        chain = apply(host, chain, flashface, parts, identity=1)
    with pytest.raises(host.errors.FlashFaceNodeError, match="ApplyReferenceAttention: model: .*4 people.*most"):
        apply(host, chain, flashface, parts, identity=1)
    assert patches == (dict(first.object_patches), list(first.wrappers["diffusion_model"][host.call.WRAPPER_KEY]))
    assert len(host.call.reference_attention_wrapper(chain).identities) == 4


def test_bad_masks_are_refused_before_patching(host, flashface, parts):
    base = parts.base
    errors = host.errors.FlashFaceNodeError
    with pytest.raises(errors, match=r"ApplyReferenceAttention: region/face_mask: batch sizes \[2, 3\]"):
        apply(host, base, flashface, parts, face_mask=parts.face_mask.repeat(2, 1, 1), region=torch.ones(3, 8, 8))
    first = apply(host, base, flashface, parts, face_mask=parts.face_mask.repeat(2, 1, 1))
    with pytest.raises(errors, match=r"region/face_mask: batch sizes \[2, 3\]"):
        apply(host, first, flashface, parts, face_mask=parts.face_mask.repeat(3, 1, 1))
    with pytest.raises(errors, match="ApplyReferenceAttention: region is all zero"):
        apply(host, base, flashface, parts, region=torch.zeros(1, 8, 8))
    with pytest.raises(errors, match="region: values must lie in 0..1"):
        apply(host, base, flashface, parts, region=torch.full((1, 8, 8), 2.0))
    assert not base.patches and not base.object_patches and not host.call.has_reference_attention(base)
    too_many = apply(host, base, flashface, parts, region=torch.ones(3, 8, 8))
    with pytest.raises(errors, match="ApplyReferenceAttention: region of identity 1 holds 3 masks but the latent "
                                     "batch has 2 images"):
        sample(host, too_many, parts, batch=2)
