"""The jobs of a batch one after another in this process: one executor, so the models load once and
every node whose inputs did not change (loaders, EncodeReferences, ...) is not run again; with the
same references, FlashFace's reference store then serves every image after the first its reference
pass."""

import copy
import signal
import threading
import time

from . import comfyui
from .jobs import job_prompt, seed_assignments
from .ui_format import set_widget_values


def run_local(prompt, workflow, jobs, inputs, progress):
    """Run every job (results in job.images / job.error); True when Ctrl-C stopped the batch. The first
    Ctrl-C asks ComfyUI to stop at the sampler's next step (as the UI's cancel button does), a second
    one stops at once."""
    import comfy.model_management
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # the samplers' tqdm bars: `progress` shows the steps instead
    interrupted = threading.Event()

    def on_ctrl_c(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        comfy.model_management.interrupt_current_processing()

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    runner = comfyui.Runner(on_progress=lambda value, total: progress.step("", value, total))
    try:
        for job in jobs:
            progress.started(job)
            job_workflow = copy.deepcopy(workflow)
            set_widget_values(job_workflow, seed_assignments(inputs, job.seed), comfyui.input_types_of)
            start = time.monotonic()
            result = runner.run(job_prompt(prompt, inputs, job.seed), job_workflow)
            if interrupted.is_set():
                break
            job.images = [comfyui.shown_path(path) for path in result.images]
            job.error = result.error if not result.success else (
                "" if job.images else "the workflow saved no image (no SaveImage node?)")
            progress.finished(job, time.monotonic() - start)
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        signal.signal(signal.SIGINT, previous)
        comfy.utils.set_progress_bar_enabled(True)
        progress.close()
    return interrupted.is_set()
