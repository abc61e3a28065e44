"""ComfyUI's own custom-node loader registers every node, under the ids of nodes/runtime/node_ids.py, with a
tooltip on every input and output."""

import asyncio

from support.paths import REPO


def node_ids(host):
    return {value for name, value in vars(host.node_ids).items() if name.isupper()}


def test_comfyui_registers_every_node_with_tooltips(host):
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(REPO)))
    listed = {node.GET_NODE_INFO_V1()["name"] for node in asyncio.run(host.nodes.FlashFaceExtension().get_node_list())}
    assert listed == node_ids(host) and len(listed) == 12
    for node_id in listed:
        info = nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        assert info["category"] == "FlashFace", node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id
    assert "flashface" in __import__("folder_paths").folder_names_and_paths

