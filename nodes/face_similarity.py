"""FaceSimilarity: rank candidate images by how much their face looks like the reference faces."""

from comfy_api.latest import io

from ..flashface_core.faces.similarity import EMBEDDER_NAMES, identity_scores, make_embedder, rank_by_score
from .runtime.detectors import detector_input, image_to_uint8, load_detector
from .runtime.errors import FlashFaceNodeError
from .runtime.model_folders import INSIGHTFACE_FOLDER, model_folders
from .runtime.node_ids import FACE_SIMILARITY


class FaceSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=FACE_SIMILARITY,
            display_name="Face Similarity (FlashFace)",
            category="FlashFace",
            description="Scores each candidate image by identity similarity to the reference faces "
                        "and sorts the candidates, most alike first.",
            inputs=[
                io.Image.Input("images", tooltip="Candidate images, e.g. the generated batch. The largest face of each is scored."),
                io.Image.Input("references", tooltip="Photos of the target person; the largest face of each is used."),
                detector_input(),
                io.Combo.Input("similarity", options=list(EMBEDDER_NAMES), default="auto",
                               tooltip="Identity model. 'insightface': ArcFace from an antelopev2/buffalo_l pack in "
                                       "models/insightface/models (cosine, -1..1). 'dlib': pip install dlib-bin "
                                       "face_recognition_models (1 - L2 distance). 'auto': insightface, else dlib."),
            ],
            outputs=[
                io.Float.Output(display_name="scores", is_output_list=True,
                                tooltip="One score per candidate in input order, higher = more alike; NaN where no face was found."),
                io.Image.Output(display_name="sorted_images", tooltip="The candidates from most to least alike; faceless ones last."),
                io.String.Output(display_name="report", tooltip="Which detector and identity model ran, and the ranked scores."),
            ],
        )

    @classmethod
    def execute(cls, images, references, detector="auto", similarity="auto") -> io.NodeOutput:
        found = load_detector(FACE_SIMILARITY, detector)
        try:
            embedder = make_embedder(similarity, model_folders(INSIGHTFACE_FOLDER))
        except (OSError, ImportError, ValueError, RuntimeError) as error:  # OSError: model files missing
            raise FlashFaceNodeError(f"{FACE_SIMILARITY}: similarity '{similarity}': {error}") from error
        try:
            scores = identity_scores(image_to_uint8(images), image_to_uint8(references), found, embedder)
        except ValueError as error:  # identity_scores' own error (the images reach it as RGB uint8): no reference face
            raise FlashFaceNodeError(f"{FACE_SIMILARITY}: references: {error}") from error
        except Exception as error:  # onnxruntime and dlib raise their own types when a model fails to run
            raise FlashFaceNodeError(
                f"{FACE_SIMILARITY}: detector '{detector}', similarity '{similarity}': running {found.name} and "
                f"{embedder.name} failed ({type(error).__name__}: {error}). Pick another detector or similarity "
                "model, or replace the model files."
            ) from error
        order = rank_by_score(scores)
        ranked = ", ".join(f"#{i}: {scores[i]:.3f}" for i in order)
        report = f"detector: {found.name}; similarity: {embedder.name}; best first: {ranked}"
        return io.NodeOutput(scores, images[order], report)
