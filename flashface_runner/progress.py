"""Progress over a batch: on a terminal one line rewritten in place (jobs done / total, each running
job's step, time left); otherwise one plain line per finished job. Messages go to stderr; the image
paths go to stdout (one per line, as a single run prints them)."""

import sys
import time


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total, stream=None, out=None, tty=None, clock=time.monotonic):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream or sys.stderr
        self.out = out or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.running = {}  # where -> (job, step, steps)
        self._line = False

    def started(self, job, where=""):
        self.running[where] = (job, 0, 0)
        self._draw()

    def step(self, where, value, steps):
        if where in self.running:
            self.running[where] = (self.running[where][0], value, steps)
            self._draw()

    def finished(self, job, seconds):
        self.running.pop(job.where, None)
        self.done += 1
        self.failed += bool(job.error)
        place = f" on {job.where}" if job.where else ""
        if job.error and self.total == 1:
            self.message(f"error: {f'server {job.where}: ' if job.where else ''}{job.error}")
        elif job.error:
            self.message(f"job {job.number}/{self.total} ({job.name}){place} failed: {job.error}")
        else:
            self._clear()
            for path in job.images:
                print(path, file=self.out, flush=True)
            if not self.tty and self.total > 1:
                left = self.time_left()
                self.message(f"job {job.number}/{self.total} ({job.name}){place} done in {seconds:.1f} s; "
                             f"{self.done}/{self.total} finished" + (f", about {_clock(left)} left" if left else ""))
        self._draw()

    def returned(self, where):
        """A job went back to the queue (its server died)."""
        self.running.pop(where, None)
        self._draw()

    def message(self, text):
        self._clear()
        print(text, file=self.stream, flush=True)
        self._draw()

    def time_left(self):
        """Seconds left at the batch's rate so far (all workers together); None before a job ends."""
        if not self.done or self.done >= self.total:
            return None
        return (self.clock() - self.start) / self.done * (self.total - self.done)

    def close(self):
        self._clear()

    def _draw(self):
        if not self.tty or self.total <= 0:
            return
        parts = [f"[{self.done}/{self.total}]"]
        for where, (job, value, steps) in self.running.items():
            at = f" on {where}" if where and len(self.running) > 1 else ""
            parts.append(f"{job.name}{at}: step {value}/{steps}" if steps else f"{job.name}{at}: starting")
        left = self.time_left()
        parts.append(f"{_clock(left)} left" if left is not None else "")
        self.stream.write("\r\x1b[K" + " · ".join(p for p in parts if p))
        self.stream.flush()
        self._line = True

    def _clear(self):
        if self._line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._line = False
