"""Forward parity: the patched ComfyUI MODEL against the official RefStableUNet.forward (golden cases)."""

import torch

from flashface_core.masks import latent_mask
from support.pipeline import SD15_SCALE, Parts, apply, conditioning

FORWARD_TOL = 1.5e-5
REFCACHE_TOL = 4e-5


def patched_model(host, base, flashface, case, tensors, p):
    """ApplyReferenceAttention as a user runs it, with the case's references, strengths and mask."""
    references = host.references.ReferenceSet(tensors[p + "ref"] / SD15_SCALE, [1] * case["num_refs"])
    mask = tensors[p + "masks"] if case["face_mask"] else None
    parts = Parts(base, [references], [], conditioning(tensors[p + "ref_context"]), mask)
    s = case["similarity"]
    return apply(host, base, flashface, parts, reference_strength=s,
                 strength_before_launch=0.0 if case["num_diff_condition"] == 3 else s)


def roles(host, case):
    p = host.call
    if case["num_diff_condition"] == 3:
        return {"cond_or_uncond": [0, 1, 2], p.ROLES_KEY: (p.FULL, p.OFF, p.OFF)}
    return {"cond_or_uncond": [0, 1]}


def mask_cond(host, case, tensors, p):
    """The face mask as the model cond sampling would pass (at latent size, one per row)."""
    if not case["face_mask"]:
        return {}
    x = tensors[p + "x"]
    mask = latent_mask(tensors[p + "masks"], *x.shape[-2:])
    return {host.call.FACE_MASK_COND: mask.unsqueeze(1).repeat(x.shape[0] // mask.shape[0], 1, 1, 1)}


def non_edge_cases(manifest):
    return [c for c in manifest["cases"] if c.get("prefix", "").startswith("case") and not c["edge"]]


def test_forward_cases_match_official(host, base, golden, flashface, loaded_call_options):
    manifest, tensors = golden
    report = {}
    for case in non_edge_cases(manifest):
        p = case["prefix"]
        model = patched_model(host, base, flashface, case, tensors, p)
        t = tensors[p + "t"].float().repeat(case["num_diff_condition"])
        with torch.no_grad():
            out = model.model.diffusion_model(tensors[p + "x"], t, context=tensors[p + "context"],
                                              transformer_options=loaded_call_options(model, **roles(host, case)),
                                              **mask_cond(host, case, tensors, p))
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


def _guider_rows(tensors, p, samples, conds):
    """What a guider really feeds the U-Net: every cond's rows carry the same latents, and
    the 'cond + refs' and 'cond' rows (3-way) the same prompt."""
    n = tensors[p + "x"].shape[0] // conds
    x = tensors[p + "x"][:samples].repeat(conds, 1, 1, 1)
    context = tensors[p + "context"].reshape(conds, n, *tensors[p + "context"].shape[1:])[:, :samples]
    if conds == 3:
        context[1] = context[0]
    return x, context.flatten(0, 1)


def test_shared_rows_are_exact_and_used(host, base, golden, flashface, loaded_call_options, monkeypatch):
    """Encoder rows with identical inputs run once (one stem row up to the first cross-attention,
    one row per distinct prompt after it); outputs equal the unshared computation."""
    manifest, tensors = golden
    planner = host.shared_rows.SharedRows.plan
    # (case, samples) -> (rows the encoder keeps after the fork, one shared stem row?)
    expected = {("case0.", 1): ([0, 1], True), ("case2.", 1): ([0, 2], True), ("case2.", 2): ([0, 1, 4, 5], False)}
    for (p, samples), (keep, one_stem) in expected.items():
        case = next(c for c in manifest["cases"] if c.get("prefix") == p)
        conds = case["num_diff_condition"]
        model = patched_model(host, base, flashface, case, tensors, p)
        x, context = _guider_rows(tensors, p, samples, conds)
        t = tensors[p + "t"][:1].float().expand(x.shape[0])
        options = loaded_call_options(model, **roles(host, case))
        plans = []
        monkeypatch.setattr(host.shared_rows.SharedRows, "plan",
                            lambda *a, **k: plans.append(planner(*a, **k)) or plans[-1])
        with torch.no_grad():
            shared = model.model.diffusion_model(x, t, context=context, transformer_options=dict(options))
            monkeypatch.setattr(host.shared_rows.SharedRows, "plan", lambda *a, **k: None)
            unshared = model.model.diffusion_model(x, t, context=context, transformer_options=dict(options))
        assert plans[0].keep.tolist() == keep and plans[0].one_stem == one_stem, (p, samples)
        delta = (shared - unshared).abs().max().item()
        print(f"{p} {samples} sample(s): shared vs unshared encoder max |delta| {delta:.2e}")
        assert delta <= FORWARD_TOL * 0.5 and shared.abs().max() > 0.1
