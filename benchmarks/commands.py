"""A whole command timed as a user waits for it: process wall from its start to its exit,
and the peak resident memory of its process (``wait4``'s ``ru_maxrss``: the process and
the children it waited for; Ray workers a running head owns are not among them)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def local_env() -> dict[str, str]:
    """This environment for a command that must start a local Ray of its own (never join
    one ``RAY_ADDRESS`` names), with Ray's token auth off as on a laptop."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return env


def byte_compile(tree: Path = ROOT) -> None:
    """Write the bytecode of fedray's packages in ``tree``, as ``pip install`` does and a
    checkout's first run would. Where ``PYTHONDONTWRITEBYTECODE`` is set (it is on the
    machines these benchmarks ran on), each process of an editable checkout would otherwise
    compile fedray's modules anew, which no installed copy does: pfl's and Flower's
    bytecode is written when they are installed."""
    packages = [str(tree / name) for name in ("actors", "orchestrator", "strategies")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, stdout=subprocess.DEVNULL)


def timed(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float, str]:
    """Process wall seconds, peak RSS in MB and standard output of ``command`` (run in
    ``cwd``, the project's root unless told); raises with its output when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # not process.wait(): its rusage is the point
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout = out.read()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stdout[-2000:]}\n{err.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout
