"""FlashFace math and checkpoint format, independent of ComfyUI (imports no `comfy`)."""
