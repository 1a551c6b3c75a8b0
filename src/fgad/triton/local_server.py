"""A tritonserver on 127.0.0.1 from the nvidia-pytriton wheel, for tests and benchmarks (``fgad[triton-test]``).

nvidia-pytriton ships Triton's server binary (2.51 in pytriton 0.7) with the python backend and one python
backend stub per Python version. :class:`LocalServer` lays them out as Triton expects (the stub of this
interpreter's version beside the backend), starts the binary directly on a model repository written by
``fgad-triton``, on free ports of 127.0.0.1 only, waits (bounded) until it is ready and always kills it on exit.
The stub links ``libpython3.X.so.1.0`` of this interpreter's minor version (this interpreter's own when it is a
shared build, else the system's: ``apt-get install libpython3.11`` for Python 3.11), embeds it in isolated mode
(``PYTHONPATH`` is ignored) and takes its packages from the environment of the ``python3`` first on ``PATH``.
The server gets a small environment of its own whose one ``.pth`` file puts fgad's source first and then this
interpreter's site-packages, so the server's models run this very fgad (also from a source checkout that is not
the installed one).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["LocalServer", "free_port", "server_dist"]

_INSTALL = "the local Triton server comes with nvidia-pytriton: pip install 'fgad[triton-test]'"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_dist() -> tuple[Path, Path]:
    """(pytriton's tritonserver folder, its bundled libraries folder); ImportError naming the extra."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_INSTALL)
    root = Path(next(iter(spec.submodule_search_locations)))
    dist, libs = root / "tritonserver", root.parent / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ImportError(f"{dist}: no tritonserver binary; {_INSTALL}")
    return dist, libs


def _libpython_dir() -> str:
    """The folder of this interpreter's shared libpython (the stub links ``libpython3.X.so.1.0``): the stub then
    embeds this very Python rather than another build of the same minor version; "" when it has none (a static
    build: the system's libpython3.X is used, and must be installed)."""
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    name = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    return libdir if libdir and (Path(libdir) / name).is_file() else ""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started the server dies (Linux), so a killed test
    run or benchmark never leaves a server behind; elsewhere nothing (stop() still ends it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalServer:
    """``with LocalServer(repo) as server: server.http_url, server.grpc_url`` (module docstring).

    ``explicit``: model control mode explicit (every model loaded at start, then reloaded with the
    repository API); otherwise the server loads the repository once.
    """

    def __init__(self, repo: str | os.PathLike[str], *, start_timeout_s: float = 90.0, explicit: bool = True,
                 extra_args: tuple[str, ...] = (), log_path: str | os.PathLike[str] | None = None) -> None:
        self.repo = Path(repo).resolve()
        self.start_timeout_s = start_timeout_s
        self.explicit = explicit
        self.extra_args = extra_args
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._home: Path | None = None
        self.log_path = Path(log_path) if log_path else None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def _layout(self) -> Path:
        dist, _ = server_dist()
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton has no python backend stub for Python {version}")
        self._home = Path(tempfile.mkdtemp(prefix="fgad-tritonserver-"))
        shutil.copytree(dist / "backends", self._home / "backends")
        shutil.copy(stub, self._home / "backends" / "python" / "triton_python_backend_stub")
        return dist / "bin" / "tritonserver"

    def _python_env(self) -> Path:
        """``<home>/env``: a venv-shaped folder whose python3 is this interpreter's base and whose site-packages
        hold one .pth: fgad's source, then this environment's site-packages (with their own .pth files)."""
        import site
        import sysconfig

        assert self._home is not None
        env = self._home / "env"
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        (env / "bin").mkdir(parents=True)
        base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
        (env / "bin" / "python3").symlink_to(base)
        (env / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n")
        packages = env / "lib" / version / "site-packages"
        packages.mkdir(parents=True)
        src = Path(__file__).resolve().parents[2]
        sites = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
        lines = [str(src)] + [f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(sites)]
        (packages / "fgad-local.pth").write_text("\n".join(lines) + "\n")
        return env / "bin"

    def start(self) -> LocalServer:
        binary = self._layout()
        assert self._home is not None
        _, libs = server_dist()
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(libs), _libpython_dir(), env.get("LD_LIBRARY_PATH", ""))
                                          if p)
        env["PATH"] = f"{self._python_env()}:{env.get('PATH', '')}"
        args = [str(binary), f"--model-repository={self.repo}", f"--backend-directory={self._home / 'backends'}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--exit-timeout-secs=5", "--log-verbose=0", *self.extra_args]
        if self.explicit:
            args += ["--model-control-mode=explicit", "--load-model=*"]
        log = open(self.log_path or self._home / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self._proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            status = self._proc.poll()
            if status is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"tritonserver exited with status {status}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {self.start_timeout_s:.0f}s:\n{tail}")

    def log_text(self) -> str:
        path = self.log_path or (self._home / "server.log" if self._home else None)
        try:
            return Path(path).read_text(errors="replace") if path else ""
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the server and its python backend stubs
                proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self._home is not None:  # the binaries' copy (and the log, unless log_path keeps it elsewhere)
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
