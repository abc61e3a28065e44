"""Run a workflow saved by ComfyUI's UI headless, in-process: `python -m flashface_runner WORKFLOW.json`.

A ComfyUI driver, not FlashFace math (that is flashface_core/, which never imports ComfyUI):
ui_format.py converts the UI format to ComfyUI's API prompt, comfyui.py runs it through ComfyUI's
own validate_prompt and PromptExecutor, __main__.py is the command line.
"""
