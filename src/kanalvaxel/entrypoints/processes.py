"""Worker processes: `kanalvaxel worker --processes N` and `serve --processes N` run N workers as child
processes, so dispatching uses more than one core (each child is a whole worker: its threads, its print-batch
ticker and the embedded relay's deliveries; they share the work through the outbox's leases).

The parent starts what the children share — in the sandbox the simulators of FaR, the operators, SMTP and
SMS, and the migrations — and gives each child their addresses in its environment, so no child starts
simulators or migrates of its own. A child that dies is started again after a pause that doubles (1 s up to
60 s, back to 1 s once a child has run a minute); stopping sends SIGTERM to every child (each finishes what
it is sending) and SIGKILL to those still running after the grace period.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kanalvaxel.bootstrap import Container
from kanalvaxel.config import SANDBOX_SMS_TOKEN

log = logging.getLogger(__name__)

#: A child that ran at least this long before it died is restarted without delay growing further.
_STEADY_SECONDS = 60.0
_MAX_PAUSE_SECONDS = 60.0


def child_environment(container: Container) -> dict[str, str]:
    """What a child worker needs beyond the parent's own settings: the addresses of the simulators the parent
    runs (sandbox) and that it must not migrate or start simulators itself."""
    env = {"KANALVAXEL_DATABASE__MIGRATE_ON_START": "false", "KANALVAXEL_WORKER__PROCESSES": "1"}
    certs = container.settings.dev_certs_dir.resolve()
    dm = container.digital_mail
    if dm is not None and dm.world is not None:
        env["KANALVAXEL_MINA_MEDDELANDEN__FAR_URL"] = dm.world.far_url
    msg = container.messaging
    if msg is not None and msg.world is not None:
        world = msg.world
        if world.sink is not None:
            env["KANALVAXEL_EMAIL__SMTP_HOST"] = world.sink.host
            env["KANALVAXEL_EMAIL__SMTP_PORT"] = str(world.sink.port)
            env["KANALVAXEL_EMAIL__CA_BUNDLE"] = str(certs / "ca.pem")
        if world.sms_url is not None:
            env["KANALVAXEL_SMS__GATEWAY_URL"] = world.sms_url
            env["KANALVAXEL_SMS__TOKEN"] = SANDBOX_SMS_TOKEN
            env["KANALVAXEL_SMS__CA_BUNDLE"] = str(certs / "ca.pem")
    return env


#: Set in a child's environment: the pid of the parent it must not outlive.
PARENT_PID_VARIABLE = "_KANALVAXEL_WORKER_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def follow_parent() -> None:
    """In a child worker: stop (SIGTERM, handled as a clean stop) when the parent dies, even by SIGKILL, so no
    orphan worker stays on after it (Linux: PR_SET_PDEATHSIG). Nothing outside a child or off Linux."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the line above: stop now
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = 0.5  # doubled before each quick restart: the first waits 1 s
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class WorkerProcesses:
    """N child worker processes, kept running until `stop`."""

    count: int
    environment: Mapping[str, str]
    grace_seconds: float
    _children: list[_Child] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._children = [_Child(i) for i in range(self.count)]
        for child in self._children:
            self._spawn(child)
        self._thread = threading.Thread(target=self._supervise, name="worker-processes", daemon=True)
        self._thread.start()
        log.info("started %d worker processes", self.count)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [c.process.pid for c in self._children if c.process is not None]

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, **self.environment, PARENT_PID_VARIABLE: str(os.getpid())}
        child.process = subprocess.Popen(
            [sys.executable, "-m", "kanalvaxel.entrypoints.cli", "worker"],
            env=env,
        )
        child.started = time.monotonic()
        log.info("worker process %d started (pid %d)", child.slot, child.process.pid)

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                for child in self._children:
                    proc = child.process
                    if proc is not None and proc.poll() is not None:
                        ran = now - child.started
                        child.pause = (
                            1.0 if ran >= _STEADY_SECONDS else min(_MAX_PAUSE_SECONDS, child.pause * 2)
                        )
                        child.restart_at = now + child.pause
                        child.process = None
                        log.error(
                            "worker process %d (pid %d) ended with status %s after %.0f s; starting it again "
                            "in %.0f s",
                            child.slot,
                            proc.pid,
                            proc.returncode,
                            ran,
                            child.pause,
                        )
                    elif proc is None and now >= child.restart_at:
                        child.restarts += 1
                        self._spawn(child)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to every child; SIGKILL to those still running after `grace` seconds."""
        with self._lock:
            self._stop.set()
            running = [
                c.process for c in self._children if c.process is not None and c.process.poll() is None
            ]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (self.grace_seconds if grace is None else grace)
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("worker processes stopped")
