"""Peak memory and time of FaceCrop -> VAEEncode -> FlashFace at 512 px -> VAEDecode -> FaceStitch on a
4000x3000 photo, against the same FlashFace run on a 512x512 image (no crop, no stitch).

    COMFYUI_PATH=/path/to/ComfyUI python bench/face_crop_memory.py [--steps 2]

Full-size random models (tests/support/model_files.py: the SD1.5 checkpoint with its VAE, and FlashFace,
built once into $FLASHFACE_TEST_CACHE). Each case runs in a process of its own (Linux): the models are
loaded and warmed up by one run at 64 px, the resident memory noted and the peak RSS restarted from it,
then the case runs once through the public nodes in inference mode, as ComfyUI's executor runs them. The photo is a real test photo (man_1) scaled so
its face is about 300 px, in a 4000x3000 canvas, made the way LoadImage makes an IMAGE (uint8 -> float32).
Reported per case and part (load+crop, vae+sample, stitch): the peak RSS above the loaded models (restarted
for each part) and the seconds; then the photo case's highest peak over the 512 px case's, in MiB and in
copies of the photo's own float32 pixels (137 MiB).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024**2
PHOTO = (3000, 4000)  # height, width
SIZE = 512


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", choices=["photo", "512"], help=argparse.SUPPRESS)  # the child process
    return parser.parse_args()


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def reset_peak():
    """Start the peak RSS (VmHWM) again from the current RSS, so loading the models does not count."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_bytes():
    with open("/proc/self/status") as status:
        [line] = [line for line in status if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def photo_uint8():
    """man_1 scaled so its face box is about 300 px, in a smooth 4000x3000 canvas, as uint8 RGB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(40, 220, (6, 8, 3), dtype=np.uint8))
    canvas = coarse.resize(PHOTO[::-1], Image.BILINEAR)
    face = Image.open(REPO / "tests" / "data" / "faces" / "man_1.jpg").convert("RGB")
    face = face.resize((round(face.width * 1.6), round(face.height * 1.6)), Image.LANCZOS)
    canvas.paste(face, (2600, 900))
    return np.asarray(canvas)


def measure(case, steps):
    import numpy as np
    import torch

    from step_cost import bootstrap

    host = bootstrap("pytorch")
    torch.set_num_threads(1)
    import comfy.sd
    import folder_paths
    import nodes as comfy_nodes
    from support.model_files import FLASHFACE_NAME, SD15_NAME, cached_models_dir

    models = cached_models_dir(REPO / "tests" / "data" / "flashface_keys.tsv")
    folder_paths.add_model_folder_path("flashface", str(models / "flashface"))
    nodes = host.nodes
    model, _, vae = comfy.sd.load_checkpoint_guess_config(str(models / "checkpoints" / SD15_NAME), output_vae=True,
                                                         output_clip=False)[:3]
    flashface = nodes.LoadFlashFace.execute(FLASHFACE_NAME, "default").result[0]
    generator = torch.Generator().manual_seed(0)
    references = host.reference_set.ReferenceSet(torch.randn(4, 4, 28, 28, generator=generator), [1] * 4)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]

    def repaint(crops, mask):
        """VAEEncode -> SetLatentNoiseMask -> ApplyReferenceAttention -> FlashFaceSampler -> VAEDecode."""
        latent = comfy_nodes.VAEEncode().encode(vae, crops)[0]
        latent = comfy_nodes.SetLatentNoiseMask().set_mask(latent, mask)[0]
        patched = nodes.ApplyReferenceAttention.execute(model, flashface, references, negative, reference_strength=1.2,
                                                        strength_before_launch=0.85, face_mask=mask).result[0]
        sampled = nodes.FlashFaceSampler.execute(patched, positive, negative, latent, seed=0, steps=steps,
                                                 text_cfg=7.5, reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5,
                                                 sampler_name="flashface_ddim", scheduler="flashface_trailing",
                                                 denoise=0.8).result[0]
        return comfy_nodes.VAEDecode().decode(vae, sampled)[0], latent

    with torch.inference_mode():  # a warm-up at 64 px: the models are loaded and patched once, outside the peaks
        repaint(torch.rand(1, 64, 64, 3, generator=generator), torch.ones(1, 64, 64))
    pixels = photo_uint8()
    if case == "512":  # the face's square of the photo, at 512 px: the plain inpaint run
        from PIL import Image
        pixels = np.asarray(Image.fromarray(pixels[700:1700, 2300:3300]).resize((SIZE, SIZE), Image.LANCZOS))
    loaded = resident_bytes()
    reset_peak()
    seconds, peaks = {}, {}

    def phase_done(name, start):
        seconds[name], peaks[name] = time.perf_counter() - start, peak_bytes() - loaded
        reset_peak()
        return time.perf_counter()

    with torch.inference_mode():
        start = time.perf_counter()
        image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]  # what LoadImage does
        del pixels
        if case == "photo":
            crops, mask, record = nodes.FaceCrop.execute(image, "builtin", 0, "largest_first", 2.5, SIZE, "ellipse",
                                                         24, 16, "error").result
        else:
            crops, mask = image, nodes.FaceMask.execute(SIZE, SIZE, 0.3, 0.25, 0.7, 0.75, "box").result[0]
        start = phase_done("load+crop", start)
        repainted, latent = repaint(crops, mask)
        start = phase_done("vae+sample", start)
        if case == "photo":
            out = nodes.FaceStitch.execute(image, record, repainted, 0, "change").result[0]
            assert out.shape == image.shape
        phase_done("stitch", start)
    return {"case": case, "loaded": loaded, "peaks": peaks, "latent": list(latent["samples"].shape),
            "seconds": seconds}


def main():
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    results = {}
    for case in ("512", "photo"):
        # A small fixed mmap threshold makes glibc hand every freed tensor buffer back at once, so the
        # resident memory follows the live tensors, not the allocator's history (read at startup).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        out = subprocess.run([sys.executable, __file__, "--one", case, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True, env=env).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])
    phases = ("load+crop", "vae+sample", "stitch")
    print(f"{'case':>26} {'latent':>14} {'loaded':>8}   peak above loaded / seconds: "
          + "  ".join(f"{phase:>16}" for phase in phases))
    for case, label in (("512", "512x512 image"), ("photo", "4000x3000 photo, crop 512")):
        r = results[case]
        cells = "  ".join(f"{r['peaks'][p] / MIB:7.0f}M {r['seconds'][p]:6.1f}s" for p in phases)
        print(f"{label:>26} {str(r['latent']):>14} {r['loaded'] / MIB:7.0f}M {'':>30} {cells}")
    added = {case: max(r["peaks"].values()) for case, r in results.items()}
    extra = added["photo"] - added["512"]
    photo_bytes = PHOTO[0] * PHOTO[1] * 3 * 4
    print(f"the photo's extra peak over the 512 px run: {extra / MIB:.0f} MiB = {extra / photo_bytes:.2f} copies of "
          f"the photo's float32 pixels ({photo_bytes / MIB:.0f} MiB); {args.steps} steps, CPU, 1 thread")


if __name__ == "__main__":
    from repo_imports import use_repo_imports

    use_repo_imports()
    main()
