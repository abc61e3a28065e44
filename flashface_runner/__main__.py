"""python -m flashface_runner WORKFLOW.json [--comfyui PATH] [--set NODE_ID.input=value ...]
    [--models-dir DIR] [--output-dir DIR] [-- ComfyUI's own arguments]

Prints the path of every image the workflow saved. Exit status 2: a model file is missing (the
message names the folder it goes in); 1: any other error, printed with the node.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import comfyui
from .ui_format import RunnerError, apply_overrides, set_widget_values, ui_to_api


def _default_comfyui():
    if os.environ.get("COMFYUI_PATH"):
        return os.environ["COMFYUI_PATH"]
    if comfyui.PACK_DIR.parent.name == "custom_nodes":  # installed as ComfyUI/custom_nodes/<pack>
        return str(comfyui.PACK_DIR.parents[1])
    return None


def shipped_workflows():
    return sorted((comfyui.PACK_DIR / "workflows").glob("*.json"))


def parse_args(argv):
    argv = list(argv)
    comfyui_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m flashface_runner",
                                     description="Run a workflow saved by ComfyUI's UI, headless.",
                                     epilog="Arguments after `--` go to ComfyUI itself, e.g. `-- --lowvram`. "
                                            "Without CUDA, MPS or XPU in torch, `--cpu` is added for you.")
    parser.add_argument("workflow", type=Path, help="workflow JSON saved by ComfyUI's UI (Workflow > Save/Export)")
    parser.add_argument("--comfyui", default=_default_comfyui(),
                        help="ComfyUI folder (default: $COMFYUI_PATH, or the ComfyUI this pack is installed in)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.input=value",
                        help="change an input, e.g. --set 18.seed=7 (repeatable; node ids as in the UI)")
    parser.add_argument("--models-dir", help="a models folder (checkpoints/, flashface/, ...) searched first")
    parser.add_argument("--output-dir", help="where SaveImage writes (default: ComfyUI's output folder)")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("--comfyui is required (or set COMFYUI_PATH)")
    return args, comfyui_args


def prepare(args, comfyui_args, workflow):
    """ComfyUI imported with the pack loaded; returns the API prompt. Overrides apply to both the
    prompt and `workflow` (what the saved images carry)."""
    comfyui_args, on_cpu = comfyui.device_args(comfyui_args)
    if on_cpu:
        print("no CUDA, MPS or XPU device in this torch: running ComfyUI on the CPU (slow; see README)",
              file=sys.stderr)
    comfyui.bootstrap_comfyui(args.comfyui, comfyui_args)
    if args.models_dir:
        comfyui.add_models_dir(args.models_dir)
    if args.output_dir:
        import folder_paths

        folder_paths.set_output_directory(str(Path(args.output_dir).resolve()))
    comfyui.load_nodes()
    prompt = ui_to_api(workflow, comfyui.input_types_of)
    apply_overrides(prompt, args.overrides)
    set_widget_values(workflow, args.overrides, comfyui.input_types_of)
    comfyui.resolve_input_images(prompt, args.workflow.resolve().parent)
    return prompt


def main(argv=None):
    args, comfyui_args = parse_args(sys.argv[1:] if argv is None else argv)
    # ComfyUI's own format: no logger names (the pack's carry its folder's absolute path).
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"error: cannot read workflow {args.workflow}: {error}", file=sys.stderr)
        if not args.workflow.exists():
            print("the pack's workflows (quote the name):", file=sys.stderr)
            for path in shipped_workflows():
                print(f'  "{comfyui.shown_path(path)}"', file=sys.stderr)
        return 1
    try:
        prompt = prepare(args, comfyui_args, workflow)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    problems = comfyui.missing_models(prompt)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    result = comfyui.Runner().run(prompt, workflow)
    if not result.success:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    for path in result.images:
        print(comfyui.shown_path(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
