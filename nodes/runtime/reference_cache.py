"""The reference pass reused exactly: across the model calls of one step, across images and queued prompts.

Each reference-modules patcher (one per FlashFace model and host layout, loader.modules_for) carries a
`ReferenceStore` as a ModelPatcher attachment, shared by its clones. An entry is the ten blocks' normed
hidden states of one timestep, keyed by everything they depend on: the references' latents and each
negative entry with its weight (content hashes, computed once per ReferenceSettings; the multiplicity
only weighs the projected keys, after the store), the weights as loaded now (the modules' current
weight-patch uuid: LoRA-style patches on the reference path change it), the compute dtype and the device. The store follows ComfyUI's memory manager: entries
stay on the compute device while the modules are fully loaded, on the offload device while ComfyUI keeps
them partially offloaded, and are dropped when it unloads them (unload_all_models, /free, room for
another model).

`FLASHFACE_REFERENCE_CACHE_MB` sets the limit (default 1024); 0 turns reuse off (the reference pass
then runs at every model call, for debugging).
"""

import logging
import os

from comfy.patcher_extension import CallbacksMP

from ...flashface_core.reference_cache import ReferenceStore

log = logging.getLogger(__name__)

ATTACHMENT = "flashface_reference_cache"
LIMIT_ENV = "FLASHFACE_REFERENCE_CACHE_MB"
# Holds a 25-step run (the sampler's default) of each of two identities with 4 references in fp32
# (5.1 MiB per reference and step, 2 x 510 MiB; half in fp16), so A, B, A, B all hit.
DEFAULT_LIMIT_MB = 1024
MB = 1024**2


def limit_bytes():
    value = os.environ.get(LIMIT_ENV, "")
    try:
        return max(0, int(float(value) * MB)) if value else DEFAULT_LIMIT_MB * MB
    except ValueError:
        log.warning("FlashFace: %s=%r is not a number of MB; using %d", LIMIT_ENV, value, DEFAULT_LIMIT_MB)
        return DEFAULT_LIMIT_MB * MB


def attach_reference_store(modules_patcher):
    """Gives a new reference-modules patcher its store and drops the store's entries whenever ComfyUI
    unloads the modules (clones made later share both)."""
    store = ReferenceStore(limit_bytes())
    modules_patcher.set_attachments(ATTACHMENT, store)

    def drop_on_unload(patcher, unpatch_all):
        # unpatch_all False: ComfyUI hands the loaded weights to another clone of this patcher; they stay.
        if unpatch_all:
            store.clear()

    modules_patcher.add_callback_with_key(CallbacksMP.ON_DETACH, ATTACHMENT, drop_on_unload)
    return store


def reference_store(modules_patcher) -> ReferenceStore | None:
    return modules_patcher.get_attachment(ATTACHMENT)


def cached_reference_states(modules_patcher, settings, timesteps, x, compute):
    """compute(timesteps, x) -> {block key: states}, or the entry stored for the same identity and timestep."""
    store = reference_store(modules_patcher)
    if store is None or not store.enabled:
        return compute(timesteps, x)
    identity = reference_identity(modules_patcher, settings, x)
    timestep = float(timesteps.reshape(-1)[0])
    states = store.get(identity, timestep)
    if states is None:
        states = compute(timesteps, x)
        # Partially loaded modules keep most weights on the offload device: the entries go there too.
        lowvram = getattr(modules_patcher.model, "model_lowvram", False)
        keep_on = modules_patcher.offload_device if lowvram else x.device
        store.put(identity, timestep, {key: state.to(keep_on) for key, state in states.items()})
    return {key: state.to(x.device) for key, state in states.items()}


def reference_identity(modules_patcher, settings, x):
    """What the reference pass's output depends on besides the timestep (the store is per modules)."""
    weights = getattr(modules_patcher.model, "current_weight_patches_uuid", None)
    return settings.reference_pass_fingerprint, weights, x.dtype, x.device
