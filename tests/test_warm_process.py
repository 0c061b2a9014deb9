"""tests/warm_process.py: a warm fork runs a command as a cold `python ARGS...` would, seen from inside
(argv, path, cwd, environment, __main__, threads, fresh project modules) and from outside (exit
statuses, signals, sessions, output, rlimits)."""
import json
import os
import signal
import subprocess
import sys

import pytest

import warm_process
from testkit import REPO

PROBE = """
import json, multiprocessing, os, sys, torch
print(json.dumps({"start_method": multiprocessing.get_start_method(allow_none=True),
                  "parent": multiprocessing.parent_process(),"argv": sys.argv, "path0": sys.path[0], "path": sys.path[1:], "cwd": os.getcwd(),
                  "name": __name__, "flag": os.environ.get("WARM_PROBE"), "threads": torch.get_num_threads(),
                  "byol_loaded": any(m == "byol" or m.startswith("byol.") for m in sys.modules),
                  "stdin": sys.stdin.read(), "session": os.getsid(0) == os.getpid()}))
"""


def test_a_warm_command_sees_what_a_cold_one_sees(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "WARM_PROBE": "yes"}
    for args in ([script, "a", "b c"], ["-c", PROBE, "x"]):
        cold = subprocess.run([sys.executable, *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, start_new_session=True)
        warm = warm_process.run(args, cwd=tmp_path, env=env, new_session=True)
        assert cold.returncode == warm.returncode == 0, cold.stderr + warm.stderr
        assert json.loads(warm.stdout) == json.loads(cold.stdout)
        assert json.loads(warm.stdout)["flag"] == "yes" and not json.loads(warm.stdout)["byol_loaded"]


@pytest.mark.parametrize("code, status, stderr", [
    ("import sys; sys.exit(3)", 3, ""),
    ("import sys; print('out'); sys.exit('a message')", 1, "a message\n"),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
    ("raise KeyboardInterrupt", -signal.SIGINT, "KeyboardInterrupt"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, ""),
    ("import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); import os; "
     "os.kill(os.getpid(), signal.SIGTERM)", 143, ""),
    ("import threading, time, sys; threading.Thread(target=lambda: (time.sleep(0.2), print('joined'))).start()",
     0, ""),
])
def test_exit_statuses_and_output_are_pythons(tmp_path, code, status, stderr):
    ran = warm_process.run(["-c", code], cwd=tmp_path)
    assert ran.returncode == status and stderr in ran.stderr
    if "joined" in code:
        assert ran.stdout == "joined\n"           # python waits for non-daemon threads before it exits


def test_signals_reach_the_session_and_rlimits_hold(tmp_path):
    proc = warm_process.start(["-c", "import time; print('up', flush=True); time.sleep(60)"], cwd=tmp_path,
                              new_session=True)
    while "up" not in proc.stdout_path.read_text():
        assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGTERM)              # the command leads its own process group
    assert proc.wait(timeout=30) == -signal.SIGTERM
    big = tmp_path / "big"
    ran = warm_process.run(["-c", f"f = open({str(big)!r}, 'wb'); f.write(bytes(5000)); f.close()"], cwd=tmp_path,
                           file_size_limit=1000)
    assert ran.returncode == 1 and "File too large" in ran.stderr and big.stat().st_size == 1000


def test_settings_read_when_torch_loads_are_refused_when_they_differ(tmp_path):
    with pytest.raises(ValueError, match="OMP_NUM_THREADS differ"):
        warm_process.start(["-c", "pass"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "7"})
