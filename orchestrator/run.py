"""``orchestrator.run.Orchestrator``, the import path the README shows; the loop lives in
:mod:`orchestrator.loop.run`."""

from orchestrator.loop.run import Orchestrator

__all__ = ["Orchestrator"]
