"""Forward parity: the patched ComfyUI MODEL against the official RefStableUNet.forward (golden cases)."""

import torch

from flashface_core.guidance import GuidanceSettings
from flashface_core.masks import latent_mask
from support.pipeline import SD15_SCALE, Parts, apply, conditioning

FORWARD_TOL = 1.5e-5
REFCACHE_TOL = 4e-5


def patched_model(host, base, flashface, case, tensors, p):
    """ApplyReferenceAttention as a user runs it, with the case's references, strengths and mask."""
    references = host.reference_set.ReferenceSet(tensors[p + "ref"] / SD15_SCALE, [1] * case["num_refs"])
    mask = tensors[p + "masks"] if case["face_mask"] else None
    parts = Parts(base, [references], [], conditioning(tensors[p + "ref_context"]), mask)
    s = case["similarity"]
    return apply(host, base, flashface, parts, reference_strength=s,
                 strength_before_launch=0.0 if case["num_diff_condition"] == 3 else s)


def forward(host, model, case, tensors, p, call_options):
    """The case's rows through the patched U-Net as sampling runs them: the prompt and negative rows in one
    call labelled 0/1 (in three-way cases a launched step: references on the prompt row only) and the
    prompt row without references in a call of its own. Returns the rows in the official order."""
    conds = case["num_diff_condition"]
    x, context = tensors[p + "x"].chunk(conds), tensors[p + "context"].chunk(conds)
    settings = GuidanceSettings(reference_cfg=1.0, launch_timestep=1000 if conds == 3 else -1)
    mask = None
    if case["face_mask"]:
        mask = latent_mask(tensors[p + "masks"], *x[0].shape[-2:]).unsqueeze(1)
        mask = mask.repeat(x[0].shape[0] // mask.shape[0], 1, 1, 1)

    def call(rows, **extra):
        options = call_options(model, cond_or_uncond=list(range(len(rows))),
                               **{host.guidance.GUIDANCE_KEY: settings}, **extra)
        masks = {} if mask is None else {host.call.FACE_MASK_COND: mask.repeat(len(rows), 1, 1, 1)}
        with torch.no_grad():
            return model.model.diffusion_model(torch.cat([x[i] for i in rows]),
                                               tensors[p + "t"].float().repeat(len(rows)),
                                               context=torch.cat([context[i] for i in rows]),
                                               transformer_options=options, **masks).chunk(len(rows))

    if conds == 2:
        return torch.cat(call([0, 1]))
    prompt, negative = call([0, 2])
    (without_references,) = call([1], **{host.guidance.WITHOUT_REFERENCES_KEY: True})
    return torch.cat([prompt, without_references, negative])


def non_edge_cases(manifest):
    return [c for c in manifest["cases"] if c.get("prefix", "").startswith("case") and not c["edge"]]


def test_forward_cases_match_official(host, base, golden, flashface, loaded_call_options):
    manifest, tensors = golden
    report = {}
    for case in non_edge_cases(manifest):
        p = case["prefix"]
        model = patched_model(host, base, flashface, case, tensors, p)
        out = forward(host, model, case, tensors, p, loaded_call_options)
        report[p + "out"] = (out - tensors[p + "out"]).abs().max().item()
    print("forward max |delta|:", report)
    assert len(report) == 5
    assert all(delta <= FORWARD_TOL for delta in report.values()), report


def test_reference_cache_matches_official(host, base, golden, flashface):
    import comfy.model_management

    manifest, tensors = golden
    case = next(c for c in manifest["cases"] if c.get("prefix") == "case2.")
    model = patched_model(host, base, flashface, case, tensors, "case2.")
    comfy.model_management.load_models_gpu([model] + model.get_nested_additional_models())
    wrapper = host.call.reference_attention_wrapper(model)
    t = tensors["case2.t"].float()
    with torch.no_grad():
        states = wrapper.reference_states(t, tensors["case2.x"], wrapper.identities[0])
    names = wrapper.modules.block_names
    deltas = {}
    for official_key, comfy_block in case["ref_cache"].items():
        block = comfy_block.rsplit(".transformer_blocks", 1)[0]
        key = next(k for k, name in names.items() if name == block)
        deltas[official_key] = (states[key] - tensors[official_key]).abs().max().item()
    print("refcache max |delta|:", deltas)
    assert len(deltas) == 10
    assert all(delta <= REFCACHE_TOL for delta in deltas.values()), deltas


def test_input_model_is_left_untouched(host, base, golden, flashface):
    manifest, tensors = golden
    case = non_edge_cases(manifest)[0]
    model = patched_model(host, base, flashface, case, tensors, case["prefix"])
    assert not base.patches and not base.object_patches
    assert not host.call.has_reference_attention(base)
    assert host.call.has_reference_attention(model)
