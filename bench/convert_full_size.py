"""Full-size conversion benchmark: time and peak memory of loading and converting a FlashFace checkpoint.

A random checkpoint in the official layout (every key and shape of flashface_keys.tsv, ori_* aliases
sharing storage as in the real file; ~3.5 GB in fp16) is written by a separate process, evicted from
the page cache, then loaded and converted here. Temporary files are deleted at the end.

    OMP_NUM_THREADS=1 python bench/convert_full_size.py [--workdir DIR] [--source-dtype fp16|fp32] [--dtype fp16]
"""

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

def write_random_checkpoint(keys_tsv, path, dtype):
    from support.random_models import random_official_state_dict

    torch.save(random_official_state_dict(keys_tsv, dtype, aliases=True), path)


def evict_from_page_cache(path):
    """So the timings include reading from disk, not from the copy the writer left in memory."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


class PeakAnonymousMemory:
    """Samples RssAnon: unlike ru_maxrss it leaves out memory-mapped file pages, which the kernel can drop."""

    def __init__(self, interval=0.02):
        self.peak_kb, self.interval, self._stop = 0, interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            with open("/proc/self/status") as status:
                kb = next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
            self.peak_kb = max(self.peak_kb, kb)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak_kb


def timed(label, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    print(f"{label:<44} {time.perf_counter() - start:8.1f} s")
    return result


def main():
    from flashface_core.checkpoint import load_flashface
    from flashface_core.convert import DTYPES, save_converted, sha256_of
    from support.paths import DATA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary files go (default: system temp)"
    )
    parser.add_argument("--keys", type=Path, default=DATA / "flashface_keys.tsv")
    parser.add_argument("--source-dtype", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16", help="output dtype")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="flashface_bench_") as workdir:
        source, output = Path(workdir) / "flashface.ckpt", Path(workdir) / "flashface_sd15.safetensors"
        writer = multiprocessing.get_context("fork").Process(
            target=write_random_checkpoint, args=(args.keys, source, DTYPES[args.source_dtype])
        )
        timed("generate source (separate process)", lambda: (writer.start(), writer.join()))
        if writer.exitcode:
            sys.exit(f"generating the checkpoint failed (exit code {writer.exitcode})")
        evict_from_page_cache(source)
        print(f"source: {source.stat().st_size / 1e9:.2f} GB ({args.source_dtype}, torch zip)")

        baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sampler = PeakAnonymousMemory()
        weights = timed("load official (mmap + validate)", load_flashface, source)
        source_sha256 = timed("sha256 of source", sha256_of, source)
        evict_from_page_cache(source)  # the converter reads it again, cold
        timed(
            f"convert + write ({args.dtype})",
            save_converted,
            weights,
            output,
            source_sha256,
            dtype=DTYPES[args.dtype],
        )
        peak_kb, peak_anon_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sampler.stop()
        del weights
        evict_from_page_cache(output)
        converted = timed("load converted (mmap + validate)", load_flashface, output)
        timed(
            "read converted fully (sum of every tensor)",
            lambda: sum(t.sum().item() for t in converted.converted_state_dict().values()),
        )

        print(f"output: {output.stat().st_size / 1e9:.2f} GB, {converted.num_parameters():,} parameters")
        print(
            f"peak RSS during load + convert: {peak_kb / 2**20:.2f} GiB (before: {baseline_kb / 2**20:.2f} GiB; "
            "includes memory-mapped file pages)"
        )
        print(f"peak anonymous RSS during load + convert: {peak_anon_kb / 2**20:.2f} GiB (sampled every 20 ms)")


if __name__ == "__main__":
    from repo_imports import use_repo_imports

    use_repo_imports()
    main()
