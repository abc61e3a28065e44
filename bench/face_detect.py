"""Builtin face detection + reference crop time per image, against the bare onnxruntime call.

    python bench/face_detect.py [FACES_DIR] [--repeats N]      # FACES_DIR: tests/data/faces

One thread; median of N runs after a warm-up. The baseline is the network alone (session.run on
the already preprocessed input), measured in the same run, so the ratio shows what our pre- and
post-processing and the crop add.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def median_ms(actions, repeats: int) -> list[float]:
    """Median time of each action; the actions alternate so that load from other processes hits all alike."""
    for action in actions:
        action()  # warm-up
    times = [[] for _ in actions]
    for _ in range(repeats):
        for action, spent in zip(actions, times):
            start = time.perf_counter()
            action()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1000 for spent in times]


def main():
    import numpy as np
    from PIL import Image

    from support.paths import FACES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faces", nargs="?", default=str(FACES))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    paths = sorted(Path(args.faces).glob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg photos in {args.faces}; pass the folder of test photos")
    from flashface_core.faces import crop_reference_face
    from flashface_core.faces.alignment import resize_longer_side
    from flashface_core.faces.retinaface_decode import rgb_to_network_input
    from flashface_core.faces.retinaface_onnx import DETECTION_SIZE, BuiltinRetinaFace

    detector = BuiltinRetinaFace(threads=1)
    print(f"{'image':14} {'size':>9} {'detect+crop ms':>15} {'network ms':>11} {'ratio':>6}")
    ratios = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        blob = rgb_to_network_input(resize_longer_side(image, DETECTION_SIZE)[0])

        def detect_and_crop():
            return [crop_reference_face(image, face) for face in detector.detect(image)]

        ours, network = median_ms([detect_and_crop, lambda: detector.session.run(None, {"input": blob})], args.repeats)
        ratios.append(ours / network)
        print(f"{path.name:14} {image.shape[1]:>4}x{image.shape[0]:<4} {ours:>15.1f} {network:>11.1f} {ours / network:>6.2f}")
    print(f"median ratio (detect+crop / network alone): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy, onnxruntime and torch start their thread pools
    from repo_imports import use_repo_imports

    use_repo_imports()
    main()
