"""The runner over ComfyUI servers: N jobs on one server vs the same N on two (the portrait workflow at
64 px, 2 steps, random full-size models, CPU servers with one thread each), and what the runner adds
per job on top of the servers' own execution time.

    COMFYUI_PATH=/path/to/ComfyUI python bench/servers.py [--jobs 6]

Needs ~13 GB of RAM (two servers with fp16 weights). Both servers are warmed up first (models loaded,
one job each), so every timed job costs the same work on either: sampling, decoding, saving. Seeds
differ between the two runs, so no server answers from its cache.

Printed: wall time of `python -m flashface_runner` for each run (process start to exit), the sum of
the servers' execution time (execution_start to execution_success, from /history), the ratio of the
wall times, and the runner's overhead per job = (wall - busiest server's execution time) / its jobs:
process start, /object_info and the websocket, posting, following and downloading.
"""

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PORTRAIT = REPO / "workflows" / "FlashFace portrait.json"
SHRINK = ["--set", "15.width=64", "--set", "15.height=64", "--set", "17.width=64", "--set", "17.height=64",
          "--set", "18.steps=2"]


def run_batch(urls, seeds, output_dir):
    """Wall seconds of one runner process over these servers and seeds."""
    command = [sys.executable, "-m", "flashface_runner", str(PORTRAIT), *SHRINK, "--seeds", seeds,
               "--output-dir", str(output_dir), *[a for url in urls for a in ("--server", url)]]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"runner failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def execution_seconds(url, skip):
    """{prompt id: seconds the server spent executing it} for the prompts not in `skip`."""
    found = {}
    from support import comfy_servers

    for prompt_id, entry in comfy_servers.get_json(url + "/history").items():
        if prompt_id in skip:
            continue
        stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
        found[prompt_id] = (stamps["execution_success"] - stamps["execution_start"]) / 1000
    return found


def models_dir():
    from support import model_files

    cache = Path(os.environ.get("FLASHFACE_TEST_CACHE", tempfile.gettempdir()))
    found = cache / f"flashface_random_test_models_v{model_files.MODELS_VERSION}"
    if not (found / "flashface" / model_files.FLASHFACE_NAME).is_file():
        raise SystemExit(f"no random test models in {found}: run the host tests once (they build them)")
    return found


def main():
    from support import comfy_servers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    args = parser.parse_args()
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    models = models_dir()
    n = args.jobs
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            root = comfy_servers.base_directory(Path(tmp) / name, models=models)
            shutil.copytree(REPO / "workflows" / "inputs", root / "input")
            urls.append(stack.enter_context(comfy_servers.comfy_server(root, comfyui))[0])
        for i, url in enumerate(urls):  # warm-up: models loaded, references encoded
            run_batch([url], str(1000 + i), Path(tmp) / "warm")
        seen = {url: set(comfy_servers.get_json(url + "/history")) for url in urls}
        results = {}
        for label, used, seeds in (("1 server", urls[:1], f"1-{n}"), ("2 servers", urls, f"{n + 1}-{2 * n}")):
            wall = run_batch(used, seeds, Path(tmp) / label.replace(" ", "_"))
            busy = {url: execution_seconds(url, seen[url]) for url in used}
            for url in used:
                seen[url] |= set(busy[url])
            busiest = max(used, key=lambda url: sum(busy[url].values()))
            jobs = {url: len(busy[url]) for url in used}
            overhead = (wall - sum(busy[busiest].values())) / jobs[busiest]
            results[label] = wall
            print(f"{label}: {n} jobs in {wall:.1f} s wall; jobs per server {list(jobs.values())}; execution "
                  f"{sum(sum(b.values()) for b in busy.values()):.1f} s in all, "
                  f"{sum(busy[busiest].values()) / jobs[busiest]:.2f} s per job on the busiest; "
                  f"runner overhead {overhead:.2f} s per job")
        print(f"two servers / one server wall time: {results['2 servers'] / results['1 server']:.2f} "
              f"(ideal 0.50); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    from repo_imports import use_repo_imports

    use_repo_imports()
    main()
