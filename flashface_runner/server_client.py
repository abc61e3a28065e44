"""One ComfyUI server through ComfyUI's own HTTP API: /object_info (the workflow converted and checked
for this server), /upload/image, POST /prompt, the /ws websocket (progress, completion), /history and
/view (the PNGs as the server wrote them), /queue and /interrupt (withdrawing prompts on Ctrl-C).

aiohttp (a ComfyUI requirement) is imported only when a server is used.
"""

import asyncio
import copy
import json
import re
import time
import uuid
from pathlib import Path

from .comfyui import execution_message, shown_path, validation_message
from .jobs import job_prompt, seed_assignments, seed_inputs
from .server_schema import Problem, prepare_for_server
from .ui_format import set_widget_values

QUIET_S = 5.0  # with no websocket message for this long, ask /history and /queue (a message can be lost)
SETTLE_S = 0.2  # after the end of a prompt, its history entry follows within moments
WITHDRAW_S = 120.0  # Ctrl-C: how long to wait for this batch's prompts to leave a server (a loader cannot stop midway)
INTERRUPT_AGAIN_S = 5.0  # a node that does not check for interrupts (a loader) gets asked again
COUNTER = re.compile(r"_\d{5}_$")  # SaveImage's counter in a file name


class ServerError(Exception):
    """The server cannot be reached, closed the connection, or answered out of protocol."""


def import_aiohttp():
    try:
        import aiohttp
    except ImportError:
        raise ServerError("--server needs the aiohttp package (a ComfyUI requirement): pip install aiohttp") from None
    return aiohttp


class Server:
    """One ComfyUI server: its converted prompt, a websocket, and this batch's prompts on it."""

    def __init__(self, url, session):
        self.url = url.rstrip("/")
        self.session = session
        self.client_id = uuid.uuid4().hex
        self.prompt, self.workflow, self.object_info = None, None, None
        self.listeners = {}  # prompt id -> asyncio.Queue of its websocket messages (None: socket closed)
        self.ours = set()  # prompt ids of this batch queued here and not yet finished
        self.alive = True
        self._socket = None

    # --- HTTP -----------------------------------------------------------------------------------
    async def request(self, method, path, **kwargs):
        aiohttp = import_aiohttp()
        try:
            async with self.session.request(method, self.url + path, **kwargs) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise ServerError(f"{type(error).__name__}: {error}".rstrip(": ")) from error

    async def get_json(self, path):
        status, body = await self.request("GET", path)
        if status != 200:
            raise ServerError(f"GET {path} answered HTTP {status}")
        try:
            return json.loads(body)
        except ValueError:
            raise ServerError(f"GET {path} did not answer JSON (is this a ComfyUI server?)") from None

    # --- before any job -------------------------------------------------------------------------
    async def prepare(self, workflow, overrides, image_dirs):
        """Problems that keep this server from running the workflow ([] when it is ready); uploads the
        input images it lacks only when nothing else is wrong."""
        try:
            self.object_info = await self.get_json("/object_info")
        except ServerError as error:
            return [Problem("server", f"cannot reach it: {error}")]
        self.workflow = copy.deepcopy(workflow)
        self.prompt, problems, uploads = prepare_for_server(self.workflow, self.object_info, overrides)
        if problems:
            return problems
        set_widget_values(self.workflow, overrides, self.input_types_of)
        files = {}
        for node_id, name, image in uploads:
            local = next((Path(d) / image for d in image_dirs if (Path(d) / image).is_file()), None)
            if local is None:
                problems.append(Problem("image", f"input image {image!r} (node #{node_id} "
                                                 f"{self.prompt[node_id]['class_type']}, input {name}) is not on the "
                                                 f"server and not found here (looked in {', '.join(map(str, image_dirs))})"))
            files[(node_id, name)] = (image, local)
        return problems or await self._upload(files)

    def input_types_of(self, kind):
        return self.object_info[kind]["input"]

    async def _upload(self, files):
        aiohttp = import_aiohttp()
        for (node_id, name), (image, local) in files.items():
            subfolder, _, filename = image.rpartition("/")
            form = aiohttp.FormData()
            form.add_field("image", local.read_bytes(), filename=filename)
            form.add_field("subfolder", subfolder)
            form.add_field("type", "input")
            try:
                status, body = await self.request("POST", "/upload/image", data=form)
                if status != 200:
                    raise ServerError(f"POST /upload/image answered HTTP {status}")
            except ServerError as error:
                return [Problem("server", f"uploading {image!r} failed: {error}")]
            saved = json.loads(body)
            self.prompt[node_id]["inputs"][name] = "/".join(p for p in (saved.get("subfolder"), saved["name"]) if p)
        return []

    async def connect(self):
        aiohttp = import_aiohttp()
        try:
            self._socket = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}", heartbeat=30)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise ServerError(f"websocket: {type(error).__name__}: {error}") from error
        self._reader = asyncio.create_task(self._read_socket())

    async def _read_socket(self):
        aiohttp = import_aiohttp()
        try:
            async for message in self._socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary frames are previews
                event = json.loads(message.data)
                data = event.get("data") or {}
                queue = self.listeners.get(data.get("prompt_id"))
                if queue is not None:
                    queue.put_nowait(event)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            pass
        finally:
            for queue in self.listeners.values():
                queue.put_nowait(None)

    async def close(self):
        if self._socket is not None:
            await self._socket.close()
            self._reader.cancel()

    # --- one job --------------------------------------------------------------------------------
    async def run(self, job, output_dir, progress):
        """Queue the job here, follow it to its end and download its images (job.images, job.error).
        Raises ServerError when the server is gone (the job did not finish)."""
        inputs = seed_inputs(self.prompt)
        prompt = job_prompt(self.prompt, inputs, job.seed)
        workflow = copy.deepcopy(self.workflow)
        set_widget_values(workflow, seed_assignments(inputs, job.seed), self.input_types_of)
        prompt_id = str(uuid.uuid4())
        events = self.listeners[prompt_id] = asyncio.Queue()
        self.ours.add(prompt_id)  # before the POST: Ctrl-C during it still withdraws the prompt
        try:
            status, body = await self.request("POST", "/prompt", json={
                "prompt": prompt, "prompt_id": prompt_id, "client_id": self.client_id,
                "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
            if status == 400:  # ComfyUI's validation: the job's own problem, not the server's
                self.ours.discard(prompt_id)
                try:
                    answer = json.loads(body)
                except ValueError:
                    raise ServerError(f"POST /prompt answered HTTP 400 without JSON: {body[:200]!r}") from None
                job.error = validation_message(answer.get("error") or {}, answer.get("node_errors") or {})
                return
            if status != 200:
                raise ServerError(f"POST /prompt answered HTTP {status}: {body[:200]!r}")
            entry = await self._follow(prompt_id, events, progress)
            self.ours.discard(prompt_id)
            if entry["status"].get("status_str") != "success":
                job.error = execution_message(entry["status"].get("messages", []))
                return
            job.images = await self._download(entry["outputs"], job, output_dir)
            if not job.images:
                job.error = "the workflow saved no image (no SaveImage node?)"
        finally:
            self.listeners.pop(prompt_id, None)

    async def _follow(self, prompt_id, events, progress):
        """The prompt's /history entry once it has finished; progress from the websocket meanwhile."""
        wait = QUIET_S
        while True:
            try:
                event = await asyncio.wait_for(events.get(), wait)
            except asyncio.TimeoutError:
                event = "quiet"
            if event is None:  # the websocket closed: the server went away, or restarts
                wait = SETTLE_S
            elif isinstance(event, dict):
                kind, data = event.get("type"), event.get("data") or {}
                if kind == "progress":
                    progress.step(self.url, data.get("value", 0), data.get("max", 0))
                    continue
                finished = kind in ("execution_success", "execution_error", "execution_interrupted") or (
                    kind == "executing" and data.get("node") is None)
                if not finished:
                    continue
                wait = SETTLE_S
            history = await self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status") and entry["status"].get("completed") is not None:
                return entry
            if event == "quiet" or event is None:
                queue = await self.get_json("/queue")
                listed = [item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])]
                if prompt_id not in listed and prompt_id not in await self.get_json(f"/history/{prompt_id}"):
                    raise ServerError("the server lost the prompt (restarted?)")
                if event is None:
                    wait = QUIET_S

    async def _download(self, outputs, job, output_dir):
        paths = []
        for node_output in outputs.values():
            for image in node_output.get("images", []):
                if image.get("type") != "output":
                    continue  # previews
                status, data = await self.request("GET", "/view", params={
                    "filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"})
                if status != 200:
                    raise ServerError(f"GET /view {image['filename']} answered HTTP {status}")
                path = local_image_path(output_dir, image.get("subfolder", ""), image["filename"], job.seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                paths.append(shown_path(path))
        return paths

    # --- Ctrl-C -----------------------------------------------------------------------------------
    async def withdraw(self):
        """Remove this batch's queued prompts and interrupt its running one; True once none is left."""
        deadline = time.monotonic() + WITHDRAW_S
        asked = {}  # prompt id -> when /interrupt was last sent for it
        while self.ours and time.monotonic() < deadline:
            await self.request("POST", "/queue", json={"delete": sorted(self.ours)})
            queue = await self.get_json("/queue")
            running = [item[1] for item in queue.get("queue_running", []) if item[1] in self.ours]
            pending = [item[1] for item in queue.get("queue_pending", []) if item[1] in self.ours]
            for prompt_id in running:  # only ours: another client's running prompt goes on
                if time.monotonic() - asked.get(prompt_id, -INTERRUPT_AGAIN_S) >= INTERRUPT_AGAIN_S:
                    await self.request("POST", "/interrupt", json={"prompt_id": prompt_id})
                    asked[prompt_id] = time.monotonic()
            if not running and not pending:
                self.ours.clear()
            else:
                await asyncio.sleep(SETTLE_S)
        return not self.ours


def local_image_path(output_dir, subfolder, filename, seed):
    """output_dir/subfolder/<prefix>_seed<seed>.png (SaveImage's counter replaced: servers count apart),
    numbered on when that name is taken; the server's name when the job has no seed."""
    folder = Path(output_dir) / subfolder
    stem, suffix = Path(filename).stem, Path(filename).suffix
    if seed is not None:
        stem = f"{COUNTER.sub('', stem)}_seed{seed}"
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}_{n}{suffix}"
    return path
