"""Face crop and stitch math (flashface_core.faces.face_crop) on the real test photos placed in large canvases."""
import pytest
import torch

from flashface_core.faces.face_crop import (FaceCrops, crop_faces, mask_box, resample, square_placement, stitch)
from flashface_core.faces.region_mask import select_face



def canvas(height, width, seed=0):
    """A smooth random background (a photo's large-scale colour variation) as [H, W, 3] floats in 0..1."""
    coarse = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0].permute(1, 2, 0)


def place(background, photo, left, top, scale=1.0):
    """`photo` (uint8 RGB) scaled by `scale` pasted into a copy of `background` at (left, top)."""
    pixels = torch.from_numpy(photo.copy()).float()[None] / 255
    pixels = resample(pixels, round(photo.shape[0] * scale), round(photo.shape[1] * scale))[0]
    out = background.clone()
    out[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    return out


def detect_box(detector, image, face_index=0, order="largest_first"):
    pixels = (image.clamp(0, 1) * 255).round().byte().numpy()
    return select_face(detector.detect(pixels), face_index, order).box


def support(record, index, height, width):
    """Where the scaled-back mask of crop `index` is nonzero, in image pixels (what stitch may change)."""
    p = record.placements[index]
    alpha = resample(record.masks[index][None], p.side, p.side)[0]
    where = torch.zeros(height, width, dtype=torch.bool)
    where[p.top:p.top + p.side, p.left:p.left + p.side] = alpha > 0
    return where


@pytest.fixture(scope="module")
def big_photo(photos):  # noqa: F811
    """A 1800x1200 photo with man_1's face (about 150 px wide) in it."""
    return place(canvas(1200, 1800), photos[0], 900, 400, scale=0.57)


@pytest.mark.parametrize("size", [512, 128])  # the crop scaled up, and down
def test_stitching_the_crops_themselves_gives_the_image_back_bit_exact(big_photo, builtin, size):  # noqa: F811
    image = big_photo[None]
    record = crop_faces(image, [detect_box(builtin, big_photo)], 2.5, size, "ellipse", 24, 16)
    assert record.crops.shape == (1, size, size, 3) and record.masks.shape == (1, size, size)
    for blend_mask in (None, torch.ones(1, size, size)):
        assert torch.equal(stitch(record, image, record.crops, blend_mask), image)


def test_a_repaint_changes_the_face_and_leaves_every_pixel_outside_the_mask_bit_identical(
        big_photo, builtin):  # noqa: F811
    image = big_photo[None]
    before = image.clone()
    box = detect_box(builtin, big_photo)
    record = crop_faces(image, [box], 2.5, 512, "ellipse", 24, 16)
    repaint = 1 - record.crops  # a repaint that differs everywhere
    for blend in ("change", "replace"):
        out = stitch(record, image, repaint, blend=blend)
        assert out.shape == image.shape and torch.equal(image, before)
        changed = support(record, 0, *image.shape[1:3])
        assert torch.equal(out[0][~changed], image[0][~changed])
        x1, y1, x2, y2 = (round(v) for v in box)
        face = (out[0] - image[0])[y1:y2, x1:x2].abs().mean(-1)
        assert float((face > 0.05).float().mean()) > 0.7, blend  # the face itself was repainted
        # the mask's support stays near the face: within the grown and feathered box, in original pixels
        rows, cols = torch.nonzero(changed, as_tuple=True)
        reach = (24 + 16 + 3) * record.placements[0].side / 512
        assert x1 - reach <= int(cols.min()) and int(cols.max()) <= x2 + reach
        assert y1 - reach <= int(rows.min()) and int(rows.max()) <= y2 + reach


def test_crop_is_a_square_of_context_times_the_face_centred_on_it(big_photo, builtin):  # noqa: F811
    box = detect_box(builtin, big_photo)
    placement = square_placement(box, 2.5, 1200, 1800)
    longer = max(box[2] - box[0], box[3] - box[1])
    assert abs(placement.side - 2.5 * longer) <= 1
    assert abs(placement.left + placement.side / 2 - (box[0] + box[2]) / 2) <= 1
    assert abs(placement.top + placement.side / 2 - (box[1] + box[3]) / 2) <= 1


def test_scaling_filters_average_down_and_interpolate_up():
    stripes = torch.zeros(1, 300, 300, 3)
    stripes[:, :, ::2] = 1.0  # one-pixel stripes: a nearest or bilinear resize to 75 would see only one colour
    down = resample(stripes, 75, 75)
    assert torch.allclose(down, torch.full_like(down, 0.5))
    ramp = torch.linspace(0, 1, 64).expand(64, 64)[None, ..., None].expand(1, 64, 64, 3)
    up = resample(ramp, 256, 256)
    assert float(up.diff(dim=2).min()) >= -1e-6 and float(up.max()) <= 1 and float(up.min()) >= 0  # smooth, in range
    assert float((resample(up, 64, 64) - ramp).abs().max()) < 0.01  # down again: the ramp


def test_border_faces_are_cropped_inside_the_image_by_shifting(photos, builtin):  # noqa: F811
    background = canvas(1000, 1500, seed=1)
    for left, top in ((0, 0), (1500 - 190, 1000 - 220)):  # the face at the top-left, then the bottom-right corner
        image = place(background, photos[0], left, top, scale=0.57)[None]
        box = detect_box(builtin, image[0])
        record = crop_faces(image, [box], 2.5, 512, "ellipse", 24, 16)
        p = record.placements[0]
        assert 0 <= p.left and p.left + p.side <= 1500 and 0 <= p.top and p.top + p.side <= 1000
        assert abs(p.side - 2.5 * max(box[2] - box[0], box[3] - box[1])) <= 1  # shifted, not shrunk
        assert p.left <= box[0] and box[2] <= p.left + p.side and p.top <= box[1] and box[3] <= p.top + p.side
        assert torch.equal(stitch(record, image, record.crops), image)
    small = square_placement((10, 10, 90, 90), 2.5, 120, 100)  # larger than the image: its shorter side
    assert (small.left, small.top, small.side) == (0, 0, 100)


def test_a_batch_of_two_photos_gets_each_its_own_face(photos, builtin):  # noqa: F811
    first = place(canvas(900, 1200, seed=2), photos[0], 200, 300, scale=0.6)
    second = place(canvas(900, 1200, seed=3), photos[4], 800, 100, scale=0.8)
    images = torch.stack([first, second])
    boxes = [detect_box(builtin, first), detect_box(builtin, second)]
    record = crop_faces(images, boxes, 2.5, 256, "box", 8, 8)
    assert record.crops.shape == (2, 256, 256, 3)
    centres = [p.left + p.side / 2 for p in record.placements]
    assert centres[0] < 600 < centres[1]
    for index, box in enumerate(boxes):  # each crop holds its own face: found again there, mapped back onto it
        p = record.placements[index]
        crop_box = detect_box(builtin, record.crops[index])
        back = [offset + v * p.side / 256 for v, offset in zip(crop_box, (p.left, p.top) * 2)]
        assert max(abs(a - b) for a, b in zip(back, box)) < 0.05 * (box[2] - box[0]), (back, box)
    repaint = record.crops.flip(0)
    out = stitch(record, images, repaint)
    for index in range(2):
        changed = support(record, index, 900, 1200)
        assert torch.equal(out[index][~changed], images[index][~changed])
        assert float((out[index] - images[index]).abs()[changed].max()) > 0.1


def test_a_passed_through_image_comes_back_untouched_in_its_batch(photos, builtin):  # noqa: F811
    with_face = place(canvas(600, 800, seed=4), photos[1], 300, 100, scale=0.6)
    images = torch.stack([with_face, canvas(600, 800, seed=5)])
    record = crop_faces(images, [detect_box(builtin, with_face), None], 2.5, 128)
    assert record.placements[1] is None and float(record.masks[1].abs().max()) == 0
    out = stitch(record, images, 1 - record.crops)
    assert torch.equal(out[1], images[1]) and not torch.equal(out[0], images[0])


def test_two_faces_chained_each_repainted_and_face_1_found_again_after_face_0(photos, builtin):  # noqa: F811
    background = canvas(1000, 2000, seed=6)
    image = place(place(background, photos[0], 300, 300, scale=0.6), photos[4], 1400, 350, scale=0.6)[None]
    original = image.clone()
    boxes = []
    for face_index in (0, 1):
        box = detect_box(builtin, image[0], face_index, "left_to_right")
        boxes.append(box)
        record = crop_faces(image, [box], 2.5, 256, "ellipse", 16, 8)
        tinted = record.crops * torch.tensor([1.0, 0.6, 0.6])  # a repaint that is still a face
        image = stitch(record, image, tinted)
    assert boxes[0][2] < 1000 < boxes[1][0]  # face 1 is the right one, found on the stitched image
    first = crop_faces(original, [boxes[0]], 2.5, 256, "ellipse", 16, 8)
    second = crop_faces(original, [boxes[1]], 2.5, 256, "ellipse", 16, 8)
    changed = support(first, 0, 1000, 2000) | support(second, 0, 1000, 2000)
    assert torch.equal(image[0][~changed], original[0][~changed])
    for box in boxes:
        x1, y1, x2, y2 = (round(v) for v in box)
        assert float((original[0] - image[0])[y1:y2, x1:x2, 1].mean()) > 0.05  # green taken out of both faces


def test_mask_box_is_the_nonzero_extent():
    mask = torch.zeros(50, 80)
    mask[10:20, 30:45] = 0.5
    assert mask_box(mask) == (30.0, 10.0, 45.0, 20.0) and mask_box(torch.zeros(5, 5)) is None


def test_stitch_names_the_input_that_does_not_fit_and_changes_nothing(big_photo, builtin):  # noqa: F811
    image = big_photo[None]
    record = crop_faces(image, [detect_box(builtin, big_photo)], 2.5, 128)
    assert isinstance(record, FaceCrops)
    before = image.clone(), record.crops.clone(), record.masks.clone()
    cases = [(image[:, :600], record.crops, None, "image: 1 image"), (torch.cat([image, image]), record.crops, None,
             "made from 1 image"), (image, record.crops[:, :64, :64], None, "crops:"),
             (image, record.crops, torch.ones(1, 64, 64), "mask:"),
             (image, torch.ones(1, 128, 128, 4), None, "crops: 4 channels")]
    for images, crops, masks, message in cases:
        with pytest.raises(ValueError, match=message):
            stitch(record, images, crops, masks)
    assert all(torch.equal(a, b) for a, b in zip(before, (image, record.crops, record.masks)))
