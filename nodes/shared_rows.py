"""U-Net work that rows with identical inputs share, done once per distinct input.

All rows of one CFG or FlashFace step carry the same latents, timestep and face mask; they
differ in the prompt and, after the launch step, in the reference strength. So:
* up to the first cross-attention every row is the same: one stem row runs conv_in,
  input_blocks.1's ResBlock and self-attention, and forks into the distinct prompts there;
* after the launch step 'cond + references' and 'cond' also share the prompt, and reference
  attention sits only in middle_block.1 and the decoder: their whole encoder runs once
  (spec section 6, item 3).
Exact: the same sums, only not repeated. Done with ComfyUI patch points that the FlashFace call
adds for the duration of one U-Net call; off whenever another patch, a ControlNet or class labels
could see the smaller batch.
"""

import torch


class SharedRows:
    """The row plan of one U-Net call and the patches that carry it out."""

    def __init__(self, keep, expand, one_stem, last_input_block):
        self.keep = keep  # [distinct rows] the rows the encoder computes after the first cross-attention
        self.expand = expand  # [rows] each row's position in `keep`
        self.one_stem = one_stem  # all rows share x and mask: one row up to the first cross-attention
        self.last_input_block = last_input_block

    @classmethod
    def plan(cls, unet, x, timesteps, context, y, control, mask_rows, transformer_options):
        foreign = [p for group in ("patches", "patches_replace") for p in transformer_options.get(group, {}).values()]
        if (control is not None or y is not None or context is None or any(foreign)
                or not bool((timesteps == timesteps[0]).all())):
            return None
        rows = x.shape[0]
        keep, expand = [], []
        for row in range(rows):
            match = next((i for i, kept in enumerate(keep) if _same_inputs(row, kept, x, context, mask_rows)), None)
            if match is None:
                keep.append(row)
                match = len(keep) - 1
            expand.append(match)
        one_stem = rows > 1 and all(_same_image(row, 0, x, mask_rows) for row in range(rows))
        if len(keep) == rows and not one_stem:
            return None
        return cls(torch.tensor(keep, device=x.device), torch.tensor(expand, device=x.device), one_stem,
                   ("input", len(unet.input_blocks) - 1))

    def add_patches(self, patches):
        patches.setdefault("emb_patch", []).append(self.broadcast_embedding)
        patches.setdefault("input_block_patch", []).append(self.shrink_batch)
        patches.setdefault("input_block_patch_after_skip", []).append(self.restore_batch)
        patches.setdefault("attn2_patch", []).append(self.select_prompts)
        patches.setdefault("output_block_patch", []).append(self.expand_skip)

    def broadcast_embedding(self, emb, model_channels, transformer_options):
        return emb[:1]  # every row has the same timestep (checked in plan); [1, C] broadcasts in ResBlocks

    def shrink_batch(self, h, transformer_options):
        if transformer_options.get("block") != ("input", 0):  # after conv_in and the mask channel
            return h
        return h[:1] if self.one_stem else h.index_select(0, self.keep)

    def restore_batch(self, h, transformer_options):
        if transformer_options.get("block") != self.last_input_block:  # the skips stay small
            return h
        return self._all_rows(h)

    def select_prompts(self, n, context, value, extra_options):
        if n.shape[0] == context.shape[0]:
            return n, context, value
        if n.shape[0] == 1:  # the first cross-attention of a shared stem: fork into the distinct prompts
            n = n.expand(self.keep.shape[0], -1, -1)
        selected = context.index_select(0, self.keep)
        return n, selected, selected if value is context else value.index_select(0, self.keep)

    def expand_skip(self, h, skip, transformer_options):
        return h, self._all_rows(skip)

    def _all_rows(self, h):
        """Back to one row per input row from one (shared stem) or the `keep` rows."""
        rows = self.expand.shape[0]
        if h.shape[0] == rows:
            return h
        if h.shape[0] == 1:
            return h.expand(rows, *h.shape[1:])
        return h.index_select(0, self.expand)


def _same_image(a, b, x, mask_rows):
    return torch.equal(x[a], x[b]) and (mask_rows is None or torch.equal(mask_rows[a], mask_rows[b]))


def _same_inputs(a, b, x, context, mask_rows):
    return _same_image(a, b, x, mask_rows) and torch.equal(context[a], context[b])

