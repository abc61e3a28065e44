"""A batch: one job per seed, each the workflow's prompt with every sampler seed set to the job's.

Pure (no ComfyUI): the seed inputs are found in the API prompt by name.
"""

import copy
import re
import shlex
from dataclasses import dataclass, field

from .ui_format import SEED_NAMES, RunnerError

SEEDS_HELP = "e.g. --seeds 1-50 or --seeds 7,9,12 (ranges and numbers, comma-separated; seeds are integers >= 0)"
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # what ComfyUI's seed inputs accept
MAX_JOBS = 100_000


def parse_seeds(text):
    """'1-3,7' -> [1, 2, 3, 7] (order kept, repeats dropped)."""
    if not text.strip():
        raise RunnerError(f"--seeds {text!r}: no seeds given; {SEEDS_HELP}")
    seeds, seen = [], set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise RunnerError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range; {SEEDS_HELP}")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise RunnerError(f"--seeds {text!r}: the range {part.strip()} is empty (it ends before it starts); "
                              f"write it as {last}-{first}")
        if last > MAX_SEED:
            raise RunnerError(f"--seeds {text!r}: {last} is above ComfyUI's largest seed {MAX_SEED}")
        if len(seeds) + last - first >= MAX_JOBS:
            raise RunnerError(f"--seeds {text!r}: more than {MAX_JOBS} jobs; run the batch in parts")
        for seed in range(first, last + 1):
            if seed not in seen:
                seen.add(seed)
                seeds.append(seed)
    return seeds


def seed_inputs(prompt):
    """[(node id, input name)] of every seed a sampler reads: the `seed` / `noise_seed` inputs
    (KSampler, KSamplerAdvanced, SamplerCustom, RandomNoise, FlashFaceSampler, ...) holding a number.
    A seed linked from another node's output is not set (that node decides it)."""
    return [(node_id, name) for node_id, node in prompt.items() for name in SEED_NAMES
            if isinstance(node["inputs"].get(name), int) and not isinstance(node["inputs"][name], bool)]


def describe_seed_inputs(prompt, inputs):
    return ", ".join(f"#{node_id} {prompt[node_id]['class_type']}.{name}" for node_id, name in inputs)


@dataclass
class Job:
    number: int  # 1-based, in the order given
    seed: int | None  # None: the workflow's own seeds (no --seeds)
    images: list = field(default_factory=list)  # where its images were written
    error: str = ""
    where: str = ""  # "" (in this process) or the server's URL

    @property
    def name(self):
        return f"seed {self.seed}" if self.seed is not None else "the workflow"


def make_jobs(seeds):
    return [Job(number, seed) for number, seed in enumerate(seeds or [None], start=1)]


def job_prompt(prompt, inputs, seed):
    """A copy of `prompt` with every seed input in `inputs` set to `seed` (unchanged for None)."""
    prompt = copy.deepcopy(prompt)
    if seed is not None:
        for node_id, name in inputs:
            prompt[node_id]["inputs"][name] = seed
    return prompt


def seed_assignments(inputs, seed):
    """The same change as --set strings (for the UI workflow the images carry)."""
    return [] if seed is None else [f"{node_id}.{name}={seed}" for node_id, name in inputs]


def rerun_command(argv, failed):
    """The command line that runs just the failed jobs again: argv with --seeds replaced."""
    args, rest = list(argv), []
    if "--" in args:
        args, rest = args[:args.index("--")], args[args.index("--"):]
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--seeds":
            skip = True
        elif not arg.startswith("--seeds="):
            kept.append(arg)
    seeds = [job.seed for job in failed if job.seed is not None]
    if seeds:
        kept += ["--seeds", ",".join(map(str, seeds))]
    return shlex.join(["python", "-m", "flashface_runner", *kept, *rest])
