"""``fedray release [--address auto]``: end the pool workers fedray runs left on a cluster.

A run that joins a running Ray (``fedray run --address auto``) leaves its pool workers
there, idle, for the next run of the same fedray code to take over with nothing to start
(:mod:`orchestrator.cluster.warm_workers`). They hold their CPUs meanwhile; this frees
them without stopping Ray (``ray stop`` ends them with everything else). A driver killed
mid-run never gives its workers back: ``--force`` ends those too.
"""

from __future__ import annotations

import sys
from typing import Any

HELP = "end the idle pool workers fedray runs left on a running Ray cluster"


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("release", help=HELP)
    cmd.add_argument("--address", default="auto", help="the cluster ('auto': the one on this machine)")
    cmd.add_argument("--force", action="store_true", help="also the workers a driver still holds: those "
                     "of a driver killed mid-run stay held; never while a fedray run is going on")
    cmd.set_defaults(func=command)


def command(args: Any) -> int:
    import ray

    from orchestrator.cluster.connect import unreachable
    from orchestrator.cluster.warm_workers import release_shared

    problem = unreachable(args.address)
    if problem is not None:
        print(f"fedray: {problem}", file=sys.stderr)
        return 1
    try:
        ray.init(address=args.address, logging_level="ERROR")
    except ConnectionError as exc:
        print(f"fedray: no Ray cluster at {args.address} ({exc})", file=sys.stderr)
        return 1
    try:
        count = release_shared(force=args.force)
    finally:
        ray.shutdown()
    what = "pool" if args.force else "idle pool"
    print(f"fedray: ended {count} {what} worker{'s' * (count != 1)} on {args.address}")
    return 0
