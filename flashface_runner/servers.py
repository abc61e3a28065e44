"""A batch's jobs on running ComfyUI servers (server_client.py speaks to each): every server takes the
next job from one shared queue when it has finished its last, so no server idles while another holds
queued work; a server that dies gives its job back to the others; Ctrl-C withdraws this batch's
prompts from every server.
"""

import asyncio
import collections
import sys
import time

from .jobs import describe_seed_inputs, seed_inputs
from .server_client import Server, ServerError, import_aiohttp
from .server_schema import Problem, prepare_for_server


class JobPool:
    """Jobs waiting for a server. take() returns None only when no job waits and none is running
    (a running one may still come back, when its server dies)."""

    def __init__(self, jobs):
        self.waiting = collections.deque(jobs)
        self.running = 0
        self.changed = asyncio.Condition()

    async def take(self):
        async with self.changed:
            await self.changed.wait_for(lambda: self.waiting or not self.running)
            if not self.waiting:
                return None
            self.running += 1
            return self.waiting.popleft()

    async def finish(self, job, back=False):
        async with self.changed:
            self.running -= 1
            if back:
                self.waiting.appendleft(job)
            self.changed.notify_all()


async def _work(server, pool, output_dir, progress):
    while (job := await pool.take()) is not None:
        job.where, job.error, job.images = server.url, "", []
        progress.started(job, server.url)
        start = time.monotonic()
        try:
            await server.run(job, output_dir, progress)
        except ServerError as error:
            server.alive = False
            await pool.finish(job, back=True)
            job.where = ""
            progress.returned(server.url)
            progress.message(f"server {server.url} stopped answering ({error}): {job.name} goes to the other servers")
            return
        await pool.finish(job)
        progress.finished(job, time.monotonic() - start)


async def _run(urls, workflow, overrides, image_dirs, jobs, output_dir, make_progress, seeds_given):
    """(exit code, interrupted) after running `jobs` (results in each job) on the servers."""
    aiohttp = import_aiohttp()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        servers = [Server(url, session) for url in dict.fromkeys(url.rstrip("/") for url in urls)]
        found = await asyncio.gather(*(server.prepare(workflow, overrides, image_dirs) for server in servers))
        problems = [(server, problem) for server, found_here in zip(servers, found) for problem in found_here]
        if not problems and seeds_given:
            problems += [(server, Problem("seeds", "--seeds: the workflow has no seed input (a sampler's seed "
                                                   "or noise_seed widget) to set"))
                         for server in servers if not seed_inputs(server.prompt)]
        if not problems:
            for server in servers:
                try:
                    await server.connect()
                except ServerError as error:
                    problems.append((server, Problem("server", str(error))))
        if problems:
            for server, problem in problems:
                print(f"error: server {server.url}: {problem.text}", file=sys.stderr)
            print("nothing was queued; fix the server(s) above or leave them out (--server)", file=sys.stderr)
            await asyncio.gather(*(server.close() for server in servers))
            kinds = {problem.kind for _, problem in problems}
            return (3 if kinds & {"server", "node", "input"} else 2 if kinds & {"model", "image"} else 1), False
        first = servers[0]
        inputs = seed_inputs(first.prompt)
        progress = make_progress()
        if seeds_given:
            progress.message(f"{len(jobs)} jobs on {len(servers)} server(s); --seeds sets "
                             + describe_seed_inputs(first.prompt, inputs))
        pool = JobPool(jobs)
        workers = [asyncio.create_task(_work(server, pool, output_dir, progress)) for server in servers]
        interrupted = False
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task (3.11+ at once, 3.10 on its way out)
            interrupted = True
            if hasattr(asyncio.Task, "uncancel"):  # 3.11+: this task goes on after the cancel it absorbed
                asyncio.current_task().uncancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            progress.close()
            progress.message("interrupted: withdrawing this batch's prompts from the servers ...")
            left = await asyncio.gather(*(server.withdraw() for server in servers if server.alive),
                                        return_exceptions=True)
            for server, done in zip([s for s in servers if s.alive], left):
                if done is not True:
                    progress.message(f"server {server.url}: could not withdraw prompts {sorted(server.ours)}: {done}")
        finally:
            progress.close()
            await asyncio.gather(*(server.close() for server in servers), return_exceptions=True)
        for job in jobs:
            if not job.error and not job.images:
                job.error = "not run (interrupted)" if interrupted else "not run: every server stopped answering"
        return None, interrupted


async def _fetch_prompt(url, workflow, overrides):
    aiohttp = import_aiohttp()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
        server = Server(url, session)
        try:
            server.object_info = await server.get_json("/object_info")
        except ServerError as error:
            raise ServerError(f"server {server.url}: cannot reach it: {error}") from None
        prompt, problems, _ = prepare_for_server(workflow, server.object_info, overrides)
        if any(problem.kind == "node" for problem in problems):
            raise ServerError("\n".join(f"server {server.url}: {problem.text}" for problem in problems))
        for problem in problems:
            print(f"note: server {server.url}: {problem.text}", file=sys.stderr)
        return prompt


def fetch_prompt(url, workflow, overrides):
    """The API prompt converted with the server's /object_info (for --export-api); raises ServerError."""
    return asyncio.run(_fetch_prompt(url, workflow, overrides))


def run_on_servers(urls, workflow, overrides, image_dirs, jobs, output_dir, make_progress, seeds_given):
    """Blocking entry: (setup exit code or None, interrupted)."""
    try:
        return asyncio.run(_run(urls, workflow, overrides, image_dirs, jobs, output_dir, make_progress, seeds_given))
    except KeyboardInterrupt:  # Python 3.10: raised after asyncio.run cancelled _run, which withdrew the prompts
        return None, True
