"""``ftaas serve``'s process supervisor: the API and one Celery worker per queue group.

Why groups: a stage-1 alignment runs for hours on a CPU, so it gets its own worker; a quick
user job and an upload's screening never wait behind it. The groups (``SERVE_GROUPS``):

- ``training``: user fine-tuning jobs;
- ``alignment``: stage-1 alignments;
- ``screening``: upload screening plus the maintenance queue and the beat schedule that feeds
  the sweeper (both are light; exactly one beat runs per deployment).

Every child runs in its own process group (``start_new_session``) so a terminal's Ctrl-C reaches
only the supervisor, which then stops them in order. Stopping (SIGTERM or SIGINT to the
supervisor, or the API dying): SIGTERM to every child's process group, wait up to
``FTAAS_STOP_TIMEOUT_S`` in all, SIGKILL the groups still alive, reap. A training worker uses the
grace period to checkpoint and give its job back (a job not given back in time is resumed from
its last checkpoint by the sweeper).

Children dying on their own (choice, docs/operations.md): the API is the service, so its exit
stops everything and ``serve`` exits non-zero (a process manager restarts the whole unit). A worker
is restarted after a short back-off; one that dies ``MAX_RESTARTS`` times within
``RESTART_WINDOW_S`` is a crash loop, which also stops everything with a non-zero exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from core.queue import ALIGNMENT_QUEUE, MAINTENANCE_QUEUE, SCREENING_QUEUE, TRAINING_QUEUE

MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0
RESTART_BACKOFF_S = 2.0
POLL_S = 0.2


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    queues: tuple[str, ...]
    beat: bool = False


SERVE_GROUPS = (
    WorkerGroup("training", (TRAINING_QUEUE,)),
    WorkerGroup("alignment", (ALIGNMENT_QUEUE,)),
    WorkerGroup("screening", (SCREENING_QUEUE, MAINTENANCE_QUEUE), beat=True),
)


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "cli.main", "api", "--host", host, "--port", str(port)]


@dataclass
class Child:
    name: str
    argv: list[str]
    restart: bool
    proc: subprocess.Popen[bytes] | None = None
    deaths: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    def __init__(self, children: list[Child], *, stop_timeout_s: float) -> None:
        self.children = children
        self.stop_timeout_s = stop_timeout_s
        self._signal: int | None = None

    def say(self, text: str) -> None:
        print(f"[ftaas serve] {text}", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum

    def run(self) -> int:
        """Start every child and watch them; returns serve's exit status."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                child.start()
            return self._watch()
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self) -> int:
        while True:
            if self._signal is not None:
                self.say(f"{signal.Signals(self._signal).name} received: stopping every process.")
                return 0
            for child in self.children:
                if child.alive():
                    continue
                code = child.proc.returncode if child.proc is not None else None
                if not child.restart:
                    self.say(f"{child.name} exited ({code}): stopping everything.")
                    return 1
                if not self._may_restart(child):
                    self.say(
                        f"{child.name} died {MAX_RESTARTS} times in {RESTART_WINDOW_S:.0f} s "
                        f"(last exit {code}): stopping everything."
                    )
                    return 1
                self.say(f"{child.name} exited ({code}); restarting it.")
                if self._sleep(RESTART_BACKOFF_S):
                    child.start()
            time.sleep(POLL_S)

    def _may_restart(self, child: Child) -> bool:
        now = time.monotonic()
        child.deaths = [t for t in child.deaths if now - t < RESTART_WINDOW_S] + [now]
        return len(child.deaths) < MAX_RESTARTS

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless a stop signal arrives; True when it slept the whole time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._signal is not None:
                return False
            time.sleep(POLL_S)
        return True

    def stop_all(self) -> None:
        """SIGTERM every child's group, wait up to the stop timeout, SIGKILL what is left, reap.

        Groups are signalled even when their leader has exited: a worker's pool processes may
        outlive it."""
        started = [c for c in self.children if c.proc is not None]
        for child in started:
            signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and any(_group_alive(c.pid) for c in started):
            for child in started:
                child.alive()  # reaps an exited leader so its group can empty
            time.sleep(POLL_S)
        for child in started:
            if _group_alive(child.pid):
                self.say(f"{child.name} did not stop in {self.stop_timeout_s:.0f} s: SIGKILL.")
                signal_group(child.pid, signal.SIGKILL)
        for child in started:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _group_alive(pgid: int) -> bool:
    """Whether any process (not a zombie) is still in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    # No /proc (macOS): killpg(0) succeeding is the best answer there is.
    return not os.path.isdir("/proc")


def serve_children(host: str, port: int) -> list[Child]:
    from cli.main import _worker_argv  # the one place worker command lines are built

    children = [Child("api", api_command(host, port), restart=False)]
    for group in SERVE_GROUPS:
        argv = _worker_argv(group.queues, beat=group.beat)
        children.append(Child(f"{group.name} worker", argv, restart=True))
    return children
