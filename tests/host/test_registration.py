"""ComfyUI's own custom-node loader registers every node, with a tooltip on every input and output."""

import asyncio

from support.paths import REPO

NODE_IDS = {"LoadFlashFace", "EncodeReferences", "FaceMask", "ApplyReferenceAttention", "FlashFaceSampler",
            "FlashFaceGuider", "FlashFaceTrailingScheduler", "FlashFaceDDIMSampler", "FaceSimilarity", "FaceCrop",
            "FaceStitch"}


def test_comfyui_registers_every_node_with_tooltips(host):
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(REPO)))
    assert NODE_IDS <= set(nodes.NODE_CLASS_MAPPINGS)
    for node_id in NODE_IDS:
        info = nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        assert info["category"] == "FlashFace", node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id
    assert "flashface" in __import__("folder_paths").folder_names_and_paths
