"""FaceCrop -> VAEEncode -> FlashFace -> VAEDecode -> FaceStitch through the public nodes in ComfyUI, on real
photos placed in large canvases, with the golden random FlashFace, a random SD1.5-layout U-Net and a small
random VAE (8x down like SD1.5's). Peak memory: the crop run plus a few copies of the photo. Errors name the node
and the input and change nothing."""

import gc
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.model_files import SD15_VAE_CONFIG
from support.paths import FACES
from support.random_models import init_random_

SIZE = 128  # crop side: a 16x16 latent, the golden U-Net's size
TINY_VAE = {**SD15_VAE_CONFIG, "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1}


@pytest.fixture(scope="module")
def vae(host):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {"params": {"ddconfig": TINY_VAE, "embed_dim": 4}}
    model = AutoencoderKL(**config["params"])
    init_random_(model, torch.Generator().manual_seed(3))
    return comfy.sd.VAE(sd=model.state_dict(), config=config)


@pytest.fixture(scope="module")
def crop_nodes(host):
    return host.nodes.FaceCrop, host.nodes.FaceStitch


def photo(name, scale):
    pixels = np.asarray(Image.open(FACES / f"{name}.jpg").convert("RGB"))
    image = torch.from_numpy(pixels.copy()).float()[None] / 255
    size = (round(pixels.shape[0] * scale), round(pixels.shape[1] * scale))
    return torch.nn.functional.interpolate(image.movedim(-1, 1), size=size, mode="area").movedim(1, -1)[0]


def canvas(height, width, seed=0):
    coarse = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0].permute(1, 2, 0)


def place(background, picture, left, top):
    out = background.clone()
    out[top:top + picture.shape[0], left:left + picture.shape[1]] = picture
    return out


def crop(node, image, **settings):
    values = dict(detector="builtin", face_index=0, face_order="left_to_right", context=2.5, size=SIZE,
                  shape="ellipse", grow=4, feather=4, on_no_face="error")
    values.update(settings)
    return node.execute(image, **values).result


def repaint(host, vae, crops, mask, model, flashface, references, seed=7):
    """VAEEncode -> SetLatentNoiseMask -> Apply(face_mask) -> FlashFaceSampler (denoise 0.8) -> VAEDecode, in
    inference mode as ComfyUI's executor runs nodes."""
    with torch.inference_mode():
        return _repaint(host, vae, crops, mask, model, flashface, references, seed)


def _repaint(host, vae, crops, mask, model, flashface, references, seed):
    import nodes as comfy_nodes

    latent = comfy_nodes.VAEEncode().encode(vae, crops)[0]
    latent = comfy_nodes.SetLatentNoiseMask().set_mask(latent, mask)[0]
    negative = [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(6)), {}]]
    positive = [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(8)), {}]]
    patched = host.nodes.ApplyReferenceAttention.execute(model, flashface, references, negative, reference_strength=1.2,
                                                         strength_before_launch=0.85, face_mask=mask).result[0]
    sampled = host.nodes.FlashFaceSampler.execute(patched, positive, negative, latent, seed=seed, steps=3, text_cfg=7.5,
                                                  reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5,
                                                  sampler_name="flashface_ddim", scheduler="flashface_trailing",
                                                  denoise=0.8).result[0]
    return comfy_nodes.VAEDecode().decode(vae, sampled)[0], latent, sampled


def references(host, seed):
    latents = torch.randn(2, 4, 14, 14, generator=torch.Generator().manual_seed(seed))
    return host.reference_set.ReferenceSet(latents, [1, 1])


def changed_support(record, index, height, width):
    from flashface_core.faces.face_crop import resample

    p = record.placements[index]
    where = torch.zeros(height, width, dtype=torch.bool)
    where[p.top:p.top + p.side, p.left:p.left + p.side] = resample(record.masks[index][None], p.side, p.side)[0] > 0
    return where


def test_a_150px_face_in_a_3000x2000_photo_is_sampled_at_the_crop_size_only(host, crop_nodes, vae, base, flashface,
                                                                           monkeypatch):
    face_crop, face_stitch = crop_nodes
    image = place(canvas(2000, 3000), photo("man_1", 0.46), 1900, 700)[None]
    before = image.clone()
    crops, mask, record = crop(face_crop, image)
    box = record.placements[0]
    assert 140 <= box.side / 2.5 <= 160  # 2.5 times the face box of about 150 px
    seen = []  # every tensor that goes through the VAE or the U-Net
    for owner, name in ((vae, "encode"), (vae, "decode")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda x, _f=original, _n=name: (seen.append((_n, tuple(x.shape))), _f(x))[1])
    unet = base.model.diffusion_model
    forward = unet.forward
    monkeypatch.setattr(unet, "forward",
                        lambda x, *a, **k: (seen.append(("unet", tuple(x.shape))), forward(x, *a, **k))[1])
    decoded, latent, sampled = repaint(host, vae, crops, mask, base, flashface, references(host, 5))
    assert latent["samples"].shape == sampled["samples"].shape == (1, 4, SIZE // 8, SIZE // 8)
    assert seen[0] == ("encode", (1, SIZE, SIZE, 3)) and seen[-1] == ("decode", (1, 4, SIZE // 8, SIZE // 8))
    assert {shape[-2:] for kind, shape in seen if kind == "unet"} == {(SIZE // 8, SIZE // 8)}
    [out] = face_stitch.execute(image, record, decoded, feather=0, blend="change").result
    assert out.shape == image.shape and torch.equal(image, before)
    changed = changed_support(record, 0, 2000, 3000)
    assert torch.equal(out[0][~changed], image[0][~changed])
    assert float((out - image).abs()[0][changed].max()) > 0.1
    [same] = face_stitch.execute(image, record, crops, feather=0, blend="change").result
    assert torch.equal(same, image)  # the crops themselves give the photo back bit-exact


def peak_rss_above_start(run):
    """The most resident memory `run()` adds at any moment (Linux: the peak RSS restarted before it)."""
    def status(key):
        with open("/proc/self/status") as lines:
            return int(next(line for line in lines if line.startswith(key)).split()[1]) * 1024

    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    start = status("VmRSS:")
    run()
    return status("VmHWM:") - start


def test_peak_memory_is_the_crop_run_plus_a_few_copies_of_the_photo(host, crop_nodes, vae, base, flashface):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("restarting the peak RSS needs Linux's /proc/self/clear_refs")
    face_crop, face_stitch = crop_nodes
    photo_pixels = (place(canvas(2000, 3000), photo("man_1", 0.46), 1900, 700) * 255).round().byte().numpy()
    crop_pixels = photo_pixels[650:1150, 1850:2350]  # the face's square, for the run without crop and stitch
    refs = references(host, 5)

    def loaded(pixels):  # as LoadImage makes an IMAGE
        return torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]

    def crop_run():
        image = loaded(crop_pixels)
        crops, mask, _ = crop(face_crop, image)  # the crop itself scaled to SIZE: the plain inpaint run
        repaint(host, vae, crops, mask, base, flashface, refs)

    def photo_run():
        image = loaded(photo_pixels)
        crops, mask, record = crop(face_crop, image)
        decoded = repaint(host, vae, crops, mask, base, flashface, refs)[0]
        assert face_stitch.execute(image, record, decoded, feather=0, blend="change").result[0].shape == image.shape

    crop_run()  # warm-up: first-call allocations of the models
    plain, full = peak_rss_above_start(crop_run), peak_rss_above_start(photo_run)
    photo_bytes = 2000 * 3000 * 3 * 4
    assert full - plain <= 4 * photo_bytes, (plain, full)


def test_two_faces_chained_with_two_identities(host, crop_nodes, vae, base, flashface):
    """Right face first (face_index 1, left_to_right), then face 0 of the stitched photo, as the workflow does."""
    face_crop, face_stitch = crop_nodes
    two = place(place(canvas(900, 1800, seed=1), photo("man_1", 0.6), 300, 250), photo("woman_1", 0.6), 1200, 280)
    image = two[None]
    original = image.clone()
    supports, centres = [], []
    for face_index, seed in ((1, 5), (0, 9)):
        crops, mask, record = crop(face_crop, image, face_index=face_index)
        decoded = repaint(host, vae, crops, mask, base, flashface, references(host, seed), seed=seed)[0]
        image = face_stitch.execute(image, record, decoded, feather=0, blend="change").result[0]
        supports.append(changed_support(record, 0, 900, 1800))
        centres.append(record.placements[0].left + record.placements[0].side / 2)
    assert centres[1] < 900 < centres[0]  # the right face, then the left one found in the stitched photo
    assert not (supports[0] & supports[1]).any()
    untouched = ~(supports[0] | supports[1])
    assert torch.equal(image[0][untouched], original[0][untouched])
    for support in supports:
        assert float((image - original).abs()[0][support].mean()) > 0.05


def test_a_batch_of_two_photos_and_pass_through(host, crop_nodes, caplog):
    face_crop, face_stitch = crop_nodes
    first = place(canvas(600, 900, seed=2), photo("man_2", 0.5), 100, 150)
    second = place(canvas(600, 900, seed=3), photo("woman_2", 0.5), 650, 200)
    batch = torch.stack([first, second])
    crops, mask, record = crop(face_crop, batch)
    assert crops.shape == (2, SIZE, SIZE, 3) and mask.shape == (2, SIZE, SIZE)
    assert record.placements[0].left < 450 < record.placements[1].left
    out = face_stitch.execute(batch, record, crops.flip(0), feather=0, blend="replace").result[0]
    for index in range(2):
        support = changed_support(record, index, 600, 900)
        assert torch.equal(out[index][~support], batch[index][~support]) and not torch.equal(out[index], batch[index])

    blank = torch.stack([first, canvas(600, 900, seed=4)])
    with pytest.raises(host.errors.FlashFaceNodeError, match=r"FaceCrop: image 1: no face found .*pass_through"):
        crop(face_crop, blank)
    with caplog.at_level(logging.WARNING):
        crops, mask, record = crop(face_crop, blank, on_no_face="pass_through")
    assert "image 1: no face found" in caplog.text and "passed through" in caplog.text
    assert float(mask[1].abs().max()) == 0 and record.placements[1] is None
    out = face_stitch.execute(blank, record, 1 - crops, feather=0, blend="change").result[0]
    assert torch.equal(out[1], blank[1]) and not torch.equal(out[0], blank[0])


def test_a_mask_box_instead_of_detection(host, crop_nodes):
    face_crop, _ = crop_nodes
    image = canvas(400, 600)[None]  # no face: the mask says where
    box = torch.zeros(1, 400, 600)
    box[:, 100:160, 300:360] = 1
    crops, mask, record = crop(face_crop, image, mask=box)
    p = record.placements[0]
    assert (p.left, p.top, p.side) == (255, 55, 150)  # 2.5 x 60 px around the box's centre
    assert mask.shape == (1, SIZE, SIZE) and float(mask[0, SIZE // 2, SIZE // 2]) == 1 and float(mask[0, 0, 0]) == 0


def test_bad_inputs_name_node_and_input_and_change_nothing(host, crop_nodes):
    face_crop, face_stitch = crop_nodes
    error = host.errors.FlashFaceNodeError
    image = place(canvas(500, 700), photo("man_3", 0.5), 200, 100)[None]
    before = image.clone()
    with pytest.raises(error, match=r"FaceCrop: face_index: image 0: face_index 3 asks for face 4"):
        crop(face_crop, image, face_index=3)
    with pytest.raises(error, match=r"FaceCrop: mask: the mask for image 0 is empty"):
        crop(face_crop, image, mask=torch.zeros(1, 500, 700))
    with pytest.raises(error, match=r"FaceCrop: mask: 1 mask\(s\) of 64x64 do not fit 1 image\(s\) of 700x500"):
        crop(face_crop, image, mask=torch.ones(1, 64, 64))
    with pytest.raises(error, match=r"FaceCrop: size 100 is not a multiple of 8"):
        crop(face_crop, image, size=100)
    crops, mask, record = crop(face_crop, image)
    kept = crops.clone(), mask.clone()
    cases = [((image[:, :400], record, crops), r"FaceStitch: image: 1 image\(s\) of 700x400, but face_crop was made "
                                               r"from 1 image\(s\) of 700x500"),
             ((torch.cat([image, image]), record, crops), r"FaceStitch: image: 2 image\(s\)"),
             ((image, record, crops[:, :64]), r"FaceStitch: crops: "),
             ((image, {"box": 1}, crops), r"FaceStitch: face_crop: connect the face_crop output")]
    for args, message in cases:
        with pytest.raises(error, match=message):
            face_stitch.execute(*args, feather=0, blend="change")
    with pytest.raises(error, match=r"FaceStitch: mask: "):
        face_stitch.execute(image, record, crops, feather=0, blend="change", mask=torch.ones(2, SIZE, SIZE))
    assert torch.equal(image, before) and torch.equal(crops, kept[0]) and torch.equal(mask, kept[1])
