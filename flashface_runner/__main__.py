"""python -m flashface_runner WORKFLOW.json [--comfyui PATH] [--set NODE_ID.input=value ...]
    [--seeds 1-50] [--server URL ...] [--export-api FILE]
    [--models-dir DIR] [--output-dir DIR] [-- ComfyUI's own arguments]

Prints the path of every image the workflow saved. Exit status (EXIT_STATUS below): 0 every job
saved its images; 1 a job failed or the workflow/an option is wrong; 2 a model or input file is
missing; 3 a server cannot be reached or lacks a node/input; 130 interrupted (Ctrl-C).
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import comfyui
from .jobs import describe_seed_inputs, make_jobs, parse_seeds, rerun_command, seed_inputs
from .progress import Progress
from .ui_format import RunnerError, apply_overrides, set_widget_values, ui_to_api

EXIT_STATUS = {"ok": 0, "failed": 1, "missing file": 2, "server": 3, "interrupted": 130}


def _default_comfyui():
    if os.environ.get("COMFYUI_PATH"):
        return os.environ["COMFYUI_PATH"]
    if comfyui.PACK_DIR.parent.name == "custom_nodes":  # installed as ComfyUI/custom_nodes/<pack>
        return str(comfyui.PACK_DIR.parents[1])
    return None


def shipped_workflows():
    return sorted((comfyui.PACK_DIR / "workflows").glob("*.json"))


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2, which here means a missing model
        self.print_usage(sys.stderr)
        self.exit(EXIT_STATUS["failed"], f"{self.prog}: error: {message}\n")


def parse_args(argv):
    argv = list(argv)
    comfyui_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = _ArgumentParser(prog="python -m flashface_runner",
                             description="Run a workflow saved by ComfyUI's UI, headless.",
                             epilog="Arguments after `--` go to ComfyUI itself, e.g. `-- --lowvram`. "
                                    "Without CUDA, MPS or XPU in torch, `--cpu` is added for you.")
    parser.add_argument("workflow", type=Path, help="workflow JSON saved by ComfyUI's UI (Workflow > Save/Export)")
    parser.add_argument("--comfyui", default=_default_comfyui(),
                        help="ComfyUI folder (default: $COMFYUI_PATH, or the ComfyUI this pack is installed in)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.input=value",
                        help="change an input, e.g. --set 18.seed=7 (repeatable; node ids as in the UI)")
    parser.add_argument("--models-dir", help="a models folder (checkpoints/, flashface/, ...) searched first")
    parser.add_argument("--output-dir", help="where images are written (default: ComfyUI's output folder; "
                                              "with --server: ./output)")
    parser.add_argument("--seeds", help="one job per seed, e.g. 1-50 or 7,9,12: every sampler's seed / noise_seed "
                                        "input is set to the job's seed")
    parser.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                        help="run the jobs on this running ComfyUI server (repeatable), e.g. http://127.0.0.1:8188")
    parser.add_argument("--export-api", type=Path, metavar="FILE",
                        help="write the API-format prompt (with --set) to FILE and run nothing")
    args = parser.parse_args(argv)
    if not args.comfyui and not args.servers:
        parser.error("--comfyui is required (or set COMFYUI_PATH), unless --server is given")
    return args, comfyui_args


def prepare(args, comfyui_args, workflow, resolve_images=True):
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
    if resolve_images:
        comfyui.resolve_input_images(prompt, args.workflow.resolve().parent)
    return prompt


def image_dirs(args):
    """Where input images a server lacks are looked for: ComfyUI's input folder, the workflow's inputs/."""
    folder = args.workflow.resolve().parent
    dirs = [Path(args.comfyui) / "input"] if args.comfyui else []
    return [d for d in [*dirs, folder / "inputs", folder] if d.is_dir()]


def export_api(args, comfyui_args, workflow):
    if args.seeds is not None:
        raise RunnerError("--export-api writes one prompt: choose its seed with --set NODE_ID.seed=N instead of --seeds")
    if args.servers:
        from .servers import ServerError, fetch_prompt

        try:
            prompt = fetch_prompt(args.servers[0], workflow, args.overrides)
        except ServerError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_STATUS["server"]
    else:
        prompt = prepare(args, comfyui_args, workflow, resolve_images=False)
    args.export_api.write_text(json.dumps(prompt, indent=2), encoding="utf-8")
    print(comfyui.shown_path(args.export_api))
    return EXIT_STATUS["ok"]


def summarize(jobs, argv, interrupted):
    """The summary after a batch (stderr) and the exit status."""
    failed = [job for job in jobs if job.error]
    if len(jobs) > 1 or interrupted:
        print(f"{len(jobs) - len(failed)} of {len(jobs)} jobs saved their images", file=sys.stderr)
    if failed and len(jobs) > 1:
        print("failed:", file=sys.stderr)
        for job in failed:
            print(f"  {job.name}{f' on {job.where}' if job.where else ''}: {job.error}", file=sys.stderr)
        print(f"run just these again: {rerun_command(argv, failed)}", file=sys.stderr)
    if interrupted:
        return EXIT_STATUS["interrupted"]
    return EXIT_STATUS["failed"] if failed else EXIT_STATUS["ok"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, comfyui_args = parse_args(argv)
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
        jobs = make_jobs(parse_seeds(args.seeds) if args.seeds is not None else None)
        if args.export_api:
            return export_api(args, comfyui_args, workflow)
        if args.servers:
            return run_on_servers(args, comfyui_args, workflow, jobs, argv)
        prompt = prepare(args, comfyui_args, workflow)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STATUS["failed"]
    problems = comfyui.missing_models(prompt)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_STATUS["missing file"]
    inputs = seed_inputs(prompt)
    if args.seeds is not None:
        if not inputs:
            print("error: --seeds: the workflow has no seed input (a sampler's seed or noise_seed widget) to set",
                  file=sys.stderr)
            return EXIT_STATUS["failed"]
        print(f"{len(jobs)} jobs; --seeds sets {describe_seed_inputs(prompt, inputs)}", file=sys.stderr)
    from .local_batch import run_local

    interrupted = run_local(prompt, workflow, jobs, inputs, Progress(len(jobs)))
    for job in jobs:
        if interrupted and not job.error and not job.images:
            job.error = "not run (interrupted)"
    return summarize(jobs, argv, interrupted)


def run_on_servers(args, comfyui_args, workflow, jobs, argv):
    from .servers import ServerError, run_on_servers as run

    if comfyui_args:
        print(f"note: ComfyUI arguments {comfyui_args} are ignored with --server (the servers run with their own)",
              file=sys.stderr)
    output_dir = Path(args.output_dir or "output")
    try:
        setup_error, interrupted = run(args.servers, workflow, args.overrides, image_dirs(args), jobs, output_dir,
                                       lambda: Progress(len(jobs)), args.seeds is not None)
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STATUS["server"]
    if setup_error is not None:
        return setup_error
    return summarize(jobs, argv, interrupted)


if __name__ == "__main__":
    sys.exit(main())
