"""Commands under test in processes of their own, without each paying seconds of third-party imports.

A test that signals, kills, races or rlimits a command needs it in a process of its own, and a cold
`python main.py` spends 5-6 s of CPU importing torch (2.8 s) and torchvision (2.7 s, of which 2.4 s
is the torch._dynamo that torchvision.ops imports) before it does anything (`python -X importtime`,
2-core AMD EPYC, 2026-12-07). Here a forkserver (multiprocessing's, one per test process) imports
those once, and each command is a fork of it that then runs exactly what `python ARGS...` runs:

- a process of its own (its pid, exit status, signal handlers, file descriptors and rlimits), in a
  session of its own when asked (`new_session`, as `Popen(start_new_session=True)`);
- `__main__` from the script, `-m module` or `-c code`, with python's sys.argv and sys.path (the
  path a cold interpreter starts with, measured once, plus the script's folder or the cwd);
- the given cwd and environment, stdin from /dev/null, stdout and stderr to files;
- byol itself imported fresh: nothing of the project is preloaded, so its module-level code runs as
  in a cold start;
- python's ending: non-daemon threads joined, atexit handlers run, streams flushed; an uncaught
  KeyboardInterrupt ends the process by SIGINT, an uncaught exception prints its traceback, exit 1.

What it does not cover is the start itself (the interpreter and those imports): torchrun's workers
(torchrun starts them), the wheel's console script, the notebook kernels, the "never imports torch"
checks and test_cli's one-line config error still start cold interpreters.
Environment variables the preloaded libraries read as they load (threads, visible GPUs) must be the
test process's own; a command that asks for others is refused (start it with subprocess).
"""
from __future__ import annotations

import atexit
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["torch", "torchvision", "h5py", "PIL.Image", "yaml"]     # not sklearn: the commands under test load none
# read once, when the preloaded libraries load (OpenMP/BLAS thread pools, CUDA device list)
READ_AT_IMPORT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                  "PYTHONPATH", "PYTHONHASHSEED")

# the context, the environment it started with, a cold interpreter's sys.path, and the folder of
# captured stdout/stderr (removed at exit); made at the first start(), in the test process only
_server: dict = {}
_started: list = []
_numbers = itertools.count()


def _context():
    if not _server:
        cold_path = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                                   capture_output=True, text=True, check=True).stdout
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _server.update(ctx=ctx, env={k: os.environ.get(k) for k in READ_AT_IMPORT},
                       path=json.loads(cold_path), outputs=tempfile.TemporaryDirectory(prefix="warm-"))
    return _server["ctx"]


class WarmProcess:
    """A started command, as much of subprocess.Popen as the tests use."""

    def __init__(self, process, args, stdout: Path, stderr: Path):
        self._process, self.args, self.stdout_path, self.stderr_path = process, args, stdout, stderr

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait, then (stdout, stderr) as text ("" for a stream sent to os.devnull)."""
        self.wait(timeout)
        return self.stdout_path.read_text(errors="replace"), self.stderr_path.read_text(errors="replace")


def start(args, *, cwd: str | Path, env: dict | None = None, stdout: str | Path | None = None,
          stderr: str | Path | None = None, new_session: bool = False,
          file_size_limit: int | None = None) -> WarmProcess:
    """`python ARGS...` (a script path, "-m module" or "-c code", then its arguments) in a warm fork.

    env: the whole environment (default: this process's). stdout/stderr: files to write (default: a
    temporary file each, read by communicate(); os.devnull to drop). file_size_limit: RLIMIT_FSIZE in
    bytes, with SIGXFSZ ignored, so a write past it fails with EFBIG as the kernel reports it."""
    ctx = _context()
    env = dict(os.environ if env is None else env)
    differs = [k for k in READ_AT_IMPORT if env.get(k) != _server["env"][k]]
    if differs:
        raise ValueError(f"{', '.join(differs)} differ from the forkserver's (read when torch loads): "
                         "start this command with subprocess instead")
    args = [str(a) for a in args]
    n = next(_numbers)
    streams = [Path(given) if given is not None else Path(_server["outputs"].name, f"{n}.{name}") for given, name in
               ((stdout, "stdout"), (stderr, "stderr"))]
    for path in streams:
        path.touch()            # readable even if the command dies before it opens them
    process = ctx.Process(target=_run_as_python, args=(args, str(cwd), env, [str(s) for s in streams],
                                                       new_session, file_size_limit, _server["path"]))
    process.start()
    _started.append(process)
    return WarmProcess(process, args, *streams)


def run(args, *, cwd: str | Path, env: dict | None = None, timeout: float = 300, **options):
    """start(), wait, and the result as testkit.Ran (exit code, stdout, stderr)."""
    from testkit import Ran
    proc = start(args, cwd=cwd, env=env, **options)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return Ran(proc.returncode, out, err)


@atexit.register
def _kill_leftovers() -> None:
    """A failed test may leave a command running; multiprocessing would wait for it at exit."""
    for process in _started:
        if process.exitcode is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- in the forked child

def _run_as_python(args, cwd, env, streams, new_session, file_size_limit, cold_path) -> None:
    import atexit as child_atexit
    import builtins
    import gc
    import io
    import runpy
    import threading
    import traceback

    if new_session:
        os.setsid()
    if file_size_limit is not None:
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    for fd, path in zip((1, 2), streams):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))     # as python: stdout block-buffered to a file
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False, buffering=0 if unbuffered else -1),
                                  write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False, buffering=0 if unbuffered else -1),
                                  line_buffering=True, write_through=unbuffered, errors="backslashreplace")
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # multiprocessing's traces of the fork: a cold python has no parent process and no start method
    # chosen (so the DataLoader's workers start by its default, fork on Linux, not by this forkserver)
    from multiprocessing import process as mp_process
    mp_process._parent_process = None
    multiprocessing.set_start_method(None, force=True)

    code = 0
    try:
        if args[0] == "-c":
            sys.argv, sys.path[:] = ["-c", *args[2:]], ["", *cold_path]
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        elif args[0] == "-m":
            sys.argv, sys.path[:] = [args[1], *args[2:]], [cwd, *cold_path]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(args[0])
            sys.argv, sys.path[:] = list(args), [os.path.dirname(script), *cold_path]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:                                      # sys.exit("message"): printed, status 1
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:       # noqa: BLE001 (as the interpreter: print it, exit 1)
        traceback.print_exc()
        code = 1
    gc.collect()                                   # objects the command left behind close their files
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    child_atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == -signal.SIGINT:                     # python ends by the signal itself (status -2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)
