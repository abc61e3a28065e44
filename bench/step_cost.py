#!/usr/bin/env python
"""Cost of one FlashFace denoising step against one plain SD1.5 CFG step, inside ComfyUI.

    COMFYUI_PATH=/path/to/ComfyUI python bench/step_cost.py [--size 64] [--rounds 3] [--quick] [--memory] [--identities]

Builds full-size SD1.5-shaped models with random weights in memory (no checkpoint needed),
makes FlashFace through the public node ApplyReferenceAttention and calls each model the way a
sampler does (guider.sample -> KSAMPLER -> predict_noise -> calc_cond_batch -> apply_model).
fp32, CPU. Per case: median process-CPU (and its user-mode part) seconds over interleaved rounds, the ratio to
the plain step measured in the same run, arithmetic (torch.utils.flop_counter, conv/matmul/
attention), the ratio that arithmetic would give at the plain step's speed per op (`bound`) and the
peak resident memory the call adds. See bench/README.md.
"""

import argparse
import ctypes
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

REFERENCE_LATENT = 28  # the official 224-px reference crops
BEFORE_LAUNCH_T, AFTER_LAUNCH_T = 999, 500  # either side of the official launch step 750
GB = 1024**3
SECOND_IDENTITY_TARGET = 0.35  # what a second person may add, in plain CFG steps (at 512 px, 4 refs each)
IDENTITY_CASES = {"plain", "ff2_n4", "ff3_n4", "ref_n4", "ff2_two", "ff3_two"}
MEMORY_MMAP_THRESHOLD = 128 * 1024  # --memory: glibc hands every freed tensor buffer back at once


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="main latent side (64 = 512 px)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = stable timings on shared machines)")
    parser.add_argument("--quick", action="store_true", help="32x32 latent, 1 round: a smoke test")
    parser.add_argument("--memory", action="store_true",
                        help="768-px memory line: 96x96 latent, 1 round, plain vs FlashFace with 4 references")
    parser.add_argument("--identities", action="store_true",
                        help="only the cases for a second person: plain, one identity and two identities on the "
                             "two halves of the image (4 refs each)")
    parser.add_argument("--attention", choices=("pytorch", "comfyui-default"), default="pytorch",
                        help="ComfyUI's attention: --use-pytorch-cross-attention (torch SDPA, as the official code) "
                             "or ComfyUI's CPU default (sub-quadratic)")
    parser.add_argument("--allocator", choices=("steady", "default"), default="steady",
                        help="steady: glibc keeps freed memory (no page faults on reused tensor memory, same for "
                             "every case); default: glibc as configured, whose trimming varies between runs")
    args = parser.parse_args()
    if args.quick:
        args.size, args.rounds = 32, 1
    if args.memory:
        args.size, args.rounds = 96, 1
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            # A fixed threshold makes glibc return every freed tensor buffer to the OS, so resident
            # memory follows the live tensors instead of the allocator's history. Read at startup.
            os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MEMORY_MMAP_THRESHOLD)
            os.execv(sys.executable, [sys.executable, *sys.argv])
    elif args.allocator == "steady" and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        # Without trimming, memory freed by one step is reused by the next instead of being given back
        # and faulted in again page by page: how much glibc gives back depends on the history of
        # allocation sizes, which made the same case vary by +-10 % between runs. Read at startup.
        os.environ.update(MALLOC_TRIM_THRESHOLD_=str(64 * GB), MALLOC_TOP_PAD_=str(GB),
                          MALLOC_MMAP_THRESHOLD_=str(32 * 1024 * 1024))
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return args


# ---------------------------------------------------------------------------------------
# ComfyUI and the pack, imported as the host tests import them (tests/support)


def bootstrap(attention):
    from support.comfyui_host import import_pack, start_comfyui

    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui or not (Path(comfyui) / "comfy").is_dir():
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (the folder with main.py and comfy/)")
    start_comfyui(comfyui, *(["--use-pytorch-cross-attention"] if attention == "pytorch" else []))
    return import_pack()


# ---------------------------------------------------------------------------------------
# Models with random weights


def random_flashface(host, layout, base_patcher):
    """FlashFaceWeights of the full SD1.5 shapes. Cost depends on shapes only, so the main and
    reference U-Net reuse the base model's tensors (saves ~6 GB RAM and the init time); the
    patched main U-Net is still a separate copy at run time, as for a real checkpoint."""
    checkpoint = host.checkpoint
    base = {k.removeprefix("diffusion_model."): v for k, v in base_patcher.model.state_dict().items()
            if k.startswith("diffusion_model.")}
    shapes = layout.state_dict_shapes(in_channels=4)
    assert all(tuple(base[k].shape) == s for k, s in shapes.items()), "SD1.5 layout mismatch"
    unet = {k: base[k] for k in shapes}
    ref_unet = {k: v for k, v in unet.items() if k.startswith(("input_blocks.", "output_blocks."))}
    ref_attn = {}
    for key in shapes:
        block, found, projection = key.partition(".transformer_blocks.0.attn1.")
        if found and projection == "to_q.weight" and not block.startswith("input_blocks."):
            ref_attn[block] = {p: torch.randn(shapes[f"{block}.transformer_blocks.0.attn1.{p}"]) * 0.03
                               for p in checkpoint.REF_ATTN_PROJECTIONS}
    mask_conv = torch.randn(layout.model_channels, 1, 3, 3) * 0.1
    return checkpoint.FlashFaceWeights(layout, unet, mask_conv, ref_unet, ref_attn)


# ---------------------------------------------------------------------------------------
# Measurement


class Memory:
    """Peak resident memory a call adds: Linux's VmHWM, reset before the call (clear_refs 5),
    after handing freed heap back to the OS (malloc_trim, with `trim`) so the baseline is the live set."""

    def __init__(self):
        self.trim = False  # --memory only: trimming makes the next call fault its memory in again
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self._write_clear_refs()
            self.available = True
        except OSError:
            self.libc, self.available = None, False

    @staticmethod
    def _write_clear_refs():
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")

    @staticmethod
    def _status_kb(field_name):
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(field_name):
                    return int(line.split()[1])
        raise OSError(field_name)

    def rss(self):
        return self._status_kb("VmRSS:") * 1024 if self.available else float("nan")

    def start(self):
        if not self.available:
            return float("nan")
        if self.trim:
            self.libc.malloc_trim(0)
        self._write_clear_refs()
        return self.rss()

    def peak(self):
        return self._status_kb("VmHWM:") * 1024 if self.available else float("nan")


MEMORY = Memory()


def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """torch's CPU fused attention kernel is missing from flop_counter's table; count it like SDPA."""
    return sdpa_flop(query_shape, key_shape, value_shape)


def count_flops(fn):
    """FLOPs per counted aten op ('aten.convolution', 'aten.mm', ...) of one call."""
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


def seconds_per_op(fn):
    """CPU seconds of one call per aten op (inclusive time), keyed like count_flops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    return {event.key.replace("::", ".", 1): event.cpu_time_total / 1e6 for event in profiler.key_averages()}


@dataclass
class Job:
    """One measured thing: `run(call, x)` inside a sampling call of `patcher`, where `call(x, t)`
    is one guider prediction at timestep t."""

    name: str
    label: str
    patcher: object
    run: object
    target: float | None = None
    store: object = None  # first-image cases: the reference store, emptied before each call
    references: int = 0  # first-image cases: how many references the stored entry holds
    walls: list = field(default_factory=list)
    cpus: list = field(default_factory=list)
    users: list = field(default_factory=list)
    extra_bytes: list = field(default_factory=list)
    flops_per_op: dict = field(default_factory=dict)
    seconds_per_op: dict = field(default_factory=dict)  # the plain step only (see speed_bound)
    stored_bytes: int = 0  # first-image cases: what the call left in the reference store (one step's entry)

    @property
    def flops(self):
        return sum(self.flops_per_op.values())

    def measure(self, call, x, mode):
        if self.store is not None:
            self.store.clear()
        if mode == "count":
            self.flops_per_op = count_flops(lambda: self.run(call, x))
            return
        if mode == "profile":
            self.seconds_per_op = seconds_per_op(lambda: self.run(call, x))
            return
        before = MEMORY.start()
        wall, cpu, user = time.perf_counter(), time.process_time(), os.times().user
        self.run(call, x)
        self.walls.append(time.perf_counter() - wall)
        self.cpus.append(time.process_time() - cpu)
        self.users.append(os.times().user - user)
        self.extra_bytes.append(MEMORY.peak() - before)
        if self.store is not None:
            self.stored_bytes = self.store.nbytes


def run_jobs(guider, jobs, latent, mode="time"):
    """All jobs of one MODEL inside one guider.sample call: ComfyUI loads and patches the model,
    prepares the conds and wrappers exactly as for sampling; our 'sampler' runs the jobs."""
    import comfy.samplers

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for job in jobs:
            job.measure(lambda xs, t: model(xs, model_sigma(guider, t, xs), **extra_args), x, mode)
        return x

    sigmas = torch.stack([model_sigma(guider, AFTER_LAUNCH_T, latent)[0], torch.tensor(0.0)])
    guider.sample(torch.randn_like(latent), latent, comfy.samplers.KSAMPLER(sampler), sigmas, disable_pbar=True, seed=0)


def model_sigma(guider, t, x):
    sampling = guider.model_patcher.get_model_object("model_sampling")
    return sampling.sigma(torch.tensor(float(t))).reshape(1).expand(x.shape[0]).to(x.dtype)


# ---------------------------------------------------------------------------------------
# Cases


def step(t):
    """One sampler step: the guider's full prediction at timestep t (2 or 3 conds per its rules)."""
    return lambda call, x: call(x, t)


def reference_pass(patcher, reference_call):
    """The reference U-Net pass plus K/V projection alone, as the wrapper runs it once per call."""
    wrapper = reference_call.reference_attention_wrapper(patcher)

    def run(call, x):
        sampling = patcher.get_model_object("model_sampling")
        timesteps = sampling.timestep(sampling.sigma(torch.tensor(float(AFTER_LAUNCH_T)))).float().reshape(1)
        wrapper.reference_keys_values(timesteps, x, wrapper.identities[0])

    return run


class _EncoderDone(Exception):
    pass


def encoder_row(patcher):
    """Lever 3's saving: input_blocks + middle_block.0 for one row (what a shared encoder would not
    recompute for the duplicate cond row after launch). Stops at middle_block.1's first attention."""
    unet = patcher.model.diffusion_model

    def stop(n, context, value, extra_options):
        if extra_options.get("block") == ("middle", 0):
            raise _EncoderDone
        return n, context, value

    def run(call, x):
        context = torch.zeros(1, 77, 768)
        try:
            unet(x[:1], torch.full((1,), float(AFTER_LAUNCH_T)), context,
                 transformer_options={"patches": {"attn1_patch": [stop]}})
        except _EncoderDone:
            pass

    return run


def build_cases(host, size):
    import comfy.model_management
    import comfy.samplers

    from support.layouts import SD15_LAYOUT, comfy_unet_config
    from flashface_core.guidance import GuidanceSettings
    from support.pipeline import Parts, apply
    from support.random_models import random_sd15_patcher

    reference_call, sampling = host.call, host.sampling
    print(f"building SD1.5 ({SD15_LAYOUT}) with random weights ...", flush=True)
    # weights at 1/sqrt(fan-in): activations stay O(1), so the kernels stay on their normal paths
    base = random_sd15_patcher(comfy_unet_config(SD15_LAYOUT, in_channels=4), std=None)
    flashface = host.flashface_model.FlashFaceModel("random", random_flashface(host, SD15_LAYOUT, base))
    generator = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=generator), {"pooled_output": torch.randn(1, 768)}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {"pooled_output": torch.randn(1, 768)}]]
    ref_latents = torch.randn(16, 4, REFERENCE_LATENT, REFERENCE_LATENT, generator=generator)
    face_mask = torch.zeros(1, 8 * size, 8 * size)  # the official always feeds a mask channel
    face_mask[:, 2 * size:6 * size, 2 * size:6 * size] = 1

    left = torch.zeros(1, 8 * size, 8 * size)
    left[..., :4 * size] = 1

    def flashface_model(count, multiplicity, second_person=False):
        people = [ref_latents[:count], ref_latents[count:2 * count]][:1 + second_person]  # the second: right half
        references = [host.reference_set.ReferenceSet(latents, multiplicity) for latents in people]
        parts = Parts(base, references, positive, negative, face_mask)
        if second_person:
            first = apply(host, base, flashface, parts, region=left)
            model = apply(host, first, flashface, parts, identity=1, face_mask=None, region=1 - left)
        else:
            model = apply(host, base, flashface, parts)
        guider = sampling.flashface_guider(model, positive, negative, 7.5, GuidanceSettings(), "bench")
        return model, guider

    plain_guider = comfy.samplers.CFGGuider(base)
    plain_guider.set_conds(positive, negative)
    plain_guider.set_cfg(7.5)
    four, four_guider = flashface_model(4, [1] * 4)
    one, one_guider = flashface_model(1, [4])
    sixteen, sixteen_guider = flashface_model(16, [1] * 16)
    two, two_guider = flashface_model(4, [1] * 4, second_person=True)
    # One store for all four: they share FlashFace's reference modules.
    store = host.reference_cache.reference_store(four.get_additional_models_with_key(reference_call.WRAPPER_KEY)[0])

    def first(name, label, model, run, target=None, references=0):
        """A first image's step: the reference store emptied before each call."""
        return Job(name, label, model, run, target, store=store, references=references)

    groups = [
        (plain_guider, [
            Job("plain", "plain SD1.5 CFG step (B=2)", base, step(AFTER_LAUNCH_T)),
            Job("encoder_row", "  1 row of input_blocks+middle.0 (lever 3)", base, encoder_row(base)),
        ]),
        (four_guider, [
            first("ff2_n4", "FlashFace 2-way, 4 refs (before launch)", four, step(BEFORE_LAUNCH_T), 1.6),
            first("ff3_n4", "FlashFace 3-way, 4 refs", four, step(AFTER_LAUNCH_T), 2.0),
            Job("ff3_n4_again", "  same, next image (reference pass stored)", four, step(AFTER_LAUNCH_T), 1.55),
            first("ref_n4", "  reference pass alone, 4 refs", four, reference_pass(four, reference_call),
                  references=4),
        ]),
        (one_guider, [
            first("ff2_n1x4", "FlashFace 2-way, 1 ref x4 (before launch)", one, step(BEFORE_LAUNCH_T), 1.6),
            first("ff3_n1x4", "FlashFace 3-way, 1 ref x4", one, step(AFTER_LAUNCH_T), 1.6),
            Job("ff3_n1x4_again", "  same, next image (reference pass stored)", one, step(AFTER_LAUNCH_T), 1.5),
            first("ref_n1", "  reference pass alone, 1 ref", one, reference_pass(one, reference_call),
                  references=1),
        ]),
        (sixteen_guider, [
            first("ff3_n16", "FlashFace 3-way, 16 refs", sixteen, step(AFTER_LAUNCH_T)),
            Job("ff3_n16_again", "  same, next image (reference pass stored)", sixteen, step(AFTER_LAUNCH_T), 2.0),
            first("ref_n16", "  reference pass alone, 16 refs", sixteen, reference_pass(sixteen, reference_call),
                  references=16),
        ]),
        (two_guider, [
            first("ff2_two", "two people (halves), 2-way, 4 refs each", two, step(BEFORE_LAUNCH_T)),
            first("ff3_two", "two people (halves), 3-way, 4 refs each", two, step(AFTER_LAUNCH_T)),
        ]),
    ]
    comfy.model_management.load_models_gpu([base])
    rss_plain = MEMORY.rss()
    comfy.model_management.load_models_gpu([four] + four.get_nested_additional_models())
    rss_flashface = MEMORY.rss()
    own_ref_unet = sum(t.numel() * t.element_size() for t in flashface.weights.ref_unet.values())
    print(f"resident: plain model loaded {rss_plain / GB:.2f} GB; FlashFace loaded {rss_flashface / GB:.2f} GB "
          f"(+{(rss_flashface - rss_plain) / GB:.2f} GB, the patched main weights; here the reference U-Net reuses "
          f"the base tensors, a real checkpoint's adds {own_ref_unet / GB:.2f} GB)", flush=True)
    return groups


def select_groups(groups, keep):
    """The groups' jobs named in `keep` (--memory: plain vs 4 refs; --identities: IDENTITY_CASES)."""
    return [(g, [j for j in jobs if j.name in keep]) for g, jobs in groups if any(j.name in keep for j in jobs)]


# ---------------------------------------------------------------------------------------
# Report


def allocator_name():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") == str(MEMORY_MMAP_THRESHOLD):
        return "memory (every freed buffer handed back)"
    return "steady" if "MALLOC_TRIM_THRESHOLD_" in os.environ else "default"


def speed_bound(job, plain):
    """The case's ratio to the plain step if it did nothing but its counted arithmetic and every
    counted op ran at the speed that op had in the plain step (ops the plain step lacks: at its
    average speed). Above the FLOP ratio when the extra work leans on slower ops (CPU attention)."""
    seconds_per_flop = {op: plain.seconds_per_op[op] / flops for op, flops in plain.flops_per_op.items()
                        if flops and op in plain.seconds_per_op}
    plain_seconds = sum(plain.seconds_per_op[op] for op in seconds_per_flop)
    average = plain_seconds / sum(plain.flops_per_op[op] for op in seconds_per_flop)
    return sum(flops * seconds_per_flop.get(op, average) for op, flops in job.flops_per_op.items()) / plain_seconds


def report(groups, args):
    jobs = [job for _, group in groups for job in group]
    plain = next(job for job in jobs if job.name == "plain")
    base_cpu = statistics.median(plain.cpus)
    base_extra = statistics.median(plain.extra_bytes)
    print(f"\nmain latent {args.size}x{args.size} ({8 * args.size} px), refs {REFERENCE_LATENT}x{REFERENCE_LATENT}, "
          f"1 sample, fp32 CPU, {torch.get_num_threads()} thread(s), attention={args.attention}, "
          f"allocator={allocator_name()}, "
          f"median of {args.rounds} interleaved round(s)")
    base_user = statistics.median(plain.users)
    header = (f"{'case':44} {'cpu s':>7} {'x plain':>7} {'user s':>7} {'x plain':>7} {'GFLOP':>7} {'x plain':>7} "
              f"{'bound':>6} {'peak+ MB':>9} {'target':>10}  x plain per round (cpu)")
    print(header)
    print("-" * len(header))
    for job in jobs:
        cpu, user = statistics.median(job.cpus), statistics.median(job.users)
        extra = statistics.median(job.extra_bytes)
        gflop = job.flops / 1e9
        ratio = cpu / base_cpu
        target = ""
        if job.target is not None and args.size == 64:  # the targets are set at 512 px
            target = f"<={job.target:.1f} " + ("ok" if ratio <= job.target else "MISS")
        per_round = "/".join(f"{a / b:.2f}" for a, b in zip(job.cpus, plain.cpus))
        print(f"{job.label:44} {cpu:7.2f} {ratio:7.2f} {user:7.2f} {user / base_user:7.2f} {gflop:7.0f} "
              f"{job.flops / plain.flops:7.2f} {speed_bound(job, plain):6.2f} {extra / 2**20:9.0f} {target:>10}  "
              f"{per_round}")
    for job in jobs:
        if job.references:
            print(f"reference store, {job.references} ref(s): {job.stored_bytes / 2**20:.1f} MB per step, "
                  f"{job.stored_bytes / job.references / 2**20:.2f} MB per reference and step")
    store = next(job.store for job in jobs if job.store is not None)
    print(f"reference store limit {store.limit_bytes / 2**20:.0f} MB; held at the end: {store.nbytes / 2**20:.1f} MB "
          f"in {store.entries()} entries (hits {store.hits}, misses {store.misses})")
    walls = {job.name: statistics.median(job.walls) / statistics.median(job.cpus) for job in jobs}
    print(f"wall / cpu time per case: {min(walls.values()):.2f} .. {max(walls.values()):.2f} (1 = no waiting)")
    print("x plain: ratio to the plain CFG step in this run (cpu = process CPU time, robust to other load; "
          "user = its user-mode part, without the kernel's page-fault work for fresh tensor memory); "
          "GFLOP: conv/matmul/attention (torch.utils.flop_counter); bound: x plain if the case's FLOPs ran at "
          "the plain step's speed for each op (profiled) and nothing else took time; peak+: peak resident memory the call adds "
          "above the live set before it.")
    second_person_report(jobs, plain)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MEMORY_MMAP_THRESHOLD):
        print("peak+ depends on the allocator's free-memory reuse here; for memory figures use --memory.")
        return
    ff = next((job for job in jobs if job.name == "ff3_n4"), None)
    if ff is not None:
        extra = statistics.median(ff.extra_bytes)
        print(f"memory at {8 * args.size} px, 4 refs: FlashFace 3-way step peak +{extra / 2**20:.0f} MB vs plain "
              f"+{base_extra / 2**20:.0f} MB -> FlashFace needs {(extra - base_extra) / 2**20:.0f} MB more "
              "at its peak (weights not included)")


def second_person_report(jobs, plain):
    """What the second identity adds to a step, in plain steps of this run (per round, then median)."""
    by_name = {job.name: job for job in jobs}
    for phase in ("2", "3"):
        one, two = by_name.get(f"ff{phase}_n4"), by_name.get(f"ff{phase}_two")
        if one is None or two is None:
            continue
        added = [(b - a) / p for a, b, p in zip(one.cpus, two.cpus, plain.cpus)]
        print(f"second person, {phase}-way: adds {statistics.median(added):.3f} x plain "
              f"(per round {'/'.join(f'{a:.3f}' for a in added)}; FLOPs +{(two.flops - one.flops) / plain.flops:.3f}; "
              f"target <= {SECOND_IDENTITY_TARGET})")


def main():
    args = parse_args()
    MEMORY.trim = args.memory
    torch.set_num_threads(args.threads)
    host = bootstrap(args.attention)
    import comfy.ldm.modules.attention as attention

    print(f"ComfyUI attention: {attention.optimized_attention.__name__}; torch {torch.__version__}", flush=True)
    groups = build_cases(host, args.size)
    if args.memory:
        groups = select_groups(groups, {"plain", "ff2_n4", "ff3_n4"})
    elif args.identities:
        groups = select_groups(groups, IDENTITY_CASES)
    latent = torch.zeros(1, 4, args.size, args.size)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        for round_index in range(args.rounds + 1):
            mode = "count" if round_index == 0 else "time"  # warm-up round = FLOP count (same code paths)
            started = time.perf_counter()
            for guider, jobs in groups:
                run_jobs(guider, jobs, latent, mode)
            print(f"{'warm-up/FLOP' if mode == 'count' else 'timed'} round {round_index}: "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        plain_guider, plain_jobs = groups[0]
        run_jobs(plain_guider, [job for job in plain_jobs if job.name == "plain"], latent, "profile")  # for `bound`
    report(groups, args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the re-executed process (parse_args), before torch starts
    from repo_imports import use_repo_imports

    use_repo_imports()
    main()
