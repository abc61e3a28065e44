"""The shipped workflows in ComfyUI's real frontend (optional; needs COMFYUI_PATH, the playwright
package and a system Chromium — skipped with the reason when one is missing).

A ComfyUI server on a loopback port loads this pack (through extra_model_paths.yaml) and the random
full-size test models; headless Chromium opens every workflow and checks: no missing-node dialog,
no console error, the saved zoom (>= 0.6) with every node on screen, every "Read me" note's text
inside its box, each workflow listed in the template browser with its thumbnail, the missing-model
dialog naming the FlashFace file while it is absent, and one workflow queued from the Run button
(shrunk to 64 px, 2 steps) finishing without an error. With FLASHFACE_SCREENSHOTS=DIR it saves each
workflow as it opened to DIR/<name>.png (the README's picture is the portrait's).

    pip install playwright && apt-get install chromium   # no `playwright install` needed
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from support import model_files
from support.paths import REPO, TORCHVISION_STUB, WORKFLOW_DIR, WORKFLOWS
PACK_FOLDER = "comfyui-flashface"  # the custom_nodes folder name the template browser groups by
VIEW = {"width": 1280, "height": 800}  # the window; its graph canvas is 1240x760
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S, RUN_S = 180, 900
# The loader types frontend 1.27.10 maps model folders to; with one absent (UpscaleModelLoader when
# torchvision is stubbed: spandrel fails to import) it cannot build any loader node.
FRONTEND_LOADERS = ("CheckpointLoaderSimple", "ImageOnlyCheckpointLoader", "LoraLoader", "LoraLoaderModelOnly",
                    "VAELoader", "ControlNetLoader", "UNETLoader", "UpscaleModelLoader", "StyleModelLoader",
                    "GLIGENLoader")


def _chromium():
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(keys_tsv, tmp_path_factory):
    """ComfyUI's main.py with the pack and the random models."""
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui or not (Path(comfyui) / "main.py").is_file():
        pytest.skip("COMFYUI_PATH is not set to a ComfyUI checkout: the browser test starts its server")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    if _chromium() is None:
        pytest.skip("no system Chromium found (apt-get install chromium, or set CHROMIUM)")
    cache = model_files.cached_models_dir(keys_tsv)
    root = tmp_path_factory.mktemp("frontend")
    for folder in ("custom_nodes", "user", "output"):
        (root / folder).mkdir()
    (root / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    # Every file a workflow declares: its checkpoints are the random SD1.5 (e.g. the example "your
    # checkpoint" of "FlashFace any SD1.5 checkpoint"), its FlashFace file the random FlashFace.
    sources = {"checkpoints": cache / "checkpoints" / model_files.SD15_NAME,
               "flashface": cache / "flashface" / model_files.FLASHFACE_NAME}
    declared = {(model["directory"], model["name"]) for path in WORKFLOW_DIR.glob("*.json")
                for node in json.loads(path.read_text())["nodes"] for model in node.get("properties", {}).get("models", [])}
    for folder, name in declared | {("checkpoints", model_files.SD15_NAME), ("flashface", model_files.FLASHFACE_NAME)}:
        if folder not in sources:  # another pack's model (its workflow is skipped: the server lacks the pack)
            continue
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        (root / "models" / folder / name).symlink_to(sources[folder])
    shutil.copytree(WORKFLOW_DIR / "inputs", root / "input")
    (root / "extra_model_paths.yaml").write_text(
        f"flashface_test:\n  base_path: {root}\n  custom_nodes: custom_nodes\n"
        "  checkpoints: models/checkpoints\n  flashface: models/flashface\n")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchvision = importlib.util.find_spec("torchvision")  # the host fixture may have put the stub on sys.path
    if torchvision is None or TORCHVISION_STUB in Path(torchvision.origin).parents:  # ComfyUI imports it only
        env["PYTHONPATH"] = os.pathsep.join([str(TORCHVISION_STUB), env.get("PYTHONPATH", "")])
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--fp16-unet", "--listen", "127.0.0.1", "--port", str(port),
         "--extra-model-paths-config", str(root / "extra_model_paths.yaml"), "--input-directory",
         str(root / "input"), "--output-directory", str(root / "output"), "--user-directory", str(root / "user")],
        cwd=comfyui, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + SERVER_START_S
    while True:
        try:
            urllib.request.urlopen(url + "/object_info/LoadFlashFace", timeout=5).read()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                process.wait()
                pytest.fail("ComfyUI did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(1)
    known = json.loads(urllib.request.urlopen(url + "/object_info", timeout=60).read())
    absent = [kind for kind in FRONTEND_LOADERS if kind not in known]
    if absent:
        process.kill()
        process.wait()
        pytest.skip(f"this ComfyUI lacks {absent} (their node files failed to import; torchvision missing?): "
                    "the frontend cannot build loader nodes without them; install ComfyUI's requirements")
    # A new user's first visit opens the template browser (this user has seen it), and a new tab
    # reopens the last workflow (each test opens its own).
    for setting, value in (("Comfy.TutorialCompleted", b"true"), ("Comfy.Workflow.Persist", b"false")):
        request = urllib.request.Request(f"{url}/settings/{setting}", data=value, method="POST")
        urllib.request.urlopen(request, timeout=10).read()
    yield {"url": url, "root": root, "node_types": set(known)}
    process.kill()
    process.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        user_data = server["root"] / "chromium-profile"
        context = playwright.chromium.launch_persistent_context(
            str(user_data), executable_path=_chromium(), args=CHROMIUM_FLAGS, viewport=VIEW, headless=True)
        yield context
        context.close()


# Requests the frontend makes at start-up whatever is opened, answered late on a loaded machine: a fresh
# user's absent template file, and the release check (no internet here).
STARTUP_REQUESTS = ("/api/userdata/comfy.templates.json", "https://api.comfy.org/releases")


def _startup_request(url):
    return any(request in url for request in STARTUP_REQUESTS)


@pytest.fixture
def page(browser, server):
    """A fresh tab on the UI with its console errors collected (page.errors)."""
    page = browser.new_page()
    page.errors = []
    page.on("console", lambda message: message.type == "error" and not _startup_request(message.location.get("url", ""))
            and page.errors.append(f"{message.text} ({message.location.get('url', '')})"))
    page.on("pageerror", lambda error: page.errors.append(f"{error}: {error.stack}"))
    page.goto(server["url"])
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
    # Start-up requests (settings, model lists, a fresh user's absent user.css -> 404) are done
    # before the checks: only what opening a workflow logs counts.
    page.wait_for_load_state("networkidle")
    page.errors.clear()
    yield page
    page.close()


def open_workflow(page, workflow):
    """Load the workflow as opening its file does (missing-node/-model checks, saved view)."""
    page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, 'test'); }", workflow)
    page.wait_for_timeout(1500)  # DOM widgets (the notes) are placed on the next frames


def load(name):
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def dialog_text(page):
    return " | ".join(page.locator(".p-dialog").all_inner_texts())


def test_missing_flashface_file_is_named_on_open(page):
    """The server's model folders change only by restarting it, so the absent file is one the
    workflow names that no folder has (its loader widget and properties.models renamed alike)."""
    workflow = load("FlashFace portrait")
    for node in workflow["nodes"]:
        if node["type"] == "LoadFlashFace":
            node["widgets_values"][0] = node["properties"]["models"][0]["name"] = "flashface_absent.ckpt"
    open_workflow(page, workflow)
    text = dialog_text(page)
    assert "flashface / flashface_absent.ckpt" in text, text
    assert model_files.SD15_NAME not in text  # present models are not listed


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_readable(page, server, name):
    absent = sorted({node["type"] for node in load(name)["nodes"]} - server["node_types"] - {"MarkdownNote", "Note"})
    if absent:
        pytest.skip(f"{name} needs nodes of a pack this server does not load ({', '.join(absent)}); its Read me names it")
    open_workflow(page, load(name))
    assert dialog_text(page) == "", f"a dialog opened: {dialog_text(page)}"
    if os.environ.get("FLASHFACE_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["FLASHFACE_SCREENSHOTS"]) / f"{name}.png"))
    view = page.evaluate("""() => {
        const canvas = window.app.canvas, ds = canvas.ds;
        const nodes = window.app.graph._nodes.map((n) => {
            const title = window.LiteGraph ? window.LiteGraph.NODE_TITLE_HEIGHT : 30;
            return {id: n.id, type: n.type,
                    left: (n.pos[0] + ds.offset[0]) * ds.scale, top: (n.pos[1] - title + ds.offset[1]) * ds.scale,
                    right: (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale,
                    bottom: (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale};
        });
        // A note's text is a rich-text editor inside a fixed-size box: it fits when the editor's
        // content is no taller than the box.
        const notes = [...document.querySelectorAll('.comfy-markdown')]
            .filter((el) => el.offsetParent !== null)
            .map((el) => ({content: (el.querySelector('.tiptap') || el).scrollHeight, box: el.clientHeight,
                           text: el.innerText.slice(0, 30)}));
        return {scale: ds.scale, width: canvas.canvas.clientWidth, height: canvas.canvas.clientHeight, nodes, notes};
    }""")
    assert view["scale"] >= 0.6
    for node in view["nodes"]:
        inside = node["left"] >= 0 and node["top"] >= 0 and node["right"] <= view["width"] \
            and node["bottom"] <= view["height"]
        assert inside, (name, node, view["width"], view["height"])
    assert view["notes"], "no Read me note found on the page"
    for note in view["notes"]:
        assert note["content"] <= note["box"], (name, "note text overflows its box", note)
    assert page.errors == [], page.errors


def test_every_workflow_is_a_template_with_its_thumbnail(page):
    listed = page.evaluate("() => window.app.api.getWorkflowTemplates()")
    assert sorted(listed.get(PACK_FOLDER, [])) == WORKFLOWS
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    # locales/en/main.json names the category; the frontend titles the cards by file name.
    page.locator(".p-dialog").get_by_text("FlashFace", exact=True).first.click()
    for name in WORKFLOWS:
        card = page.locator(f'[data-testid="template-workflow-{name}"]')
        card.wait_for(timeout=30_000)
        card.scroll_into_view_if_needed()  # thumbnails load when their card is in view
        title = card.locator("h3")  # clamped to two lines
        assert title.inner_text() == name
        assert title.evaluate("(h) => h.scrollHeight <= h.clientHeight"), f"{name!r}: title cut off on its card"
        image = card.locator("img").first
        page.wait_for_function("(img) => img.src && img.complete && img.naturalWidth > 0",
                               arg=image.element_handle(), timeout=30_000)
        shown = image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
        assert tuple(shown) == Image.open(WORKFLOW_DIR / f"{name}.jpg").size, name  # our thumbnail


def test_run_button_finishes_a_shrunk_workflow(page, server):
    open_workflow(page, load("FlashFace character made real"))
    page.evaluate("""() => {
        window.__runEvents = [];
        for (const kind of ['execution_success', 'execution_error', 'execution_interrupted'])
            window.app.api.addEventListener(kind, (e) => window.__runEvents.push({kind, detail: e.detail}));
        for (const node of window.app.graph._nodes)
            for (const widget of node.widgets || []) {
                if (['width', 'height'].includes(widget.name)) widget.value = 64;
                if (widget.name === 'steps') widget.value = 2;
            }
    }""")
    page.locator('[data-testid="queue-button"]').first.click()
    # Finished, or refused before running (an invalid prompt opens an error dialog instead).
    page.wait_for_function("() => window.__runEvents.length > 0 || document.querySelector('.p-dialog')",
                           timeout=RUN_S * 1000)
    assert dialog_text(page) == "", dialog_text(page)
    events = page.evaluate("() => window.__runEvents")
    assert [event["kind"] for event in events] == ["execution_success"], events
    assert list((server["root"] / "output").rglob("*.png")), "the run saved no image"
    assert page.errors == [], page.errors
