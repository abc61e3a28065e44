"""FlashFace for ComfyUI.

ComfyUI imports this file when it loads custom nodes. It must stay cheap: the node
modules (and through them torch, ComfyUI and the face models) are imported only
when ComfyUI asks for the extension, and no weights are read before a node runs.
"""


async def comfy_entrypoint():
    from .nodes import FlashFaceExtension

    return FlashFaceExtension()
