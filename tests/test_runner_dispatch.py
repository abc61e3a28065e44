"""The runner's job dispatch over servers, against small fake ComfyUI servers on loopback ports that speak
the parts of ComfyUI's API the runner uses (/object_info, POST /prompt, /ws, /history, /view, /queue,
/interrupt) and run each prompt in a few milliseconds: jobs spread over the servers, a job's
validation or execution error reported with seed, server and node while the others go on, a server
that dies mid-batch handing its job to the other. The real servers' behaviour is checked in
tests/host/test_runner_servers.py."""

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from aiohttp import WSMsgType, web

from flashface_runner import __main__ as runner
from support.object_info import HAS_MODELS, object_info

PORTRAIT = "workflows/FlashFace portrait.json"

RUN_S = 0.05  # seconds one fake prompt takes
INVALID_SEED, FAILING_SEED = 13, 666


class FakeComfy:
    """One fake server in its own event-loop thread. `die_after`: jobs it finishes before it dies (stops
    listening and closes its websockets) while running the next."""

    def __init__(self, die_after=None, run_s=RUN_S):
        self.die_after, self.run_s, self.interrupted = die_after, run_s, []
        self.queue, self.history, self.sockets, self.images = [], {}, {}, {}
        self.running, self.dead = None, False
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.add_routes([web.get("/object_info", self.object_info), web.post("/prompt", self.post_prompt),
                        web.get("/ws", self.websocket), web.get("/history/{id}", self.get_history),
                        web.get("/view", self.view), web.get("/queue", self.get_queue),
                        web.post("/queue", self.post_queue), web.post("/interrupt", self.interrupt)])
        self.app_runner = web.AppRunner(app)
        self.loop.run_until_complete(self.app_runner.setup())
        self.site = web.TCPSite(self.app_runner, "127.0.0.1", 0)
        self.loop.run_until_complete(self.site.start())
        self.url = f"http://127.0.0.1:{self.site._server.sockets[0].getsockname()[1]}"
        self.worker = self.loop.create_task(self._work())
        self.ready.set()
        self.loop.run_forever()

    def stop(self):
        async def shutdown():
            self.worker.cancel()
            if not self.dead:
                await self.app_runner.cleanup()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def object_info(self, request):
        images = {"image": [f"flashface_man_{i}.jpg" for i in range(1, 5)]}
        return web.json_response(object_info(**{**HAS_MODELS, "LoadImage": images}))

    async def post_prompt(self, request):
        body = await request.json()
        seed = body["prompt"]["18"]["inputs"]["seed"]
        if seed == INVALID_SEED:
            return web.json_response({"error": {"message": "Prompt outputs failed validation", "details": ""},
                                      "node_errors": {"18": {"class_type": "FlashFaceSampler", "errors": [
                                          {"message": "Value not in list", "details": "sampler_name: 'x'"}]}}},
                                     status=400)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        self.queue.append((prompt_id, seed, body["client_id"]))
        return web.json_response({"prompt_id": prompt_id, "number": 0, "node_errors": {}})

    async def _send(self, client_id, kind, data):
        socket = self.sockets.get(client_id)
        if socket is not None and not socket.closed:
            await socket.send_str(json.dumps({"type": kind, "data": data}))

    async def _work(self):
        done = 0
        while True:
            await asyncio.sleep(0.005)
            if not self.queue:
                continue
            prompt_id, seed, client = self.running = self.queue.pop(0)
            if self.die_after is not None and done >= self.die_after:
                for socket in list(self.sockets.values()):
                    await socket.close()
                await self.app_runner.cleanup()  # stops listening and closes every connection, as a dead process
                self.dead = True
                return
            for step in (1, 2):
                await self._send(client, "progress", {"value": step, "max": 2, "prompt_id": prompt_id, "node": "18"})
                for _ in range(10):
                    if prompt_id not in self.interrupted:
                        await asyncio.sleep(self.run_s / 20)
            if prompt_id in self.interrupted:
                status = {"status_str": "error", "completed": False, "messages": [["execution_interrupted", {
                    "prompt_id": prompt_id, "node_id": "18", "node_type": "FlashFaceSampler"}]]}
                outputs = {}
            elif seed == FAILING_SEED:
                error = {"prompt_id": prompt_id, "node_id": "18", "node_type": "FlashFaceSampler",
                         "exception_type": "RuntimeError", "exception_message": "out of memory"}
                status = {"status_str": "error", "completed": False, "messages": [["execution_error", error]]}
                outputs = {}
            else:
                name = f"portrait_{done + 1:05}_.png"
                self.images[name] = f"png of seed {seed}".encode()
                status = {"status_str": "success", "completed": True, "messages": []}
                outputs = {"20": {"images": [{"filename": name, "subfolder": "FlashFace", "type": "output"}]}}
            self.history[prompt_id] = {"outputs": outputs, "status": status}
            self.running = None
            done += 1
            await self._send(client, "executing", {"node": None, "prompt_id": prompt_id})

    async def websocket(self, request):
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets[request.query["clientId"]] = socket
        async for message in socket:
            if message.type == WSMsgType.ERROR:
                break
        return socket

    async def get_history(self, request):
        prompt_id = request.match_info["id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        return web.Response(body=self.images[request.query["filename"]], content_type="image/png")

    async def get_queue(self, request):
        running = [[0, self.running[0]]] if self.running else []
        return web.json_response({"queue_running": running, "queue_pending": [[0, p[0]] for p in self.queue]})

    async def post_queue(self, request):
        delete = (await request.json()).get("delete", [])
        self.queue = [item for item in self.queue if item[0] not in delete]
        return web.Response()

    async def interrupt(self, request):
        prompt_id = (await request.json()).get("prompt_id")
        if self.running and self.running[0] == prompt_id:  # ComfyUI's targeted interrupt
            self.interrupted.append(prompt_id)
        return web.Response()


@pytest.fixture
def fakes():
    made = []

    def make(**kwargs):
        made.append(FakeComfy(**kwargs))
        return made[-1]

    yield make
    for fake in made:
        fake.stop()


def run(tmp_path, capsys, monkeypatch, *args):
    monkeypatch.chdir(runner.comfyui.PACK_DIR)
    status = runner.main([PORTRAIT, "--output-dir", str(tmp_path), *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_jobs_spread_over_servers_and_failures_name_seed_server_and_node(fakes, tmp_path, capsys, monkeypatch):
    a, b = fakes(), fakes()
    status, out, err = run(tmp_path, capsys, monkeypatch, "--server", a.url, "--server", b.url,
                           "--seeds", f"1-4,{INVALID_SEED},{FAILING_SEED}")
    assert status == runner.EXIT_STATUS["failed"]
    assert len(out) == 4
    saved = sorted(p.name for p in (tmp_path / "FlashFace").iterdir())
    assert saved == [f"portrait_seed{seed}.png" for seed in (1, 2, 3, 4)]
    assert all((tmp_path / "FlashFace" / f"portrait_seed{s}.png").read_bytes() == f"png of seed {s}".encode()
               for s in (1, 2, 3, 4))
    assert len(a.history) >= 2 and len(b.history) >= 2  # both served
    assert "4 of 6 jobs saved their images" in err
    lines = err.splitlines()
    [invalid] = [i for i, line in enumerate(lines) if line.startswith(f"  seed {INVALID_SEED} on http://127.0.0.1:")]
    assert lines[invalid].endswith(": Prompt outputs failed validation")
    assert lines[invalid + 1] == "  node #18 FlashFaceSampler: Value not in list: sampler_name: 'x'"
    assert (f"  seed {FAILING_SEED} on " in err and
            "node #18 FlashFaceSampler failed: RuntimeError: out of memory" in err)
    assert err.rstrip().endswith(f"--seeds {INVALID_SEED},{FAILING_SEED}")


def test_a_dying_server_hands_its_job_to_the_other(fakes, tmp_path, capsys, monkeypatch):
    a, b = fakes(die_after=1), fakes()
    status, out, err = run(tmp_path, capsys, monkeypatch, "--server", a.url, "--server", b.url, "--seeds", "1-6")
    assert status == 0, err
    assert f"server {a.url} stopped answering" in err
    assert len(a.history) == 1 and len(b.history) == 5
    assert sorted(p.name for p in (tmp_path / "FlashFace").iterdir()) == [f"portrait_seed{s}.png" for s in range(1, 7)]
    assert len(out) == 6


def test_every_server_dead_fails_the_rest_with_a_rerun(fakes, tmp_path, capsys, monkeypatch):
    a = fakes(die_after=2)
    status, _, err = run(tmp_path, capsys, monkeypatch, "--server", a.url, "--seeds", "1-5")
    assert status == runner.EXIT_STATUS["failed"]
    assert "2 of 5 jobs saved their images" in err
    assert "seed 3: not run: every server stopped answering" in err and err.rstrip().endswith("--seeds 3,4,5")


def test_ctrl_c_withdraws_only_this_batch(fakes, tmp_path):
    a, b = fakes(run_s=30), fakes(run_s=30)
    b.queue.append(("another-client-prompt", 99, "another-client"))  # b runs it first; it must stay
    process = subprocess.Popen([sys.executable, "-m", "flashface_runner", PORTRAIT, "--output-dir", str(tmp_path),
                                "--server", a.url, "--server", b.url, "--seeds", "1-4"],
                               cwd=runner.comfyui.PACK_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (a.running and len(b.queue) == 1) and time.monotonic() < deadline:  # a runs ours, b has ours queued
            time.sleep(0.02)
        assert a.running and b.running[0] == "another-client-prompt" and len(b.queue) == 1
        ours = [a.running[0], b.queue[0][0]]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == runner.EXIT_STATUS["interrupted"] == 130, err
    assert a.interrupted == [ours[0]] and b.interrupted == [] and b.queue == []  # b's queued one deleted
    assert b.running[0] == "another-client-prompt"  # the other client's prompt goes on
    assert "0 of 4 jobs saved their images" in err and err.rstrip().endswith("--seeds 1,2,3,4")
