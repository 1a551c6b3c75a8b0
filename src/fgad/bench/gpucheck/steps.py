"""Run one step of the check as a child process under a hard timeout, its output streamed to a log.

The child runs in its own process group, so a timeout ends it and everything it started (nvcc, compile
workers): the check never hangs on a step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Step", "StepResult", "child_env", "python_argv", "run_step"]

#: seconds between SIGTERM and SIGKILL for a child that overran its time
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class Step:
    """One child command: ``name`` for the summary, ``argv`` to run, at most ``timeout_s`` seconds."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    what: str = ""  # one line for the log: what the step proves


@dataclass
class StepResult:
    name: str
    status: str  # "ok" | "failed" | "timeout" | "skipped"
    seconds: float
    returncode: int | None = None
    reason: str | None = None
    tail: list[str] = field(default_factory=list)  # the last output lines (for the summary of a failure)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2),
                "returncode": self.returncode, "reason": self.reason, "tail": self.tail[-20:]}


def _kill_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, env: Mapping[str, str] | None = None, log: TextIO | None = None,
             echo: Callable[[str], None] | None = None, cwd: str | None = None) -> StepResult:
    """Run ``step``; every output line goes to ``log`` and ``echo`` (default: stdout, flushed) as it comes."""
    out = echo or (lambda line: print(line, flush=True))
    start = time.monotonic()
    if step.timeout_s <= 0:
        return StepResult(step.name, "skipped", 0.0, reason="no time left in the check's budget")
    header = f"[{step.name}] $ {' '.join(step.argv)}  (timeout {step.timeout_s:.0f} s)"
    out(header)
    if log is not None:
        log.write(header + "\n")
    tail: list[str] = []
    try:
        proc = subprocess.Popen(list(step.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                                bufsize=1, errors="replace")
    except OSError as exc:
        return StepResult(step.name, "failed", time.monotonic() - start, reason=f"cannot start: {exc}")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-40]
            out(f"[{step.name}] {line}")
            if log is not None:
                log.write(line + "\n")
                log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=step.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=KILL_GRACE_S)
        return StepResult(step.name, "timeout", time.monotonic() - start, proc.returncode,
                          f"ran past its {step.timeout_s:.0f} s and was killed", tail)
    reader.join(timeout=KILL_GRACE_S)
    seconds = time.monotonic() - start
    if code != 0:
        return StepResult(step.name, "failed", seconds, code, f"exit status {code}", tail)
    return StepResult(step.name, "ok", seconds, code, None, tail)


def python_argv(*args: str) -> tuple[str, ...]:
    """This interpreter, unbuffered, with ``args``."""
    return (sys.executable, "-u", *args)


def child_env(site: str | None, src: str, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The environment of every step: ``PYTHONPATH=site:src`` (carried wheels first), unbuffered output."""
    env = dict(os.environ)
    parts = [p for p in (site, src, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(dict(extra))
    return env
