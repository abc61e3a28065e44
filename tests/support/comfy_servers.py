"""Real ComfyUI servers for the runner's tests and bench/servers.py: `main.py --cpu --listen 127.0.0.1
--port P --base-directory DIR` with this pack linked into DIR/custom_nodes and, optionally, the
random test models linked into DIR/models. Always stopped by the context manager."""

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .paths import REPO, TORCHVISION_STUB as STUBS

START_S = 240  # import of ComfyUI and the pack on a loaded 2-core machine
# fp16 U-Net and FlashFace weights (ComfyUI casts to fp32 for CPU compute): ~half the memory of fp32.
SERVER_ARGS = ("--cpu", "--fp16-unet")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def base_directory(root, models=None, pack=True):
    """DIR with custom_nodes/ (this pack linked, or empty), models/ (links to the random models)."""
    root = Path(root)
    (root / "custom_nodes").mkdir(parents=True, exist_ok=True)
    if pack:
        (root / "custom_nodes" / "comfyui-flashface").symlink_to(REPO, target_is_directory=True)
    if models is not None:
        for folder in ("checkpoints", "flashface"):
            (root / "models" / folder).mkdir(parents=True, exist_ok=True)
            for model in (Path(models) / folder).iterdir():
                (root / "models" / folder / model.name).symlink_to(model)
    return root


def get_json(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url, data, timeout=30):
    request = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def comfyui_env():
    """The environment for a process that imports ComfyUI: one thread, torchvision's stub if it is absent."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchvision = importlib.util.find_spec("torchvision")  # the host fixture may have put the stub on sys.path
    if torchvision is None or STUBS in Path(torchvision.origin).parents:  # SD1.5 never calls it; ComfyUI imports it
        env["PYTHONPATH"] = os.pathsep.join([str(STUBS), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def comfy_server(root, comfyui_path, extra_args=()):
    """Yields (url, process) of a ComfyUI server on DIR (see base_directory); killed on exit."""
    port = free_port()
    env = comfyui_env()
    log_path = Path(root) / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "main.py", *SERVER_ARGS, *extra_args, "--listen", "127.0.0.1",
                                "--port", str(port), "--base-directory", str(root)],
                               cwd=comfyui_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                get_json(url + "/queue", timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ComfyUI did not start on {url}:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
        yield url, process
    finally:
        process.kill()
        process.wait()
        log.close()


def queue_of(url):
    """Prompt ids (running, pending) on the server."""
    queue = get_json(url + "/queue")
    return [item[1] for item in queue["queue_running"]], [item[1] for item in queue["queue_pending"]]
