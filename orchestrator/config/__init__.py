"""The run configuration: typed, validated once, before Ray starts.

A YAML file maps onto :class:`RunConfig`. Participant-side pieces (model, data, training,
simulated system) come from :mod:`actors.spec`; strategy hyperparameters are each
strategy's own ``Params`` dataclass. Every mistake becomes a :class:`ConfigError` whose
message names the field path and what is allowed, never a traceback.

One module per idea; every public name is importable from here.
"""

from orchestrator.config.errors import ConfigError
from orchestrator.config.groups import (
    Group,
    NodePlacement,
    Placement,
    PlacementGroupOption,
    Resources,
    participant_name,
)
from orchestrator.config.loading import load_config, missing_data_files
from orchestrator.config.options import (
    CheckpointPolicy,
    DifferentialPrivacy,
    Evaluation,
    Logging,
    Privacy,
    RayOptions,
    Stop,
    StrategyConfig,
    UpdatePolicy,
)
from orchestrator.config.run_config import RunConfig
from orchestrator.config.schedule import (
    AsyncSchedule,
    BufferedSchedule,
    Schedule,
    ScheduleBase,
    Staleness,
    SyncSchedule,
)
from orchestrator.config.tune_search import TuneSearch

__all__ = [
    "AsyncSchedule",
    "BufferedSchedule",
    "CheckpointPolicy",
    "ConfigError",
    "DifferentialPrivacy",
    "Evaluation",
    "Group",
    "Logging",
    "NodePlacement",
    "Placement",
    "PlacementGroupOption",
    "Privacy",
    "RayOptions",
    "Resources",
    "RunConfig",
    "Schedule",
    "ScheduleBase",
    "Staleness",
    "Stop",
    "StrategyConfig",
    "SyncSchedule",
    "TuneSearch",
    "UpdatePolicy",
    "load_config",
    "missing_data_files",
    "participant_name",
]
