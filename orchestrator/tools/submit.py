"""``fedray submit``: run a config on a Ray cluster through the Ray Jobs API.

The client side validates the config here (mistakes surface before anything is uploaded),
submits a job whose ``working_dir`` is this project, streams the job's logs, and unpacks
the run directory the job sends back into ``--out``. The job side (``python -m
orchestrator.tools.submit``, run by Ray on the head) joins the cluster with ``address="auto"``,
runs the experiment, then prints the run directory as a base64 tarball between two
marker lines, so results come back through the Jobs API itself: no ssh, no shared disk.

Token authentication: the Jobs client sends ``authorization: Bearer <token>``. The token
is found the way Ray finds it: ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``,
else ``~/.ray/auth_token`` (``ray get-auth-token`` prints it; ``cluster.yaml`` copies that
file to every node). ``RAY_AUTH_MODE=disabled`` sends no token.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import RunConfig, load_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""A source checkout when it holds ``pyproject.toml``; else site-packages of an install."""
EXCLUDES = [".git", "runs", "venv", ".venv", "**/__pycache__", "*.egg-info", ".pytest_cache",
            ".ruff_cache", ".hypothesis", "benchmarks/results", "notes"]
"""Never uploaded with the working_dir: history, environments and outputs."""

BEGIN, END = "FEDRAY-RESULTS-BEGIN", "FEDRAY-RESULTS-END"
MAX_RESULTS_BYTES = 32 * 2**20
"""Larger run directories stay on the head; the job prints where."""


class SubmitError(RuntimeError):
    """The job could not be submitted or did not succeed; the message says why."""


# ------------------------------------------------------------------ client side
def auth_headers() -> dict[str, str]:
    """The bearer token for the Jobs API, looked up in Ray's own order (see module doc)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        if Path(path).expanduser().is_file():
            token = Path(path).expanduser().read_text().strip()
    return {"authorization": f"Bearer {token}"} if token else {}


CONFIG_ENV = "FEDRAY_RUN_CONFIG"
ENTRYPOINT = "python -m orchestrator.tools.submit"


def runtime_env(config: RunConfig) -> dict[str, Any]:
    """The project as working_dir, so the cluster runs exactly this code; the validated
    config travels in an environment variable (base64 YAML), so any path works locally."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    env: dict[str, Any] = {
        "env_vars": {"RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1",
                     CONFIG_ENV: base64.b64encode(text.encode()).decode()},
    }
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        env |= {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES}
    else:
        # Installed (not editable): the parent is site-packages, far too big to upload.
        # Ship just fedray's three packages instead.
        import actors
        import orchestrator
        import strategies

        env["py_modules"] = [str(Path(m.__file__).parent) for m in (orchestrator, actors, strategies)]
    return env


def submit(
    config_path: str | Path,
    address: str,
    out: str | Path,
    echo: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Submit, stream logs until the job ends, unpack results into ``out``; return the summary.

    >>> # summary = submit("examples/cluster_run.yaml", "http://127.0.0.1:8265", "runs/c1")
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    config = load_config(config_path)
    try:
        client = JobSubmissionClient(address, headers=auth_headers())
    except Exception as exc:  # connection refused, 401, wrong version: say which cluster
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {exc}") from None
    job_id = f"fedray-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    client.submit_job(entrypoint=ENTRYPOINT, runtime_env=runtime_env(config),
                      submission_id=job_id, metadata={"fedray_config": config.name})
    echo(f"fedray: submitted job {job_id} to {address}")
    try:
        asyncio.run(asyncio.wait_for(_stream(client, job_id, echo), timeout_s))
    except (KeyboardInterrupt, asyncio.TimeoutError):
        client.stop_job(job_id)
        raise SubmitError(f"job {job_id} stopped before it finished") from None
    status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        raise SubmitError(f"job {job_id} ended {status}: {info.message or ''}\n{_tail(logs)}")
    out = Path(out)
    if not unpack_results(logs, out):
        raise SubmitError(f"job {job_id} succeeded but sent no results back; see its logs")
    echo(f"fedray: results of job {job_id} in {out}/")
    return json.loads((out / "summary.json").read_text())


async def _stream(client: Any, job_id: str, echo: Callable[[str], None]) -> None:
    """Print the job's log lines as they come, hiding the results block."""
    hiding, partial = False, ""
    async for chunk in client.tail_job_logs(job_id):
        lines = (partial + chunk).split("\n")
        partial = lines.pop()
        for line in lines:
            if line.startswith(BEGIN):
                hiding = True
            if not hiding:
                echo(line)
            if line.startswith(END):
                hiding = False
    if partial and not hiding:
        echo(partial)


def unpack_results(logs: str, out: Path) -> bool:
    """Extract the tarball between the markers in ``logs`` into ``out``; False if absent."""
    if BEGIN not in logs or END not in logs:
        return False
    block = logs.rsplit(BEGIN, 1)[1].split(END, 1)[0]
    payload = "".join(line.strip() for line in block.splitlines()[1:])
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(payload)), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    return True


def _tail(logs: str, lines: int = 30) -> str:
    kept = [ln for ln in logs.split(BEGIN)[0].splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


# ------------------------------------------------------------------ job side
def run_in_job(encoded_config: str) -> int:
    """Inside the Ray job: run on the cluster that started us, send the results back."""
    from orchestrator.loop.run import Orchestrator

    raw = yaml.safe_load(base64.b64decode(encoded_config).decode())
    config = load_config(raw)
    # a job's code is its own runtime environment: its workers must not serve the next job
    config = config.model_copy(update={"ray": config.ray.model_copy(update={"address": "auto", "keep_workers": False})})
    out = Path("runs") / config.name
    print(f"fedray job: running {config.name!r} with {config.num_participants} participants "
          f"on the cluster; run directory on the head: {out.resolve()}", flush=True)
    orchestrator = Orchestrator(config, out_dir=out)
    orchestrator.run()
    print("fedray job: summary " + json.dumps(orchestrator.summary), flush=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(out.iterdir()):
            tar.add(path, arcname=path.name)
    data = buffer.getvalue()
    if len(data) > MAX_RESULTS_BYTES:
        print(f"fedray job: results are {len(data) / 2**20:.0f} MiB; left on the head in "
              f"{out.resolve()}", flush=True)
        return 0
    text = base64.b64encode(data).decode()
    body = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    print(f"{BEGIN} {len(data)} bytes\n{body}\n{END}", flush=True)
    return 0


# ------------------------------------------------------------------ command line
def add_parser(sub: Any) -> None:
    """``fedray submit [CONFIG] --address http://HEAD:8265 [--out DIR]``."""
    cmd = sub.add_parser("submit", help="run CONFIG on a Ray cluster through the Jobs API "
                         "(the built-in demo if no CONFIG)")
    cmd.add_argument("config", nargs="?", help="YAML run config (default: the built-in demo)")
    cmd.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                     help="the head's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    cmd.add_argument("--out", help="where the results land here (default: runs/NAME-TIMESTAMP)")
    cmd.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    cmd.set_defaults(func=command)


def command(args: Any) -> int:
    if not args.address:
        print("fedray: submit needs --address http://HEAD:8265 (or RAY_ADDRESS)", file=sys.stderr)
        return 2
    from orchestrator.tools.cli import demo_config_path  # here: cli imports this module

    config_path = args.config or demo_config_path()  # as ``fedray run`` does without a config
    config = load_config(config_path)
    out = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        summary = submit(config_path, args.address, out, timeout_s=args.timeout)
    except SubmitError as exc:
        print(f"fedray: {exc}", file=sys.stderr)
        return 1
    keys = [*(k for k in summary if k.startswith(("final_", "best_"))), "wall_seconds", "num_aggregations",
            "stop_reason"]
    print("summary: " + ", ".join(f"{k}={summary.get(k)}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(run_in_job(os.environ[CONFIG_ENV]))
