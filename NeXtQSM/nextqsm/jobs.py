"""Job runner: the QSM work runs in a worker subprocess (``python -m nextqsm.worker request.json``).

Qt-free (pure Python callbacks), after the pattern of SlicerMONAIAuto3DSeg: the GUI never
imports torch; a reader thread parses the worker's stdout into a queue, and the owner
drains the queue in its own thread with :meth:`Job.poll` (the Slicer widget calls it
from a QTimer; :meth:`Job.wait` polls in a loop for scripts and tests).

Protocol (see ``nextqsm.worker``):
* stdout lines ``PROGRESS <0..1> <stage text>`` update the progress;
* ``ERROR <json {"input", "problem", "fix"}>`` reports a user-facing input problem;
* any other line is log text (stderr is merged into stdout);
* on success the worker writes ``<out_dir>/result.json`` last (atomically) and exits 0.

All files of a job live in one temporary folder (the request, the inputs exported from
the scene, the results). It is removed on failure and on cancel; on success the owner
reads the results and then calls :meth:`Job.cleanup`. Cancel kills the whole process
tree (psutil, plus the process group on POSIX), so nothing keeps running.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from .io import write_json_atomic

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"


class Signal:
    """A tiny pure-Python signal: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)``."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, fn: Callable[..., Any]) -> None:
        if fn not in self._slots:
            self._slots.append(fn)

    def disconnect(self, fn: Callable[..., Any]) -> None:
        if fn in self._slots:
            self._slots.remove(fn)

    def emit(self, *args: Any) -> None:
        for fn in list(self._slots):
            fn(*args)


def package_roots() -> list[str]:
    """Folders to put on the worker's PYTHONPATH so that ``nextqsm`` (and ``nextqsm_training``) import."""
    roots = [str(Path(__file__).resolve().parents[1])]  # .../NeXtQSM (holds the nextqsm package)
    training = Path(__file__).resolve().parents[2] / "NeXtQSMTraining"
    if (training / "nextqsm_training").is_dir():
        roots.append(str(training))
    return roots


def worker_python() -> str:
    """The interpreter for the worker: PythonSlicer inside 3D Slicer, ``sys.executable`` elsewhere."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None) if slicer is not None else None
    if app is not None:
        exe = shutil.which("PythonSlicer")
        if exe is None:
            home = Path(str(app.slicerHome))
            for cand in (home / "bin" / "PythonSlicer", home / "bin" / "PythonSlicer.exe"):
                if cand.exists():
                    exe = str(cand)
                    break
        if exe:
            return exe
    return sys.executable


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = package_roots() + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kill_process_tree(pid: int, timeout: float = 5.0) -> list[int]:
    """Terminate ``pid`` and all its descendants (then kill what is left); returns the pids signalled."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        procs = [root]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in procs]


class Job:
    """One worker run. Create with a request dict, then :meth:`start`.

    ``work_dir``: folder for the request and outputs (a new temporary folder by default);
    ``own_dir``: whether :meth:`cleanup` removes the whole folder (default: when it was created here).
    ``args``: run ``python *args`` (e.g. ``["-m", "nextqsm_training.cli", "fit", ...]``) instead of
    the QSM worker; it succeeds on exit code 0 and may print the same ``PROGRESS`` lines.

    Signals (emitted from :meth:`poll`, i.e. in the owner's thread):
    ``progressChanged(fraction, stage)``, ``logReceived(line)``, ``finished(job)``.
    """

    def __init__(self, request: dict, work_dir: Optional[str | os.PathLike] = None,
                 python: Optional[str] = None, keep_log_lines: int = 200, own_dir: Optional[bool] = None,
                 args: Optional[list[str]] = None) -> None:
        self.request = dict(request)
        self.args = list(args) if args is not None else None  # run `python *args` instead of the worker
        self._own_dir = (work_dir is None) if own_dir is None else bool(own_dir)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="nextqsm_job_"))
        self.out_dir = self.work_dir / "out"
        self.python = python or worker_python()
        self.state = PENDING
        self.progress = 0.0
        self.stage = ""
        self.error: Optional[str] = None
        self.error_info: Optional[dict] = None
        self.result: Optional[dict] = None
        self.returncode: Optional[int] = None
        self.log: deque[str] = deque(maxlen=keep_log_lines)
        self.started_at: Optional[float] = None
        self.progressChanged = Signal()
        self.logReceived = Signal()
        self.finished = Signal()
        self._proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._cancel_requested = False
        self.killed_pids: list[int] = []

    # ---------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED, CANCELLED)

    def start(self) -> "Job":
        if self.state != PENDING:
            raise RuntimeError(f"job already {self.state}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.args is not None:
            cmd = [self.python, *self.args]
        else:
            self.request.setdefault("out_dir", str(self.out_dir))
            req_path = self.work_dir / "request.json"
            write_json_atomic(req_path, self.request)
            cmd = [self.python, "-m", "nextqsm.worker", str(req_path)]
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # own process group: cancel can reach every descendant
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=worker_env(), cwd=str(self.work_dir) if self.args is None else None, text=True, bufsize=1,
                                      encoding="utf-8", errors="replace", **kwargs)
        self.state = RUNNING
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, name="nextqsm-job-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(("line", line.rstrip("\r\n")))
        rc = proc.wait()
        self._queue.put(("exit", rc))

    def poll(self) -> bool:
        """Handle pending worker output (emits signals); returns True while the job runs."""
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                self._handle_line(payload)
            elif kind == "exit":
                self._finish(payload)
        return self.state == RUNNING

    def _handle_line(self, line: str) -> None:
        if line.startswith("PROGRESS "):
            parts = line.split(" ", 2)
            try:
                frac = float(parts[1])
            except (IndexError, ValueError):
                self._log(line)
                return
            self.progress = min(max(frac, 0.0), 1.0)
            self.stage = parts[2] if len(parts) > 2 else ""
            self.progressChanged.emit(self.progress, self.stage)
        elif line.startswith("ERROR "):
            try:
                self.error_info = json.loads(line[6:])
            except ValueError:
                self.error_info = {"problem": line[6:]}
            self._log(line)
        else:
            self._log(line)

    def _log(self, line: str) -> None:
        self.log.append(line)
        self.logReceived.emit(line)

    def _finish(self, rc: int) -> None:
        if self.done:
            return
        self.returncode = rc
        result_path = self.out_dir / "result.json"
        if self._cancel_requested:
            self.state = CANCELLED
            self.error = "cancelled"
        elif rc == 0 and self.args is not None:
            self.state, self.progress, self.result = SUCCEEDED, 1.0, {}
        elif rc == 0 and result_path.exists():
            try:
                self.result = json.loads(result_path.read_text(encoding="utf-8"))
                self.state = SUCCEEDED
                self.progress = 1.0
            except ValueError as exc:
                self.state, self.error = FAILED, f"unreadable result.json ({exc})"
        else:
            self.state = FAILED
            if self.error_info:
                e = self.error_info
                self.error = f"{e.get('input', 'input')}: {e.get('problem', '')}. Fix: {e.get('fix', '')}"
            else:
                tail = "\n".join(list(self.log)[-15:])
                self.error = f"the worker stopped with exit code {rc}:\n{tail}"
        if self.state != SUCCEEDED:
            self.cleanup()
        self.finished.emit(self)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Poll until the job ends (or ``timeout`` s pass); returns the state."""
        t0 = time.monotonic()
        while self.poll():
            if timeout is not None and time.monotonic() - t0 > timeout:
                break
            time.sleep(interval)
        return self.state

    def cancel(self, timeout: float = 5.0) -> None:
        """Kill the worker and all its descendants; the job ends CANCELLED and its files are removed."""
        if self.done or self._proc is None:
            if self.state == PENDING:
                self.state = CANCELLED
                self.cleanup()
            return
        self._cancel_requested = True
        self.killed_pids = kill_process_tree(self._proc.pid, timeout=timeout)
        if os.name == "posix":
            import signal

            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # stragglers that left the tree (re-parented)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        self.poll()
        if not self.done:  # reader thread did not deliver the exit event in time
            self._finish(self._proc.returncode if self._proc.returncode is not None else -9)

    def cleanup(self) -> None:
        """Remove the job's temporary folder (inputs, partial and final outputs)."""
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def output_path(self, rel: str) -> Path:
        return self.out_dir / rel


def run_job(request: dict, progress: Optional[Callable[[float, str], None]] = None,
            timeout: Optional[float] = None, python: Optional[str] = None, work_dir=None) -> Job:
    """Start a job, wait for it (calling ``progress(fraction, stage)``) and return it (results NOT cleaned up)."""
    job = Job(request, work_dir=work_dir, python=python)
    if progress is not None:
        job.progressChanged.connect(progress)
    job.start()
    state = job.wait(timeout=timeout)
    if state == RUNNING:
        job.cancel()
    return job


def query_device_info(timeout: float = 120.0, python: Optional[str] = None) -> dict:
    """Detected devices, torch version and CUDA build, queried in a worker subprocess (torch is never imported here)."""
    job = run_job({"action": "info"}, timeout=timeout, python=python)
    try:
        if job.state != SUCCEEDED:
            return {"error": job.error or job.state}
        return dict(job.result.get("info", {}))
    finally:
        job.cleanup()
