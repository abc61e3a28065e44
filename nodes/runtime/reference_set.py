"""The FLASHFACE_REFS value EncodeReferences outputs and ApplyReferenceAttention takes."""

from dataclasses import dataclass

import torch
from comfy_api.latest import io

ReferencesType = io.Custom("FLASHFACE_REFS")


@dataclass
class ReferenceSet:
    latents: torch.Tensor  # [N, C, h, w] VAE latents (before the model's latent scaling), CPU
    multiplicity: list  # [N] how many times each reference counts
