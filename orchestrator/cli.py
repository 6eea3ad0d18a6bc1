"""``fedray``: the command line. ``fedray run`` with no config runs the built-in demo."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from orchestrator.config import ConfigError, RunConfig, load_config, missing_data_files

DEMO = "demo.yaml"


def demo_config_path() -> Path:
    return Path(str(resources.files("orchestrator").joinpath(DEMO)))


def default_out_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _load(path: str | None) -> RunConfig:
    return load_config(path or demo_config_path())


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.progress import Progress
    from orchestrator.run import Orchestrator

    config = _load(args.config)
    if args.address:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"address": args.address})})
    if config.ray.address is None:  # local run: the files must be here
        problems = missing_data_files(config)
        if problems:
            raise ConfigError("missing data:\n  " + "\n  ".join(problems))
    out = Path(args.out) if args.out else default_out_dir(config)
    print(f"fedray: running {config.name!r} with {config.num_participants} participants "
          f"({config.strategy.name}, {config.schedule.mode}); results -> {out}", flush=True)
    progress = None if args.quiet else Progress(total=config.stop.max_aggregations)
    Orchestrator(config, out_dir=out, progress=progress).run()
    _print_summary(out)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{args.config or 'built-in demo'}: valid ({config.num_participants} participants "
          f"in {len(config.groups)} groups, {config.strategy.name}, {config.schedule.mode})")
    for problem in missing_data_files(config):
        print(f"  warning (local files): {problem}")
    return 0


def _print_summary(out: Path) -> None:
    import json

    summary = json.loads((out / "summary.json").read_text())
    keys = ["final_accuracy", "best_accuracy", "wall_seconds", "num_aggregations", "num_updates",
            "num_failures", "num_rejected", "mean_staleness", "stop_reason"]
    width = max(map(len, keys))
    print("\nsummary")
    for key in keys:
        value = summary[key]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    print(f"\nresults in {out}/ (summary.json, history.parquet, config.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedray", description="Federated learning on Ray.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run an experiment (the built-in demo if no CONFIG)")
    run.add_argument("config", nargs="?", help="YAML run config")
    run.add_argument("--out", help="run directory (default: runs/NAME-TIMESTAMP)")
    run.add_argument("--address", help="join a running Ray cluster ('auto' or ray://host:10001)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a config without running it")
    validate.add_argument("config", nargs="?")
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"fedray: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from orchestrator.run import RunError

        if isinstance(exc, RunError):
            print(f"fedray: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
