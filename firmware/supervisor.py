"""`kmsnode serve` with `[node] processes = N > 1`: N worker processes share the listeners.

Rules:
- Only with the shared store (PostgreSQL): the replay cache, COUNTERs, alarms and state are then
  one for all workers (config.load refuses N > 1 with SQLite, and a port 0, which would give each
  worker another port).
- Each worker is a whole node of its own (`kmsnode serve --worker I`): node id `<node_id>-w<I>`
  (its audit chain and its alarms' origin), its own audit log file `audit-w<I>.log` beside the
  configured one when the log is a file, the metrics port + I; the listeners are bound with
  SO_REUSEPORT, so the kernel spreads connections over the workers. The token is one.
- The supervisor prints the two listener lines once every worker listens, writes the runtime file
  (its own pid: `kmsnode keys|user` then talk to the node), restarts a worker that dies (not more
  than `MAX_RESTARTS` in `RESTART_WINDOW` seconds for one worker, then it stops the node: a
  worker that cannot live is a fault to look at, not to hide), and on SIGTERM/SIGINT stops every
  worker (SIGTERM, their grace period, then SIGKILL) and exits 0; SIGHUP goes on to every
  worker (each reloads its roles). Workers die with it
  (PR_SET_PDEATHSIG): no worker outlives a killed supervisor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from firmware.config import Config

log = logging.getLogger("kmsnode.supervisor")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
PR_SET_PDEATHSIG = 1


def worker_config(cfg: Config, index: int) -> Config:
    """The config worker `index` runs with (see the module rules)."""
    metrics = cfg.metrics_address
    if metrics:
        host, _, port = metrics.rpartition(":")
        metrics = f"{host}:{int(port) + index}" if int(port) else metrics
    log_path = cfg.audit_log.with_name(f"{cfg.audit_log.stem}-w{index}{cfg.audit_log.suffix}")
    return dataclasses.replace(
        cfg, node_id=f"{cfg.node_id}-w{index}", audit_log=log_path, metrics_address=metrics
    )


def die_with_parent() -> None:
    """In a worker: SIGTERM when the supervisor goes away, however it goes."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    def __init__(self, cfg: Config, config_path: Path) -> None:
        self.cfg, self.config_path = cfg, config_path
        self.workers: dict[int, subprocess.Popen[str]] = {}
        self.restarts: dict[int, list[float]] = {}
        self.stopping = threading.Event()
        self.failed = False
        self._lock = threading.Lock()

    def _spawn(self, index: int) -> tuple[str, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", "serve", "--config", str(self.config_path),
             "--worker", str(index)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        ue, li = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        if not ue.startswith("UE listener on") or not li.startswith("LI listener on"):
            proc.wait(timeout=30)
            raise RuntimeError(f"worker {index} did not start (exit {proc.returncode})")
        with self._lock:
            self.workers[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)
        return ue, li

    def run(self) -> int:
        lines = [self._spawn(i) for i in range(1, self.cfg.processes + 1)]
        ue, li = lines[0]
        self.cfg.runtime_file.write_text(
            json.dumps({"ue": ue.rsplit(" ", 1)[1], "li": li.rsplit(" ", 1)[1],
                        "pid": os.getpid()}) + "\n"
        )  # fmt: skip
        print(ue, flush=True)
        print(li, flush=True)
        for index in list(self.workers):
            threading.Thread(target=self._watch, args=(index,), daemon=True).start()
        self.stopping.wait()
        self._stop_all()
        self.cfg.runtime_file.unlink(missing_ok=True)
        return 1 if self.failed else 0

    def _watch(self, index: int) -> None:
        while not self.stopping.is_set():
            proc = self.workers[index]
            code = proc.wait()
            if self.stopping.is_set():
                return
            now = time.monotonic()
            recent = [t for t in self.restarts.get(index, []) if now - t < RESTART_WINDOW]
            log.error("worker %d (pid %d) exited with %s", index, proc.pid, code)
            if len(recent) >= MAX_RESTARTS:
                log.error("worker %d keeps dying: stopping the node", index)
                self.failed = True
                self.stopping.set()
                return
            self.restarts[index] = [*recent, now]
            try:
                self._spawn(index)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                log.error("worker %d could not be restarted: %s", index, exc)
                self.failed = True
                self.stopping.set()
                return

    def _stop_all(self) -> None:
        with self._lock:
            procs = list(self.workers.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.grace_period + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:  # reload roles: every worker re-reads [roles] itself
            with self._lock:
                for proc in self.workers.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGHUP)
            return
        log.info("signal %d: stopping every worker", signum)
        self.stopping.set()


def supervise(cfg: Config, config_path: Path, signals: Sequence[int]) -> int:
    supervisor = Supervisor(cfg, config_path)
    for sig in signals:
        signal.signal(sig, supervisor.on_signal)
    return supervisor.run()
