"""FaceMask: where the face should go, as FlashFace's face-position mask (or an inpaint mask)."""

import numpy as np
import torch
from comfy_api.latest import io

from ..flashface_core.faces.region_mask import ORDERS, face_region_mask
from ..flashface_core.masks import SHAPES, face_position_mask
from .runtime.detectors import detector_input, image_to_uint8, load_detector
from .runtime.errors import FlashFaceNodeError
from .runtime.node_ids import FACE_MASK

MODES = ("box", "from_detection", "person_region")


class FaceMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FACE_MASK,
            display_name="FlashFace Face Mask",
            category="FlashFace",
            description="The face-position mask: a box in normalized coordinates, or a face found in an image; "
                        "or the region of the person around that face.",
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
                               tooltip="'box' uses x1..y2; 'from_detection' detects a face in `image` (see "
                                       "face_index); 'person_region' is the person around that face (3 face "
                                       "widths wide, down to 6 face heights below it): a `region` for "
                                       "ApplyReferenceAttention."),
                io.Int.Input("grow", default=16, min=0, max=1024, optional=True,
                             tooltip="from_detection/person_region: pixels added around the box."),
                io.Int.Input("feather", default=8, min=0, max=256, optional=True,
                             tooltip="from_detection/person_region: soft edge width in pixels (0 = hard edge)."),
                detector_input(optional=True),
                io.Int.Input("face_index", default=0, min=0, max=63, optional=True,
                             tooltip="from_detection/person_region: which face, counting from 0 in face_order "
                                     "(one FaceMask per person of a group photo)."),
                io.Combo.Input("face_order", options=list(ORDERS), default="largest_first", optional=True,
                               tooltip="How faces are counted for face_index: largest first, or by position "
                                       "from left to right."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="Mask [batch, height, width], 1 where the face goes.")],
        )

    @classmethod
    def execute(cls, width, height, x1, y1, x2, y2, shape, image=None, mode="box", grow=16, feather=8,
                detector="auto", face_index=0, face_order="largest_first") -> io.NodeOutput:
        if mode != "box":
            if image is None:
                raise FlashFaceNodeError(f"{FACE_MASK}: mode '{mode}' needs the `image` input connected.")
            found = load_detector(FACE_MASK, detector)
            area = "person" if mode == "person_region" else "face"
            masks = []
            for index, picture in enumerate(image_to_uint8(image)):
                try:
                    masks.append(face_region_mask(picture, found, grow=grow, feather=feather, face_index=face_index,
                                                  order=face_order, area=area))
                except ValueError as error:
                    raise FlashFaceNodeError(f"{FACE_MASK}: image {index}: {error}") from error
            return io.NodeOutput(torch.from_numpy(np.stack(masks)))
        if image is not None:
            height, width = image.shape[1], image.shape[2]
        try:
            mask = face_position_mask(height, width, (x1, y1, x2, y2), shape)
        except ValueError as error:
            raise FlashFaceNodeError(f"{FACE_MASK}: x1, y1, x2, y2: {error}") from error
        return io.NodeOutput(mask.unsqueeze(0))


