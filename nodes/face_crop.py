"""FaceCrop and FaceStitch: a face of a photo of any size cut out at SD resolution, and the repaint put back."""

import logging

from comfy_api.latest import io

from ..flashface_core.faces.face_crop import BLENDS, SHAPES, FaceCrops, crop_faces, mask_box, stitch
from ..flashface_core.faces.region_mask import ORDERS, select_face
from .runtime.detectors import detector_input, image_to_uint8, load_detector
from .runtime.errors import FlashFaceNodeError
from .runtime.node_ids import FACE_CROP, FACE_STITCH

log = logging.getLogger(__name__)

FaceCropType = io.Custom("FACE_CROP")
ON_NO_FACE = ("error", "pass_through")


class FaceCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FACE_CROP,
            display_name="FlashFace Face Crop",
            category="FlashFace",
            description="Cuts a square around one face of each image and scales it to `size`, so a small face in a "
                        "large photo is sampled at SD resolution; FaceStitch puts the repaint back.",
            inputs=[
                io.Image.Input("image", tooltip="The photos (a batch: one face per image)."),
                detector_input(),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Which face, counting from 0 in face_order (for several faces chain one "
                                     "FaceCrop -> sample -> FaceStitch per face)."),
                io.Combo.Input("face_order", options=list(ORDERS), default="largest_first",
                               tooltip="How faces are counted for face_index: largest first, or by position from "
                                       "left to right."),
                io.Float.Input("context", default=2.5, min=1.0, max=8.0, step=0.1,
                               tooltip="The crop's side as a multiple of the face box's longer side (more context: "
                                       "more of hair, neck and background for the sampler to match). A crop "
                                       "touching the border is shifted inside the image, never padded."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8,
                             tooltip="The crops' side in pixels after scaling (512 or 768 for SD1.5); area "
                                     "averaging scales down, bicubic up."),
                io.Combo.Input("shape", options=list(SHAPES), default="ellipse",
                               tooltip="The face mask: the ellipse inscribed in the face box, or the box."),
                io.Int.Input("grow", default=24, min=0, max=512,
                             tooltip="Crop pixels (at `size`) added around the face box for the mask."),
                io.Int.Input("feather", default=16, min=0, max=256,
                             tooltip="Soft mask edge in crop pixels (at `size`); 0 = hard edge."),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), default="error",
                               tooltip="An image without a face (or with an empty `mask`): 'error' stops with the "
                                       "image's index; 'pass_through' leaves that image untouched (an empty mask, "
                                       "FaceStitch returns it as it was) and logs a warning, for batches and API "
                                       "jobs."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Use this mask's box instead of detecting (one mask, or one per image), e.g. "
                                      "the FaceMask box a portrait was drawn with; shape, grow and feather apply "
                                      "to that box."),
            ],
            outputs=[
                io.Image.Output(display_name="crops", tooltip="One size x size crop per image, for VAEEncode."),
                io.Mask.Output(display_name="mask",
                               tooltip="The face mask in crop coordinates: FlashFace's face_mask and the inpaint "
                                       "mask for SetLatentNoiseMask."),
                FaceCropType.Output(display_name="face_crop",
                                    tooltip="Where each crop came from, for FaceStitch."),
            ],
        )

    @classmethod
    def execute(cls, image, detector, face_index, face_order, context, size, shape, grow, feather, on_no_face,
                mask=None) -> io.NodeOutput:
        if size % 8:
            raise FlashFaceNodeError(f"{FACE_CROP}: size {size} is not a multiple of 8 (the VAE's stride); use e.g. 512")
        batch, height, width = image.shape[:3]
        if mask is not None and (mask.shape[0] not in (1, batch) or tuple(mask.shape[1:]) != (height, width)):
            raise FlashFaceNodeError(
                f"{FACE_CROP}: mask: {mask.shape[0]} mask(s) of {mask.shape[2]}x{mask.shape[1]} do not fit {batch} "
                f"image(s) of {width}x{height}; give one mask, or one per image, of the image's size")
        boxes = [cls.face_box(image, index, mask, detector, face_index, face_order, on_no_face)
                 for index in range(batch)]

        record = crop_faces(image, boxes, context, size, shape, grow, feather)
        return io.NodeOutput(record.crops, record.masks, record)

    @staticmethod
    def face_box(image, index, mask, detector, face_index, face_order, on_no_face):
        """The box to crop around in image `index`; None (with a warning) when passed through."""
        if mask is not None:
            box = mask_box(mask[index if mask.shape[0] > 1 else 0])
            problem = f"{FACE_CROP}: mask: the mask for image {index} is empty (all zero)"
            fix = "paint the face in the mask, leave `mask` unconnected to detect"
        else:
            found = load_detector(FACE_CROP, detector)
            [pixels] = image_to_uint8(image[index:index + 1])
            faces = found.detect(pixels)
            if faces:
                try:
                    return select_face(faces, face_index, face_order).box
                except ValueError as error:
                    raise FlashFaceNodeError(f"{FACE_CROP}: face_index: image {index}: {error}") from error
            box = None
            problem = f"{FACE_CROP}: image {index}: no face found (detector: {found.name})"
            fix = "use a photo with a visible face, try another detector, or connect a `mask`"
        if box is not None:
            return box
        if on_no_face == "error":
            raise FlashFaceNodeError(f"{problem}; {fix}, or set on_no_face to 'pass_through' to leave such images "
                                     "untouched")
        log.warning("%s: passed through untouched (on_no_face 'pass_through')", problem)
        return None


class FaceStitch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FACE_STITCH,
            display_name="FlashFace Face Stitch",
            category="FlashFace",
            description="Scales the repainted crops back and blends them into the original images through the face "
                        "mask; pixels outside the mask stay bit-identical.",
            inputs=[
                io.Image.Input("image", tooltip="The images that went into FaceCrop."),
                FaceCropType.Input("face_crop", tooltip="FaceCrop's face_crop."),
                io.Image.Input("crops", tooltip="The repainted crops (VAEDecode of the sampled crop latent)."),
                io.Int.Input("feather", default=0, min=0, max=256,
                             tooltip="A further soft edge in crop pixels on top of the mask's own (0: the mask "
                                     "as is)."),
                io.Combo.Input("blend", options=list(BLENDS), default="change",
                               tooltip="'change' adds what the sampler changed to the photo (the photo's detail "
                                       "finer than the crop stays; unchanged crops give the image back exactly); 'replace' puts "
                                       "the scaled repaint itself in the mask (nothing of the old face's detail "
                                       "stays: for face swaps)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="The blend mask in crop coordinates; not connected: FaceCrop's mask."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The images at their original size.")],
        )

    @classmethod
    def execute(cls, image, face_crop, crops, feather, blend, mask=None) -> io.NodeOutput:
        if not isinstance(face_crop, FaceCrops):
            raise FlashFaceNodeError(f"{FACE_STITCH}: face_crop: connect the face_crop output of FlashFace Face Crop")
        try:
            return io.NodeOutput(stitch(face_crop, image, crops, mask, feather, blend))
        except ValueError as error:
            raise FlashFaceNodeError(f"{FACE_STITCH}: {error}") from error
