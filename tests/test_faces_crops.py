"""Official reference crops (crop, eye-level rotation, PadToSquare), batch policies and face masks."""
import logging
import math

import numpy as np
import pytest
from PIL import Image

from flashface_core.faces import (Face, crop_reference_face, eye_line_angle, face_region_mask, letterbox,
                                  pad_to_square, prepare_reference_crops)


def face_at(x1, y1, x2, y2, landmarks=None) -> Face:
    if landmarks is None:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        landmarks = [[cx - w / 4, cy - h / 6], [cx + w / 4, cy - h / 6], [cx, cy], [cx - w / 5, cy + h / 4],
                     [cx + w / 5, cy + h / 4]]
    return Face((x1, y1, x2, y2), 0.99, np.array(landmarks, np.float32))


class StubDetector:
    """Returns the faces listed for each image; an image is identified by its first pixel value."""
    name = "stub"

    def __init__(self, faces_per_image):
        self.faces_per_image = faces_per_image

    def detect(self, image):
        return self.faces_per_image[int(image[0, 0, 0])]


def numbered_images(count, size=64):
    return [np.full((size, size, 3), index, np.uint8) for index in range(count)]


# --- PadToSquare ---------------------------------------------------------------------------------

def test_pad_to_square_rounds_and_centres_like_the_official_transform():
    image = np.full((47, 100, 3), 200, np.uint8)
    square, scale, (left, top) = letterbox(image, 224)
    # 47 * 2.24 = 105.28 -> 105 rows; 119 rows of padding, 59 on top and 60 below
    assert square.shape == (224, 224, 3) and scale == pytest.approx(2.24) and (left, top) == (0, 59)
    assert square[:59].max() == 0 and square[164:].max() == 0
    assert square[59:164].min() > 150
    tall = pad_to_square(np.full((100, 50, 3), 200, np.uint8), 224)
    assert tall[:, :56].max() == 0 and tall[:, 56:168].min() > 150 and tall[:, 168:].max() == 0


# --- eye-level rotation ------------------------------------------------------------------------

def test_eye_line_angle_sign():
    def angle(left, right):
        return eye_line_angle(np.array([left, right, [0, 0], [0, 0], [0, 0]], np.float32))
    assert angle([0, 0], [10, 10]) == pytest.approx(45)  # right eye lower: turn counter-clockwise
    assert angle([0, 10], [10, 0]) == pytest.approx(-45)
    assert angle([0, 5], [10, 5]) == 0


@pytest.mark.parametrize("left_eye, right_eye", [((150, 140), (250, 110)), ((150, 100), (250, 160)),
                                                 ((160, 120), (240, 121))])
def test_crop_levels_the_eyes(left_eye, right_eye):
    """Paint the eyes as coloured dots, crop, and find the dots again: they must be level."""
    image = np.full((300, 400, 3), 128, np.uint8)
    for (x, y), colour in ((left_eye, (255, 0, 0)), (right_eye, (0, 255, 0))):
        image[y - 3:y + 4, x - 3:x + 4] = colour
    face = face_at(100, 60, 300, 260, [left_eye, right_eye, (200, 170), (170, 210), (230, 210)])
    crop = crop_reference_face(image, face).astype(int)
    assert crop.shape == (224, 224, 3)
    red = np.argwhere((crop[..., 0] > 200) & (crop[..., 1] < 60)).mean(axis=0)
    green = np.argwhere((crop[..., 1] > 200) & (crop[..., 0] < 60)).mean(axis=0)
    assert green[1] > red[1]  # the left eye stays on the left
    assert abs(math.degrees(math.atan2(green[0] - red[0], green[1] - red[1]))) < 1


def test_crop_outside_the_image_is_black():
    crop = crop_reference_face(np.full((100, 100, 3), 255, np.uint8), face_at(-20, 0, 80, 100))
    assert crop[112, :40].max() == 0 and crop[112, 60:].min() == 255


def test_real_photos_crop_to_level_eyes(builtin, photos):
    for image in photos:
        rotated = np.asarray(Image.fromarray(pad_to_square(image, 512)).rotate(25))
        (face,) = builtin.detect(rotated)
        crop = crop_reference_face(rotated, face)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        # where PIL's counter-clockwise rotation about the crop centre takes the eyes
        x1, y1, x2, y2 = np.round(face.box)
        theta = math.radians(eye_line_angle(face.landmarks))
        dx, dy = (face.landmarks[:2] - [x1, y1] - [(x2 - x1) / 2, (y2 - y1) / 2]).T
        new_x, new_y = dx * math.cos(theta) + dy * math.sin(theta), -dx * math.sin(theta) + dy * math.cos(theta)
        assert abs(eye_line_angle(face.landmarks)) > 3  # the test photo really was tilted
        assert abs(math.degrees(math.atan2(new_y[1] - new_y[0], new_x[1] - new_x[0]))) < 1


# --- batch policies ------------------------------------------------------------------------------

def test_policy_error_names_image_and_count():
    detector = StubDetector([[face_at(5, 5, 40, 40)], [face_at(5, 5, 20, 20), face_at(30, 30, 60, 60)]])
    with pytest.raises(ValueError, match=r"reference image 1 .* has 2 faces; policy 'error' needs exactly one"):
        prepare_reference_crops(numbered_images(2), detector, policy="error")
    with pytest.raises(ValueError, match=r"reference image 0 .* has 0 faces"):
        prepare_reference_crops(numbered_images(1), StubDetector([[]]), policy="error")


def test_policy_largest():
    small, large = face_at(2, 2, 12, 12), face_at(20, 20, 60, 60)
    crops, kept, faces = prepare_reference_crops(numbered_images(2), StubDetector([[small], [small, large]]))
    assert kept == [0, 1] and faces[1] is large and all(c.shape == (224, 224, 3) for c in crops)
    with pytest.raises(ValueError, match=r"reference image 2 .* has 0 faces; policy 'largest' needs a face"):
        prepare_reference_crops(numbered_images(3), StubDetector([[small], [large], []]))


def test_policy_skip(caplog):
    one = [face_at(5, 5, 40, 40)]
    detector = StubDetector([[], one, one * 2, one])
    with caplog.at_level(logging.WARNING):
        crops, kept, _ = prepare_reference_crops(numbered_images(4), detector, policy="skip")
    assert kept == [1, 3] and len(crops) == 2
    assert "reference image 0 has 0 faces" in caplog.text and "reference image 2 has 2 faces" in caplog.text
    with pytest.raises(ValueError, match="none of the 2 reference images"):
        prepare_reference_crops(numbered_images(2), StubDetector([[], one * 2]), policy="skip")


def test_crop_none_letterboxes_without_detection():
    crops, kept, faces = prepare_reference_crops([np.full((50, 100, 3), 9, np.uint8)], None, crop="none")
    assert kept == [0] and faces == [None] and crops[0].shape == (224, 224, 3) and crops[0][0].max() == 0


def test_real_photos_one_crop_each(builtin, photos):
    crops, kept, faces = prepare_reference_crops(photos, builtin, policy="error")
    assert kept == list(range(8)) and all(c.shape == (224, 224, 3) for c in crops)


# --- face mask ---------------------------------------------------------------------------------------

def test_mask_box_grow_and_feather():
    detector = StubDetector([[face_at(10, 20, 30, 40), face_at(40, 40, 44, 44)]])
    image = numbered_images(1)[0]
    mask = face_region_mask(image, detector)
    assert mask.dtype == np.float32 and mask.shape == (64, 64)
    assert mask.sum() == 400 and mask[20:40, 10:30].min() == 1
    assert face_region_mask(image, detector, grow=5).sum() == 900
    assert face_region_mask(image, detector, which="all").sum() == 416
    soft = face_region_mask(image, detector, feather=3)
    assert soft[30, 20] == 1 and soft[30, 0] == 0 and 0 < soft[30, 10] < 1
    assert soft.sum() == pytest.approx(400, abs=1e-3)  # blurring moves mass, it does not add any


def test_mask_at_the_border_stays_full():
    mask = face_region_mask(numbered_images(1)[0], StubDetector([[face_at(-5, 0, 20, 64)]]), feather=4)
    assert mask[32, 0] == 1


def test_mask_without_face():
    with pytest.raises(ValueError, match="no face found"):
        face_region_mask(numbered_images(1)[0], StubDetector([[]]))


def test_mask_of_one_face_by_index_and_order():
    # faces left to right: a small one at x 2..8, a large one at 20..40, a middle-sized one at 50..60
    detector = StubDetector([[face_at(20, 10, 40, 30), face_at(50, 10, 60, 20), face_at(2, 10, 8, 16)]])
    image = numbered_images(1)[0]
    for index, order, area in [(0, "largest_first", 400), (1, "largest_first", 100), (2, "largest_first", 36),
                               (0, "left_to_right", 36), (1, "left_to_right", 400), (2, "left_to_right", 100)]:
        assert face_region_mask(image, detector, face_index=index, order=order).sum() == area, (index, order)
    assert np.array_equal(face_region_mask(image, detector), face_region_mask(image, detector, order="largest_first"))
    with pytest.raises(ValueError, match="face_index 3 asks for face 4 .*3 face"):
        face_region_mask(image, detector, face_index=3)


def test_person_region_grows_the_face_box_and_is_clipped():
    detector = StubDetector([[face_at(24, 4, 32, 12)]])  # 8 x 8 face
    mask = face_region_mask(numbered_images(1)[0], detector, area="person")
    rows, cols = np.nonzero(mask)
    # 3 face widths centred on x 28 -> 16..40; half a face above -> y 0; 6 face heights below -> 60
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (16, 40, 0, 60)
    assert mask.sum() == 24 * 60


def test_two_people_of_one_photo_get_two_regions(builtin, photos):
    """A man and a woman side by side (close-ups): left_to_right gives the man's face and region first;
    each person region holds its face box and is larger, clipped by the image."""
    pair = np.concatenate([pad_to_square(photos[0], 256), pad_to_square(photos[4], 256)], axis=1)
    faces = [face_region_mask(pair, builtin, face_index=i, order="left_to_right") for i in (0, 1)]
    people = [face_region_mask(pair, builtin, face_index=i, order="left_to_right", area="person") for i in (0, 1)]
    centres = [np.nonzero(mask)[1].mean() for mask in faces]
    assert centres[0] < 256 <= centres[1]
    assert np.nonzero(people[0])[1].mean() < 256 <= np.nonzero(people[1])[1].mean()
    for face, person in zip(faces, people):
        assert person.sum() > 2 * face.sum() and person[face > 0].min() == 1
        assert person[-1].any() and not person[:, [0, -1]].all()  # down to the bottom, not the full width
