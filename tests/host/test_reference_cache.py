"""Exact reuse of the reference pass (nodes/reference_cache.py) inside ComfyUI: alternating runs equal
their first runs and the golden run, hits skip the reference U-Net, every key part misses, the limit
evicts, a step split into several model calls runs the reference pass once."""

import dataclasses

import pytest
import torch

from support.pipeline import SD15_SCALE, apply, golden_run_model, guider_for, relative, run_strengths, sample

RUN_RTOL = 1e-5


@pytest.fixture()
def cache(host):
    return host.reference_cache


@pytest.fixture()
def golden_model(host, base, golden, flashface):
    """(model, parts, run, tensors) of golden run 1."""
    manifest, tensors = golden
    run = manifest["runs"][1]
    return (*golden_run_model(host, base, flashface, run, tensors), run, tensors)


def modules_patcher(host, model):
    return model.get_additional_models_with_key(host.call.WRAPPER_KEY)[0]


@pytest.fixture()
def passes(host, flashface, golden_model, cache):
    """Counts reference U-Net passes of the golden FlashFace; its store starts empty."""
    patcher = modules_patcher(host, golden_model[0])
    cache.reference_store(patcher).clear()
    counter = {"passes": 0}

    def count(module, args):
        counter["passes"] += 1

    handle = patcher.model.reference_unet.register_forward_pre_hook(count)
    yield counter
    handle.remove()
    cache.reference_store(patcher).clear()


def golden_sample(host, model, parts, run, tensors, noise=None):
    guider = guider_for(host, model, parts.positive, parts.negative, run)
    sigmas = host.sampling.flashface_sigmas(model, "flashface_trailing", run["steps"])
    noise = tensors[run["prefix"] + "noise"] if noise is None else noise
    return guider.sample(noise, torch.zeros_like(noise), host.sampling.flashface_sampler("flashface_ddim"),
                         sigmas, disable_pbar=True, seed=0)


def other_references(host, parts, flashface, run, tensors):
    """The golden run's FlashFace with its reference photos mirrored."""
    mirrored = host.reference_set.ReferenceSet(tensors[run["prefix"] + "ref"].flip(-1) / SD15_SCALE, [1] * run["refs"])
    return apply(host, parts.base, flashface, dataclasses.replace(parts, references=[mirrored]), **run_strengths(run))


def test_alternating_runs_equal_their_first_runs_and_hits_skip_the_reference_unet(
        host, flashface, golden_model, passes, cache):
    model_a, parts, run, tensors = golden_model
    model_b = other_references(host, parts, flashface, run, tensors)
    other_noise = torch.randn_like(tensors[run["prefix"] + "noise"], generator=torch.Generator().manual_seed(5))
    results, pass_counts = [], []
    for model, noise in ((model_a, None), (model_b, other_noise), (model_a, None), (model_b, other_noise)):
        before = passes["passes"]
        results.append(golden_sample(host, model, parts, run, tensors, noise))
        pass_counts.append(passes["passes"] - before)
    store = cache.reference_store(modules_patcher(host, model_a))
    print("reference passes per run:", pass_counts, "store:", store.entries(), "entries,", store.nbytes, "bytes")
    assert pass_counts == [run["steps"], run["steps"], 0, 0]  # one pass per timestep, then none
    assert store.entries() == 2 * run["steps"]
    assert torch.equal(results[2], results[0]) and torch.equal(results[3], results[1])
    assert not torch.equal(results[1], results[0])
    final = tensors[run["prefix"] + "x0_final"]
    assert relative(results[2] * SD15_SCALE, final) <= RUN_RTOL


def test_cache_off_runs_every_pass_and_gives_the_same_image(host, golden_model, passes, cache):
    model, parts, run, tensors = golden_model
    store = cache.reference_store(modules_patcher(host, model))
    cached = golden_sample(host, model, parts, run, tensors)
    cached_again = golden_sample(host, model, parts, run, tensors)
    limit, store.limit_bytes = store.limit_bytes, 0
    try:
        before = passes["passes"]
        uncached = golden_sample(host, model, parts, run, tensors)
    finally:
        store.limit_bytes = limit
    assert passes["passes"] - before == run["steps"]
    assert torch.equal(cached, uncached) and torch.equal(cached_again, uncached)


def test_every_key_part_misses(host, flashface, golden_model, cache):
    """Each change of what the reference pass sees, or how it computes, gives another entry."""
    model, parts, run, tensors = golden_model
    wrapper = host.call.reference_attention_wrapper(model)
    patcher = wrapper.modules_patcher
    cache.reference_store(patcher).clear()
    computed = []

    def compute(timesteps, x):
        computed.append(1)
        return {"block": torch.zeros(2, dtype=x.dtype)}

    def lookup(settings=wrapper.identities[0], t=500.0, x=torch.zeros(1, 4, 8, 8)):
        before = len(computed)
        cache.cached_reference_states(patcher, settings, torch.tensor([t]), x, compute)
        return len(computed) > before

    s = wrapper.identities[0]
    nudged = s.latents.clone()
    nudged[0, 0, 0, 0] = torch.nextafter(nudged[0, 0, 0, 0], torch.tensor(1e9))
    other_context = s.contexts[0][0].clone()
    other_context[0, -1, -1] += 1e-3
    changes = {
        "references": dataclasses.replace(s, latents=nudged),
        "reference order": dataclasses.replace(s, latents=s.latents.flip(0)),
        "negative text": dataclasses.replace(s, contexts=((other_context, 1.0),)),
        "negative weights": dataclasses.replace(s, contexts=(s.contexts[0], (other_context, 2.0))),
    }
    assert lookup()  # first time: computed
    assert not lookup() and not lookup(settings=dataclasses.replace(s, reference_strength=0.3))  # not a key part
    misses = {name: lookup(settings=settings) for name, settings in changes.items()}
    misses["timestep"] = lookup(t=499.0)
    misses["dtype"] = lookup(x=torch.zeros(1, 4, 8, 8, dtype=torch.float16))
    misses["device"] = lookup(x=torch.zeros(1, 4, 8, 8, device="meta"))
    uuid = getattr(patcher.model, "current_weight_patches_uuid", None)
    patcher.model.current_weight_patches_uuid = "a LoRA on the reference path"
    try:
        misses["weight patches"] = lookup()
    finally:
        patcher.model.current_weight_patches_uuid = uuid
    assert misses == {name: True for name in misses}, misses
    assert not lookup()  # and back: the first entry is still there
    cache.reference_store(patcher).clear()


def test_weight_patch_on_the_reference_unet_misses_and_changes_the_image(host, golden_model, passes):
    """A patch on the reference modules (as a LoRA on the reference path would add) gives other states."""
    model, parts, run, tensors = golden_model
    plain = golden_sample(host, model, parts, run, tensors)
    patched = model.clone()  # clones the reference-modules patcher too
    reference_modules = modules_patcher(host, patched)
    key = next(k for k in reference_modules.model.state_dict() if k.startswith("reference_unet.output_blocks")
               and k.endswith("attn1.to_q.weight"))
    reference_modules.add_patches({key: (torch.full_like(reference_modules.model.state_dict()[key], 0.05),)}, 1.0)
    before = passes["passes"]
    with_patch = golden_sample(host, patched, parts, run, tensors)
    assert passes["passes"] - before == run["steps"]
    assert not torch.equal(with_patch, plain)
    before = passes["passes"]
    assert torch.equal(golden_sample(host, model, parts, run, tensors), plain)
    assert passes["passes"] - before == 0


def test_limit_evicts_the_least_recently_used_references(host, flashface, golden_model, passes, cache):
    model_a, parts, run, tensors = golden_model
    model_b = other_references(host, parts, flashface, run, tensors)
    store = cache.reference_store(modules_patcher(host, model_a))
    golden_sample(host, model_a, parts, run, tensors)
    step_bytes = store.nbytes // run["steps"]
    limit, store.limit_bytes = store.limit_bytes, run["steps"] * step_bytes  # one run fits, two do not
    try:
        counts = []
        for model in (model_b, model_a, model_a):
            before = passes["passes"]
            golden_sample(host, model, parts, run, tensors)
            counts.append(passes["passes"] - before)
            assert store.nbytes <= store.limit_bytes
    finally:
        store.limit_bytes = limit
    print("bytes per step", step_bytes, "passes", counts)
    assert counts == [run["steps"], run["steps"], 0]  # B evicted A, A evicted B, A hit


def test_freed_when_comfyui_unloads_the_models(host, golden_model, passes, cache):
    import comfy.model_management

    model, parts, run, tensors = golden_model
    golden_sample(host, model, parts, run, tensors)
    store = cache.reference_store(modules_patcher(host, model))
    assert store.nbytes > 0
    comfy.model_management.unload_all_models()
    assert store.nbytes == 0 and store.entries() == 0


def test_split_step_runs_the_reference_pass_once_per_timestep(host, golden_model, passes, cache, monkeypatch):
    """Rows of one step in several model calls (no memory for a batch): one pass per timestep, same image."""
    model, parts, run, tensors = golden_model
    whole = golden_sample(host, model, parts, run, tensors)
    rows_per_call = []
    wrapper_call = host.call.ReferenceAttentionWrapper.__call__

    def record(self, executor, x, *args, **kwargs):
        rows_per_call.append(x.shape[0])
        return wrapper_call(self, executor, x, *args, **kwargs)

    monkeypatch.setattr(host.call.ReferenceAttentionWrapper, "__call__", record)
    monkeypatch.setattr(model.model, "memory_required", lambda *args, **kwargs: float("inf"))
    cache.reference_store(modules_patcher(host, model)).clear()
    before = passes["passes"]
    split = golden_sample(host, model, parts, run, tensors)
    print("rows per model call:", rows_per_call)
    assert set(rows_per_call) == {1} and len(rows_per_call) > 2 * run["steps"]
    assert passes["passes"] - before == run["steps"]
    # One row per call takes other kernel paths than the batch (as without FlashFace): equal to rounding.
    assert relative(split, whole) <= RUN_RTOL


def test_a_batch_and_a_queue_pay_one_pass_per_timestep(host, golden_model, passes):
    """Three images in one batch: one reference pass per step; the next prompt (other seed and prompt,
    same references and negative): none."""
    model, parts, run, tensors = golden_model
    counts = []
    for seed, prompt in ((1, parts.positive), (2, [[parts.positive[0][0] * 0.5, {}]])):
        before = passes["passes"]
        out = sample(host, model, parts, positive=prompt, steps=run["steps"], batch=3, seed=seed)
        counts.append(passes["passes"] - before)
        assert out.shape[0] == 3 and torch.isfinite(out).all()
    assert counts == [run["steps"], 0]


@pytest.mark.parametrize("value, expected_mb", [(None, 1024), ("256", 256), ("0", 0), ("lots", 1024)])
def test_limit_from_the_environment(cache, monkeypatch, value, expected_mb):
    if value is None:
        monkeypatch.delenv(cache.LIMIT_ENV, raising=False)
    else:
        monkeypatch.setenv(cache.LIMIT_ENV, value)
    assert cache.limit_bytes() == expected_mb * 1024**2


def test_entries_of_partially_loaded_modules_are_kept_on_the_offload_device(host, golden_model, cache, monkeypatch):
    model = golden_model[0]
    wrapper = host.call.reference_attention_wrapper(model)
    patcher = wrapper.modules_patcher
    store = cache.reference_store(patcher)
    store.clear()
    x = torch.zeros(1, 4, 8, 8)
    monkeypatch.setattr(patcher, "offload_device", torch.device("meta"))
    monkeypatch.setattr(patcher.model, "model_lowvram", True, raising=False)
    states = cache.cached_reference_states(patcher, wrapper.identities[0], torch.tensor([500.0]), x,
                                           lambda timesteps, x: {"block": torch.ones(2)})
    assert states["block"].device == x.device
    assert store.get(cache.reference_identity(patcher, wrapper.identities[0], x), 500.0)["block"].device.type == "meta"
    store.clear()
