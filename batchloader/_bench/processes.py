"""Fresh processes for measurements, and the memory they use.

A measurement runs in a process forked from one *measurement server* (the
default: the server imported torch once, and importing torch costs seconds
here) or in a newly started interpreter (``exec_each``). Either way the
process runs ``python -m batchloader._bench.measure``'s code, and a sampler
thread here reads its memory and its workers' from outside, at its
``#phase`` markers and every second between them: the measured process does
no work for it, though each read costs ~3 ms of kernel time per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil

from .measure import Spec

__all__ = ["MEMORY_KEYS", "Measurer", "measure_env"]

# A measurement that takes longer than this is hung; its process tree is killed.
_RUN_TIMEOUT_S = 300.0
# How often the sampler reads the measured processes' memory between the markers:
# one read costs ~3 ms of CPU per torch-sized process, taken from the workers' cores.
_MEMORY_INTERVAL_S = 1.0
MEMORY_KEYS = ("mem_main_uss", "mem_main_pss", "mem_workers_uss", "mem_workers_pss")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def measure_env() -> dict[str, str]:
    """The measured processes' environment, the same for both loaders.

    ``OMP_WAIT_POLICY=PASSIVE``: an OpenMP thread that finished a parallel
    region sleeps instead of spinning, so it does not steal a core from the
    workers. ``OMP_NUM_THREADS`` is left alone: both loaders already run their
    workers' torch single-threaded, and in the main process the user's default
    is what a user gets (see docs/performance.md for the measurement).
    """
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


# --- memory ------------------------------------------------------------------------------------


def _memory(pid: int) -> tuple[int, int]:
    """A process's (USS, PSS) in bytes: private pages, and pages divided among sharers.

    Reads ``smaps_rollup`` directly: on a torch-sized process it costs half of
    what psutil's ``memory_full_info`` does, and the sampler runs beside a
    measurement. Falls back to psutil where the file does not exist.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pairs = (line.partition(":") for line in f)
            fields = {key: value for key, _, value in pairs if key.isidentifier()}
    except FileNotFoundError:
        info = psutil.Process(pid).memory_full_info()
        return info.uss, info.pss

    def kib(name: str) -> int:
        return int(fields.get(name, "0 kB").split()[0]) * 1024

    return kib("Private_Clean") + kib("Private_Dirty") + kib("Private_Hugetlb"), kib("Pss")


def _machine_busy_s() -> float:
    """CPU seconds all processes on this machine have used (stolen time included)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def _tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of a process, of its reaped children and of its live ones."""
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        total += child_times.user + child_times.system
    return total


class _Sampler(threading.Thread):
    """Watches a measured process and its workers while ``active`` is set.

    Keeps the peaks of the main process's USS and PSS and of the sums over its
    children (the workers). USS is what the table shows: a page shared with
    the workers, the server or the page cache is nobody's private memory.
    Also counts the CPU that *other* processes used during the phase, in
    cores: on a shared machine it says how far to trust the timings.
    """

    def __init__(self) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.pid: int | None = None
        self.active = threading.Event()
        self.stopped = threading.Event()
        self.peaks = dict.fromkeys(MEMORY_KEYS, 0)
        self._cpu_start: tuple[float, float] | None = None
        self.others_cores: float | None = None

    def run(self) -> None:
        while not self.stopped.wait(_MEMORY_INTERVAL_S):
            if self.active.is_set():
                self.sample()

    def sample(self) -> None:
        if self.pid is None:
            return
        try:
            main = _memory(self.pid)
            workers = [_memory(c.pid) for c in psutil.Process(self.pid).children(recursive=True)]
        except (psutil.Error, OSError, ValueError):
            return  # a process exited between listing and reading
        values = (main[0], main[1], sum(w[0] for w in workers), sum(w[1] for w in workers))
        for key, value in zip(MEMORY_KEYS, values, strict=True):
            self.peaks[key] = max(self.peaks[key], value)

    @staticmethod
    def _others_cpu_s(pid: int) -> float:
        """Machine CPU seconds not used by the measured tree or by this runner."""
        runner = psutil.Process().cpu_times()  # this process alone: the tree is its descendant
        ours = _tree_cpu_s(psutil.Process(pid)) + runner.user + runner.system
        return _machine_busy_s() - ours

    def start_phase(self) -> None:
        if self.pid is None:
            return
        self.sample()  # at least one sample, however short the phase
        try:
            self._cpu_start = (time.monotonic(), self._others_cpu_s(self.pid))
        except (psutil.Error, OSError):
            self._cpu_start = None
        self.active.set()

    def end_phase(self) -> None:
        self.active.clear()
        self.sample()
        if self._cpu_start is None or self.pid is None:
            return
        try:
            others = self._others_cpu_s(self.pid) - self._cpu_start[1]
        except (psutil.Error, OSError):
            return
        elapsed = time.monotonic() - self._cpu_start[0]
        self.others_cores = max(0.0, others / elapsed) if elapsed > 0 else None

    def result(self) -> dict[str, Any]:
        self.stopped.set()
        return {**self.peaks, "others_cpu_cores": self.others_cores}


# --- processes ---------------------------------------------------------------------------------


def _kill_tree(pid: int) -> None:
    try:
        process = psutil.Process(pid)
        for child in [*process.children(recursive=True), process]:
            child.kill()
    except psutil.Error:
        pass


def _pipe(stream: IO[str] | None) -> IO[str]:
    """A pipe of a process that ``Measurer._start`` started (its stdin and stdout are piped)."""
    if stream is None:
        raise RuntimeError("[INTERNAL ERROR] the measurement process has no pipe")
    return stream


def _read_session(lines: Iterator[str], sampler: _Sampler) -> dict[str, Any]:
    """Reads one measurement's output up to its result line (or its end)."""
    result: dict[str, Any] = {"ok": False, "error": "the measurement printed no result"}
    for line in lines:
        match line.split():
            case ["#pid", pid]:
                sampler.pid = int(pid)
            case ["#phase", "load"]:
                sampler.start_phase()
            case ["#phase", "sample"]:
                sampler.sample()
            case ["#phase", "end"]:
                sampler.end_phase()
            case ["#exit", code]:
                if not result["ok"]:
                    result["error"] += f" (exit code {code})"
                break
            case _ if line.startswith("{"):
                result = json.loads(line)
                if not isinstance(result, dict):
                    raise RuntimeError(f"[INTERNAL ERROR] measurement printed {line!r}")
    return result


class Measurer:
    """Runs specs in fresh processes: forked from one server, or exec'd each."""

    def __init__(self, exec_each: bool):
        self._exec_each = exec_each
        self._server: subprocess.Popen[str] | None = None

    def _start(self, args: list[str]) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "batchloader._bench.measure", *args]
        return subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=measure_env()
        )

    def run(self, spec: Spec) -> dict[str, Any]:
        """Measures one spec in a fresh process; the result carries its memory peaks."""
        sampler = _Sampler()
        sampler.start()
        try:
            if self._exec_each:
                result = self._run_exec(spec, sampler)
            else:
                result = self._run_forked(spec, sampler)
        finally:
            peaks = sampler.result()
        return {**result, **peaks}

    def _run_exec(self, spec: Spec, sampler: _Sampler) -> dict[str, Any]:
        process = self._start([spec.to_json()])
        watchdog = threading.Timer(_RUN_TIMEOUT_S, _kill_tree, (process.pid,))
        watchdog.start()
        try:
            return _read_session(iter(_pipe(process.stdout).readline, ""), sampler)
        finally:
            watchdog.cancel()
            process.wait()

    def _run_forked(self, spec: Spec, sampler: _Sampler) -> dict[str, Any]:
        server = self._ensure_server()
        try:
            stdin = _pipe(server.stdin)
            stdin.write(spec.to_json() + "\n")
            stdin.flush()
        except BrokenPipeError:
            server.wait()
            return {"ok": False, "error": f"the measurement server exited ({server.returncode})"}

        def kill_measured() -> None:
            if sampler.pid:
                _kill_tree(sampler.pid)

        watchdog = threading.Timer(_RUN_TIMEOUT_S, kill_measured)
        watchdog.start()
        try:
            return _read_session(iter(_pipe(server.stdout).readline, ""), sampler)
        finally:
            watchdog.cancel()

    def _ensure_server(self) -> subprocess.Popen[str]:
        if self._server is None or self._server.poll() is not None:
            self._server = self._start(["--serve"])
        return self._server

    def close(self) -> None:
        """Stops the measurement server (end of input); kills it if it does not exit."""
        if self._server is not None:
            with contextlib.suppress(BrokenPipeError):
                _pipe(self._server.stdin).close()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None
