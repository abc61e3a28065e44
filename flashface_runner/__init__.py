"""Run a workflow saved by ComfyUI's UI headless: `python -m flashface_runner WORKFLOW.json`, in-process
or on running ComfyUI servers (`--server`), once or once per seed (`--seeds`).

A ComfyUI driver, not FlashFace math (that is flashface_core/, which never imports ComfyUI):
ui_format.py converts the UI format to ComfyUI's API prompt, comfyui.py runs it through ComfyUI's
own validate_prompt and PromptExecutor, local_batch.py runs a batch's jobs in-process, jobs.py makes
them (seeds), server_schema.py checks a workflow against a server's /object_info, server_client.py
speaks to one server, servers.py spreads the jobs over several, progress.py reports, __main__.py is
the command line.
"""
