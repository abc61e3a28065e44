"""The pack's model folders: `models/flashface` (FlashFace weights, FlashFace's own face detector) and
`models/insightface`, registered with folder_paths before the node schemas list them."""

import os

import folder_paths

FLASHFACE_FOLDER = "flashface"
INSIGHTFACE_FOLDER = "insightface"
WEIGHT_EXTENSIONS = {".ckpt", ".pt", ".pth", ".safetensors"}
# Face detector files share models/flashface (the official retinaface_resnet50.pth lives there) or are
# insightface's (det_10g.onnx, ...): not FlashFace weights, so the file list leaves them out.
DETECTOR_FILE_PREFIXES = ("retinaface", "det_", "scrfd")


def register_model_folders():
    """`models/flashface` and `models/insightface`, keeping paths from extra_model_paths.yaml."""
    for name, extensions in ((FLASHFACE_FOLDER, WEIGHT_EXTENSIONS), (INSIGHTFACE_FOLDER, set())):
        paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
        default = os.path.join(folder_paths.models_dir, name)
        if default not in paths:
            paths = [*paths, default]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def flashface_candidates(names):
    """The files of the flashface folder that can be FlashFace weights (no face detector files)."""
    def is_detector(name):
        base = os.path.basename(name).lower()
        return base.startswith(DETECTOR_FILE_PREFIXES) or base.endswith(".onnx")

    return [name for name in names if not is_detector(name)]


def model_folders(name):
    """The folders registered for `name`; none when the pack's folders were never registered."""
    try:
        return folder_paths.get_folder_paths(name)
    except KeyError:
        return []
