"""Reading a config from YAML (or a mapping) into a validated :class:`RunConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from actors.spec.data import FileData
from orchestrator.config.errors import ConfigError, flatten_errors
from orchestrator.config.groups import participant_name
from orchestrator.config.run_config import RunConfig


def load_config(source: str | Path | dict[str, Any]) -> RunConfig:
    """Parse and validate a YAML file (or an already-parsed mapping)."""
    if isinstance(source, dict):
        raw: Any = source
        where = "the config"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings in {where}:\n{flatten_errors(exc, root=RunConfig)}") from None


def missing_data_files(config: RunConfig) -> list[str]:
    """Per-participant files that do not exist on this machine (for local runs)."""
    problems = []
    for group in config.groups:
        if isinstance(group.data, FileData):
            if group.data.paths is not None and len(group.data.paths) != group.count:
                problems.append(
                    f"group {group.name}: {len(group.data.paths)} paths for {group.count} participants"
                )
                continue
            for i in range(group.count):
                name = participant_name(group, i)
                path = Path(group.data.path_for(i, name, group.name))
                if not path.exists():
                    problems.append(f"participant {name}: data file not found: {path}")
        trace = group.system.trace
        for what, path in (("device trace", trace and trace.path), ("trace windows", trace and trace.windows)):
            if path and not Path(path).exists():
                problems.append(f"group {group.name}: {what} not found: {path}")
    if config.evaluation.path and not Path(config.evaluation.path).exists():
        problems.append(f"evaluation: test file not found: {config.evaluation.path}")
    return problems
