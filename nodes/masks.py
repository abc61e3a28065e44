"""FaceMask: where the face should go, as FlashFace's face-position mask (or an inpaint mask)."""

import numpy as np
import torch
from comfy_api.latest import io

from ..flashface_core.faces.region_mask import face_region_mask
from ..flashface_core.masks import SHAPES, face_position_mask
from .detectors import detector_input, image_to_uint8, load_detector
from .errors import FlashFaceNodeError

MODES = ("box", "from_detection")


class FaceMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceMask",
            display_name="FlashFace Face Mask",
            category="FlashFace",
            description="The face-position mask: a box in normalized coordinates, or the face found in an image.",
            inputs=[
                io.Int.Input("width", default=512, min=8, max=16384, step=8,
                             tooltip="Mask width in pixels (ignored when `image` is connected)."),
                io.Int.Input("height", default=512, min=8, max=16384, step=8,
                             tooltip="Mask height in pixels (ignored when `image` is connected)."),
                io.Float.Input("x1", default=0.3, min=0.0, max=1.0, step=0.01, tooltip="Left edge, 0..1 of the width."),
                io.Float.Input("y1", default=0.2, min=0.0, max=1.0, step=0.01, tooltip="Top edge, 0..1 of the height."),
                io.Float.Input("x2", default=0.6, min=0.0, max=1.0, step=0.01, tooltip="Right edge, 0..1 of the width."),
                io.Float.Input("y2", default=0.5, min=0.0, max=1.0, step=0.01, tooltip="Bottom edge, 0..1 of the height."),
                io.Combo.Input("shape", options=list(SHAPES), default="box",
                               tooltip="'box' fills the box as drawn; 'official_square' is the official demo's "
                                       "square of side max(w, h) anchored at the box's top-left corner."),
                io.Image.Input("image", optional=True,
                               tooltip="Takes the mask size from this image; with mode 'from_detection' the "
                                       "mask is the face found in it (for face swapping)."),
                io.Combo.Input("mode", options=list(MODES), default="box", optional=True,
                               tooltip="'box' uses x1..y2; 'from_detection' detects the largest face in `image`."),
                io.Int.Input("grow", default=16, min=0, max=1024, optional=True,
                             tooltip="from_detection: pixels added around the detected face box."),
                io.Int.Input("feather", default=8, min=0, max=256, optional=True,
                             tooltip="from_detection: soft edge width in pixels (0 = hard edge)."),
                detector_input(optional=True),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="Mask [batch, height, width], 1 where the face goes.")],
        )

    @classmethod
    def execute(cls, width, height, x1, y1, x2, y2, shape, image=None, mode="box", grow=16, feather=8,
                detector="auto") -> io.NodeOutput:
        if mode == "from_detection":
            if image is None:
                raise FlashFaceNodeError("FaceMask: mode 'from_detection' needs the `image` input connected.")
            found = load_detector("FaceMask", detector)
            masks = []
            for index, picture in enumerate(image_to_uint8(image)):
                try:
                    masks.append(face_region_mask(picture, found, grow=grow, feather=feather))
                except ValueError as error:
                    raise FlashFaceNodeError(f"FaceMask: image {index}: {error}") from error
            return io.NodeOutput(torch.from_numpy(np.stack(masks)))
        if image is not None:
            height, width = image.shape[1], image.shape[2]
        try:
            mask = face_position_mask(height, width, (x1, y1, x2, y2), shape)
        except ValueError as error:
            raise FlashFaceNodeError(f"FaceMask: x1, y1, x2, y2: {error}") from error
        return io.NodeOutput(mask.unsqueeze(0))


