"""`python -m flashface_runner --server URL` against two real ComfyUI servers (`main.py --cpu --fp16-unet
--base-directory DIR`, this pack in DIR/custom_nodes, the random full-size models linked in), 64 px,
2 steps: the six images of an in-process batch, bit for bit, from both servers; the API prompt of
--export-api queued by a plain POST gives the same image; Ctrl-C withdraws this batch's prompts and
leaves another client's alone; a server killed mid-batch loses no image.

Each server holds ~6.4 GB of RAM (fp16 weights)."""

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import comfy_servers
from support import model_files

REPO = Path(__file__).resolve().parents[2]
PORTRAIT = REPO / "workflows" / "FlashFace portrait.json"
SHRINK = ["--set", "15.width=64", "--set", "15.height=64", "--set", "17.width=64", "--set", "17.height=64",
          "--set", "18.steps=2"]
SEEDS = range(1, 7)
RUN_S = 900  # a bounded wait for any runner process (first jobs load the models: ~1 min each)


def runner_command(*args):
    return [sys.executable, "-m", "flashface_runner", str(PORTRAIT), *SHRINK, *args]


def run_runner(*args):
    done = subprocess.run(runner_command(*args), cwd=REPO, capture_output=True, text=True, timeout=RUN_S,
                          env=comfy_servers.comfyui_env())
    return done.returncode, [REPO / line for line in done.stdout.splitlines()], done.stderr


def pixels(source):
    return np.asarray(Image.open(source if isinstance(source, Path) else io.BytesIO(source)))


def wait_for(condition, what, timeout_s=RUN_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def comfyui_path():
    import os

    path = os.environ.get("COMFYUI_PATH")
    if not path or not (Path(path) / "main.py").is_file():
        pytest.skip("COMFYUI_PATH is not set to a ComfyUI checkout: these tests start ComfyUI servers")
    return path


@pytest.fixture(scope="module")
def models(host, keys_tsv):
    return model_files.cached_models_dir(keys_tsv)


@pytest.fixture(scope="module")
def expected(comfyui_path, models, tmp_path_factory):
    """seed -> pixels of the in-process batch (before any server starts: one model set in memory at a time)."""
    out = tmp_path_factory.mktemp("in_process")
    status, paths, err = run_runner("--comfyui", comfyui_path, "--models-dir", str(models), "--output-dir", str(out),
                                    "--seeds", f"{SEEDS[0]}-{SEEDS[-1]}", "--", "--fp16-unet")
    assert status == 0, err
    return {seed: pixels(path) for seed, path in zip(SEEDS, paths)}


@pytest.fixture(scope="module")
def servers(expected, comfyui_path, models, tmp_path_factory):
    """Two servers: A without the example images in its input folder (the runner uploads them), B with them."""
    with contextlib.ExitStack() as stack:
        found = []
        for name in ("A", "B"):
            root = comfy_servers.base_directory(tmp_path_factory.mktemp(f"server_{name}"), models=models)
            if name == "B":
                shutil.copytree(REPO / "workflows" / "inputs", root / "input")
            url, process = stack.enter_context(comfy_servers.comfy_server(root, comfyui_path))
            found.append({"url": url, "process": process, "root": root})
        yield found


def server_args(servers):
    return [arg for server in servers for arg in ("--server", server["url"])]


def history(url):
    return comfy_servers.get_json(url + "/history")


def test_two_servers_make_the_in_process_images(servers, expected, tmp_path):
    status, paths, err = run_runner(*server_args(servers), "--seeds", "1-6", "--output-dir", str(tmp_path))
    assert status == 0, err
    assert "6 jobs on 2 server(s); --seeds sets #18 FlashFaceSampler.seed" in err
    assert sorted(p.name for p in paths) == [f"portrait_seed{seed}.png" for seed in SEEDS]
    for seed in SEEDS:
        assert np.array_equal(pixels(tmp_path / "FlashFace" / f"portrait_seed{seed}.png"), expected[seed]), seed
    for server in servers:  # both worked
        assert len(history(server["url"])) >= 1, server["url"]
    assert (servers[0]["root"] / "input" / "flashface_man_1.jpg").is_file()  # uploaded to A
    # the PNG bytes as the servers wrote them (their metadata: the prompt with the job's seed, the workflow)
    written = {path.read_bytes() for server in servers for path in (server["root"] / "output").rglob("*.png")}
    for seed in SEEDS:
        data = (tmp_path / "FlashFace" / f"portrait_seed{seed}.png").read_bytes()
        assert data in written
        info = Image.open(io.BytesIO(data)).info
        assert json.loads(info["prompt"])["18"]["inputs"]["seed"] == seed
        sampler = [n for n in json.loads(info["workflow"])["nodes"] if n["id"] == 18][0]
        assert sampler["widgets_values"][0] == seed and sampler["widgets_values"][2] == 2


def test_exported_api_prompt_queued_by_a_plain_post(servers, expected, comfyui_path, tmp_path):
    exported = tmp_path / "portrait_api.json"
    status, _, err = run_runner("--comfyui", comfyui_path, "--export-api", str(exported), "--set", "18.seed=1")
    assert status == 0, err
    prompt = json.loads(exported.read_text())
    assert prompt["18"]["inputs"]["seed"] == 1 and prompt["4"]["inputs"]["image"] == "flashface_man_1.jpg"
    url = servers[1]["url"]  # B has the example images
    prompt_id = comfy_servers.post_json(url + "/prompt", {"prompt": prompt})["prompt_id"]
    wait_for(lambda: prompt_id in history(url), "the exported prompt's result")
    entry = history(url)[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    [image] = [i for output in entry["outputs"].values() for i in output.get("images", []) if i["type"] == "output"]
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=60) as response:
        assert np.array_equal(pixels(response.read()), expected[1])


def test_ctrl_c_withdraws_this_batch_and_leaves_other_clients_prompts(servers, tmp_path):
    urls = [server["url"] for server in servers]
    before = {url: set(history(url)) for url in urls}
    log = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen(runner_command(*server_args(servers), "--seeds", "10-19", "--output-dir",
                                              str(tmp_path)), cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: all(comfy_servers.queue_of(url)[0] for url in urls), "a running job on both servers", 300)
        foreign = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                   "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
        other = comfy_servers.post_json(urls[1] + "/prompt", {"prompt": foreign, "client_id": "another-client"})
        assert other["prompt_id"] in comfy_servers.queue_of(urls[1])[1]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=180) == 130
    finally:
        process.kill()
        process.wait()
    for url in urls:  # nothing of the batch left; B then runs the other client's prompt
        wait_for(lambda: comfy_servers.queue_of(url) == ([], []), f"{url}'s queue to empty", 120)
    assert history(urls[1])[other["prompt_id"]]["status"]["status_str"] == "success"
    ours = {url: set(history(url)) - before[url] - {other["prompt_id"]} for url in urls}
    for url in urls:
        statuses = [entry["status"]["status_str"] for pid, entry in history(url).items() if pid in ours[url]]
        assert statuses and statuses[-1] == "error", (url, statuses)  # the running one was interrupted
    log.seek(0)
    err = log.read()
    assert "interrupted: withdrawing this batch's prompts" in err and "run just these again:" in err
    finished = sum(1 for line in err.splitlines() if line.startswith("job "))
    assert f"{finished} of 10 jobs saved their images" in err


def test_a_server_killed_mid_batch_loses_no_image(servers, tmp_path):
    a, b = servers
    done_on_a = len(history(a["url"]))
    log = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen(runner_command(*server_args(servers), "--seeds", "20-25", "--output-dir",
                                              str(tmp_path)), cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        wait_for(lambda: len(history(a["url"])) > done_on_a, "server A's first job", 300)
        a["process"].kill()
        out, _ = process.communicate(timeout=RUN_S)
    finally:
        process.kill()
        process.wait()
    log.seek(0)
    err = log.read()
    assert process.returncode == 0, err
    assert f"server {a['url']} stopped answering" in err
    assert sorted(Path(line).name for line in out.splitlines()) == [f"portrait_seed{s}.png" for s in range(20, 26)]
    assert all((tmp_path / "FlashFace" / f"portrait_seed{s}.png").is_file() for s in range(20, 26))
