"""The public nodes run as a user's graph runs them, on the small golden random FlashFace: what a graph
feeds them (`Parts`), ApplyReferenceAttention (`apply`), FlashFaceSampler (`sample`) or FlashFaceGuider
(`guider_for`), and how far two results lie apart (`relative`). `host` is the host tests' fixture
(support.comfyui_host.import_pack)."""

from dataclasses import dataclass

import torch

SD15_SCALE = 0.18215  # SD1.5's latent scale: the golden latents are scaled, ComfyUI's LATENT is not
LATENT = 16  # latent side of a sampled image; images are 8x that
APPLY_DEFAULTS = dict(reference_strength=1.2, strength_before_launch=0.85)
GUIDANCE_DEFAULTS = dict(text_cfg=7.5, reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5)


@dataclass
class Parts:
    """What a graph feeds the nodes: the checkpoint's MODEL, each person's references (ReferenceSet),
    the prompts (CONDITIONING) and a face mask ([B, H, W] at image resolution, or None)."""

    base: object
    references: list
    positive: list
    negative: list
    face_mask: torch.Tensor | None = None


def conditioning(context):
    """A CONDITIONING of one entry: the text encoder's output for the first image."""
    return [[context[:1], {}]]


def golden_parts(host, base, golden, people=2) -> Parts:
    """Golden run 1's references and prompts, a face box over a LATENT-sized image; the second and
    further people get random references of the same shape."""
    manifest, tensors = golden
    p = manifest["runs"][1]["prefix"]
    latents = tensors[p + "ref"] / SD15_SCALE
    others = [torch.randn(latents.shape, generator=torch.Generator().manual_seed(9 + k)) for k in range(people - 1)]
    face = torch.zeros(1, 8 * LATENT, 8 * LATENT)
    face[:, 24:72, 40:88] = 1
    return Parts(base, [host.reference_set.ReferenceSet(r, [1] * r.shape[0]) for r in [latents, *others]],
                 conditioning(tensors[p + "cond_context"]), conditioning(tensors[p + "uncond_context"]), face)


def golden_run_parts(host, base, run, tensors) -> Parts:
    """The references, prompts and face mask of one golden sampling run (manifest["runs"][i])."""
    p = run["prefix"]
    references = host.reference_set.ReferenceSet(tensors[p + "ref"] / SD15_SCALE, [1] * run["refs"])
    return Parts(base, [references], conditioning(tensors[p + "cond_context"]),
                 conditioning(tensors[p + "uncond_context"]), tensors[p + "masks"])


def run_strengths(run):
    """ApplyReferenceAttention's strengths of a golden run."""
    return dict(reference_strength=run["lamda_feat"], strength_before_launch=run["lamda_feat_before_ref_guidence"])


def run_guidance(run):
    """FlashFaceSampler's guidance inputs of a golden run."""
    return dict(text_cfg=run["guide_scale"], reference_cfg=run["face_guidence"],
                launch_timestep=run["step_to_launch_face_guidence"], cfg_rescale=run["guide_rescale"])


def apply(host, model, flashface, parts, identity=0, negative=None, **inputs):
    """ApplyReferenceAttention for person `identity` of `parts` (strengths 1.2 / 0.85, the parts' face
    mask, unless `inputs` say otherwise)."""
    settings = {**APPLY_DEFAULTS, "face_mask": parts.face_mask, **inputs}
    return host.nodes.ApplyReferenceAttention.execute(model, flashface, parts.references[identity],
                                                      negative or parts.negative, **settings).result[0]


def sample(host, model, parts, positive=None, steps=3, batch=1, seed=7, **settings):
    """FlashFaceSampler's latent from `seed`, by default with the official sampler and scheduler; 3 steps
    are t = 999 (two-way), then 666 and 333 (three-way, the reference-free row too)."""
    latent = {"samples": torch.zeros(batch, 4, LATENT, LATENT)}
    settings = {**GUIDANCE_DEFAULTS, "sampler_name": "flashface_ddim", "scheduler": "flashface_trailing", **settings}
    return host.nodes.FlashFaceSampler.execute(model, positive or parts.positive, parts.negative, latent, seed=seed,
                                               steps=steps, **settings).result[0]["samples"]


def golden_run_model(host, base, flashface, run, tensors):
    """(MODEL, Parts): ApplyReferenceAttention on `base` as a golden sampling run applies FlashFace."""
    parts = golden_run_parts(host, base, run, tensors)
    return apply(host, base, flashface, parts, **run_strengths(run)), parts


def run_settings(run):
    """The GuidanceSettings of a golden run (reference guidance, launch timestep, rescale)."""
    from flashface_core.guidance import GuidanceSettings

    return GuidanceSettings(run["face_guidence"], run["step_to_launch_face_guidence"], run["guide_rescale"])


def guider_for(host, model, positive, negative, run):
    """The FlashFace guider with a golden run's guidance, for SamplerCustomAdvanced-style sampling."""
    return host.sampling.flashface_guider(model, positive, negative, run["guide_scale"], run_settings(run), "test")


def relative(ours, expected):
    """max |ours - expected| / max |expected|."""
    return ((ours - expected).abs().max() / expected.abs().max()).item()
