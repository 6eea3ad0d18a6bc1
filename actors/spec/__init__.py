"""Typed descriptions the driver hands a participant: pydantic only, importable without torch or ray."""
