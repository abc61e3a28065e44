"""Servers the runner must refuse before it queues anything (real ComfyUI servers without models, ~0.5 GB
each; no flock needed): one without this pack, one without the models the workflow names, one of
another version whose /object_info lacks an input. Each is named with the node, the exit status is
the documented one, and the servers' queues, histories and input folders stay empty."""

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support import comfy_servers

REPO = Path(__file__).resolve().parents[2]
PORTRAIT = REPO / "workflows" / "FlashFace portrait.json"


def run_runner(*args):
    done = subprocess.run([sys.executable, "-m", "flashface_runner", str(PORTRAIT), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def light_servers(tmp_path_factory):
    """{"pack": server with this pack and no models, "bare": server without this pack}: (url, root)."""
    import os

    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui or not (Path(comfyui) / "main.py").is_file():
        pytest.skip("COMFYUI_PATH is not set to a ComfyUI checkout: these tests start ComfyUI servers")
    with contextlib.ExitStack() as stack:
        found = {}
        for name, pack in (("pack", True), ("bare", False)):
            root = comfy_servers.base_directory(tmp_path_factory.mktemp(name), pack=pack)
            url, _ = stack.enter_context(comfy_servers.comfy_server(root, comfyui))
            found[name] = (url, root)
        yield found


def assert_untouched(url, root):
    assert comfy_servers.queue_of(url) == ([], []) and comfy_servers.get_json(url + "/history") == {}
    assert not any((root / "input").glob("*.jpg"))  # nothing uploaded either


def test_a_server_without_the_pack_is_named_once_with_its_nodes(light_servers):
    bare, root = light_servers["bare"]
    status, out, err = run_runner("--server", bare, "--server", bare + "/", "--seeds", "1-3")  # the same server twice
    assert status == 3 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: server {bare}: node #{n} {kind}: this server has no such node type (install the node "
                     "pack that provides it there, e.g. this FlashFace pack)"
                     for n, kind in ((3, "LoadFlashFace"), (11, "EncodeReferences"), (15, "FaceMask"),
                                     (16, "ApplyReferenceAttention"), (18, "FlashFaceSampler"))]
    assert "nothing was queued" in err
    assert_untouched(bare, root)


def test_missing_models_are_named_with_server_and_node(light_servers):
    url, root = light_servers["pack"]
    status, _, err = run_runner("--server", url, "--seeds", "1-3")
    assert status == 2, err
    assert (f"error: server {url}: missing model 'flashface.ckpt' (node #3 LoadFlashFace, input flashface_name): "
            "put it in the server's models/flashface folder, or --set 3.flashface_name=FILE") in err
    assert f"error: server {url}: missing model 'v1-5-pruned-emaonly.safetensors' (node #2 CheckpointLoaderSimple" in err
    assert_untouched(url, root)


@contextlib.contextmanager
def fake_server(object_info):
    """A loopback HTTP server answering GET /object_info with the given JSON (and 404 otherwise)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(object_info).encode() if self.path == "/object_info" else b"{}"
            self.send_response(200 if self.path == "/object_info" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_another_version_lacking_an_input_is_named(light_servers):
    url, _ = light_servers["pack"]
    info = comfy_servers.get_json(url + "/object_info")
    del info["LoadFlashFace"]["input"]["required"]["weight_dtype"]  # as if the server ran an older pack
    with fake_server(info) as older:
        status, _, err = run_runner("--server", older)
    assert status == 3, err
    assert (f"error: server {older}: node #3 LoadFlashFace: the workflow saved 2 widget values, its widgets here are "
            "1 ['flashface_name'] (this server runs another version of that node)") in err


def test_export_api_with_a_servers_schemas(light_servers, tmp_path):
    url, _ = light_servers["pack"]
    exported = tmp_path / "api.json"
    status, out, err = run_runner("--server", url, "--export-api", str(exported), "--set", "18.seed=5")
    assert status == 0, err
    prompt = json.loads(exported.read_text())
    assert prompt["18"]["inputs"]["seed"] == 5 and prompt["3"]["inputs"] == {
        "flashface_name": "flashface.ckpt", "weight_dtype": "default"}
    assert f"note: server {url}: missing model 'flashface.ckpt'" in err  # said, but the export is written
