"""FlashFaceSampler (one node, the official loop by default), FlashFaceGuidance (the guidance settings on the
MODEL, for any sampler) and the pieces for SamplerCustomAdvanced."""

from comfy_api.latest import io

import comfy.model_management
import comfy.sample
import comfy.utils
import latent_preview

from ..flashface_core.guidance import GuidanceSettings
from .runtime.guidance import set_guidance
from .runtime.node_ids import (FLASHFACE_DDIM_SAMPLER, FLASHFACE_GUIDANCE, FLASHFACE_GUIDER, FLASHFACE_SAMPLER,
                               FLASHFACE_TRAILING_SCHEDULER)
from .runtime.sampling import (DDIM_SAMPLER, TRAILING_SCHEDULER, flashface_guider, flashface_sampler, flashface_sigmas,
                               require_flashface_model, sampler_names, scheduler_names, trailing_sigmas)

DEFAULTS = GuidanceSettings()


def text_cfg_input():
    return io.Float.Input("text_cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                          tooltip="Text guidance strength (official default 7.5; 8.5 for age changes).")


def guidance_inputs():
    return [
        io.Float.Input("reference_cfg", default=DEFAULTS.reference_cfg, min=0.0, max=10.0, step=0.1, round=0.01,
                       tooltip="Reference guidance strength after the launch step (official 1.8-4, default 3.2). "
                               "Lower it if the face looks pasted on; 0 turns the third branch off."),
        io.Int.Input("launch_timestep", default=DEFAULTS.launch_timestep, min=0, max=1000, step=50,
                     tooltip="Reference guidance starts once the timestep (0-1000, counting down) is at or "
                             "below this. Higher = earlier = stronger likeness, less prompt freedom."),
        io.Float.Input("cfg_rescale", default=DEFAULTS.cfg_rescale, min=0.0, max=1.0, step=0.05,
                       tooltip="CFG rescale against the no-reference prediction (official 0.5)."),
    ]


class FlashFaceGuidance(io.ComfyNode):
    """The guidance settings a FlashFace MODEL carries, for KSampler, detailers and any other sampler."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FLASHFACE_GUIDANCE,
            display_name="FlashFace Guidance",
            category="FlashFace",
            description="Sets FlashFace's reference guidance, launch step and CFG rescale on the MODEL, for any "
                        "sampler (KSampler, SamplerCustom, detailers, AnimateDiff). The sampler's cfg is the text "
                        "CFG. Without this node the MODEL carries the official defaults.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ApplyReferenceAttention."),
                *guidance_inputs(),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A clone with these guidance settings.")],
        )

    @classmethod
    def execute(cls, model, reference_cfg, launch_timestep, cfg_rescale) -> io.NodeOutput:
        require_flashface_model(model, FLASHFACE_GUIDANCE)
        patched = model.clone()
        set_guidance(patched, GuidanceSettings(reference_cfg, launch_timestep, cfg_rescale))
        return io.NodeOutput(patched)


class FlashFaceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FLASHFACE_SAMPLER,
            display_name="FlashFace Sampler",
            category="FlashFace",
            description="Samples with FlashFace's text + reference guidance; the default sampler and scheduler "
                        "reproduce the official DDIM loop.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ApplyReferenceAttention."),
                io.Conditioning.Input("positive", tooltip="The prompt; say the age, e.g. 'a 30 year old man'."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("latent_image", tooltip="An empty latent (or one to inpaint/refine)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="Sampling steps (official 25-50)."),
                text_cfg_input(),
                *guidance_inputs(),
                io.Combo.Input("sampler_name", options=sampler_names(), default=DDIM_SAMPLER,
                               tooltip="'flashface_ddim' is the official loop; ComfyUI's samplers work too."),
                io.Combo.Input("scheduler", options=scheduler_names(), default=TRAILING_SCHEDULER,
                               tooltip="'flashface_trailing' is the official time grid."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Below 1 keeps part of latent_image (img2img)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The sampled latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, text_cfg, reference_cfg,
                launch_timestep, cfg_rescale, sampler_name, scheduler, denoise=1.0) -> io.NodeOutput:
        guider = flashface_guider(model, positive, negative, text_cfg,
                                  GuidanceSettings(reference_cfg, launch_timestep, cfg_rescale), FLASHFACE_SAMPLER)
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = flashface_sigmas(model, scheduler, steps, denoise)
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
        samples = guider.sample(noise, latent, flashface_sampler(sampler_name), sigmas,
                                denoise_mask=latent_image.get("noise_mask"), callback=callback,
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = latent_image.copy()
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(out)


class FlashFaceGuider(io.ComfyNode):
    """ComfyUI's CFGGuider on the FlashFace MODEL with these guidance settings."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FLASHFACE_GUIDER,
            display_name="FlashFace Guider",
            category="FlashFace",
            description="FlashFace's guidance as a GUIDER for SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ApplyReferenceAttention."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                text_cfg_input(),
                *guidance_inputs(),
            ],
            outputs=[io.Guider.Output(display_name="guider", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, text_cfg, reference_cfg, launch_timestep, cfg_rescale) -> io.NodeOutput:
        return io.NodeOutput(flashface_guider(model, positive, negative, text_cfg,
                                              GuidanceSettings(reference_cfg, launch_timestep, cfg_rescale),
                                              FLASHFACE_GUIDER))


class FlashFaceTrailingScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FLASHFACE_TRAILING_SCHEDULER,
            display_name="FlashFace Trailing Scheduler",
            category="FlashFace",
            description="The official 'trailing' time grid as SIGMAS.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose noise schedule to use."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="Sampling steps."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas", tooltip="steps + 1 sigmas, ending in 0.")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        return io.NodeOutput(trailing_sigmas(model.get_model_object("model_sampling"), steps))


class FlashFaceDDIMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FLASHFACE_DDIM_SAMPLER,
            display_name="FlashFace DDIM Sampler",
            category="FlashFace",
            description="The official DDIM loop (integer U-Net timesteps, exact grid sigmas) as a SAMPLER.",
            inputs=[],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(flashface_sampler(DDIM_SAMPLER))
