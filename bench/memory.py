"""Resident memory of LoadFlashFace -> ApplyReferenceAttention -> FlashFaceSampler, against the weights.

    COMFYUI_PATH=/path/to/ComfyUI python bench/memory.py [--runs 10] [--dtypes fp32 fp16 bf16]

Full-size random models (tests/support/model_files.py: an SD1.5 checkpoint and an official-layout
flashface.ckpt, built once into $FLASHFACE_TEST_CACHE). Each LoadFlashFace weight dtype runs in a
process of its own (peak RSS is per process): the SD1.5 U-Net is loaded as ComfyUI loads it on this
device, FlashFace with that weight dtype, then `--runs` times ApplyReferenceAttention (new reference
latents each time, as a user changing photos) and a 2-step FlashFaceSampler at 64x64 px. Reported:
the distinct weight bytes of both models (each storage counted once), peak RSS over all runs and its
excess over those weights, and the resident memory after the first and the last run.
"""

import argparse
import gc
import json
import resource
import subprocess
import sys

GB = 1024**3
EXCESS_GOAL = 1.5 * GB


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"])
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this dtype only
    return parser.parse_args()


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def distinct_bytes(tensors):
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def measure(dtype, runs):
    import torch

    from step_cost import bootstrap

    host = bootstrap("pytorch")
    torch.set_num_threads(1)
    import comfy.sd
    import folder_paths

    from support.model_files import FLASHFACE_NAME, SD15_NAME, cached_models_dir
    from support.paths import DATA

    models = cached_models_dir(DATA / "flashface_keys.tsv")
    folder_paths.add_model_folder_path("flashface", str(models / "flashface"))
    nodes = host.nodes
    before = resident_bytes()
    model = comfy.sd.load_checkpoint_guess_config(str(models / "checkpoints" / SD15_NAME), output_vae=False,
                                                  output_clip=False)[0]
    flashface = nodes.LoadFlashFace.execute(FLASHFACE_NAME, dtype).result[0]
    weights = flashface.weights
    tensors = [*model.model.state_dict().values(), *weights.converted_state_dict().values()]
    weight_bytes = distinct_bytes(tensors)
    generator = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]
    resident = []
    for run in range(runs):
        references = host.reference_set.ReferenceSet(torch.randn(4, 4, 28, 28, generator=generator), [1] * 4)
        patched = nodes.ApplyReferenceAttention.execute(model, flashface, references, negative,
                                                        reference_strength=1.2, strength_before_launch=0.85).result[0]
        nodes.FlashFaceSampler.execute(patched, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed=run,
                                       steps=2, text_cfg=7.5, reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5,
                                       sampler_name="flashface_ddim", scheduler="flashface_trailing")
        del patched
        gc.collect()
        resident.append(resident_bytes())
    return {"dtype": dtype, "before_models": before, "weights": weight_bytes, "peak": peak_bytes(),
            "resident_first": resident[0], "resident_last": resident[-1]}


def main():
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.runs)))
        return
    print(f"{'weight_dtype':>12} {'weights':>9} {'imports':>9} {'peak':>9} {'excess':>9} {'after run 1':>12} "
          f"{'after run ' + str(args.runs):>13}")
    ok = True
    for dtype in args.dtypes:
        out = subprocess.run([sys.executable, __file__, "--one", dtype, "--runs", str(args.runs)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        excess = r["peak"] - r["weights"] - r["before_models"]
        ok &= excess <= EXCESS_GOAL and r["resident_last"] <= r["resident_first"] * 1.01
        print(f"{dtype:>12} {r['weights'] / GB:8.2f}G {r['before_models'] / GB:8.2f}G {r['peak'] / GB:8.2f}G "
              f"{excess / GB:8.2f}G {r['resident_first'] / GB:11.2f}G {r['resident_last'] / GB:12.2f}G")
    print("excess = peak - distinct weights - resident before loading any model (Python, torch, ComfyUI); "
          f"goal <= {EXCESS_GOAL / GB:.1f} GB and no growth over the runs: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    from repo_imports import use_repo_imports

    use_repo_imports()
    main()
