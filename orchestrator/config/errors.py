"""Configuration errors, worded for people: each names the field path and what is allowed."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from actors.spec.data import FileData, ImageData, PartitionData, PythonData
from actors.spec.system import Availability, Windows
from orchestrator.config.schedule import SCHEDULE_MODES


class ConfigError(ValueError):
    """A user mistake in the configuration; the message is meant to be printed as is."""


def flatten_errors(exc: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> str:
    """One line per error, at its field path; ``root`` is the model the paths start in, so an
    unknown field can list the allowed ones."""
    lines = []
    for err in exc.errors():
        loc = _format_loc(err["loc"])
        msg = err["msg"]
        tagged = _TAGGED_UNIONS.get(err["loc"][-1]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(root, err["loc"][:-1]) if root else []
            tag = _tag_at(err["loc"][:-1])
            msg = ("unknown field" + (f" for {tag}" if tag else "")
                   + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
        elif err["type"] == "union_tag_invalid" and tagged and isinstance(err["input"], dict):
            key, tags = tagged  # report it at the tag's field, as for any other Literal
            loc = _format_loc((*err["loc"], key))
            msg = f"Input should be {one_of(list(tags))} (got {err['input'].get(key)!r})"
        elif err["type"] == "union_tag_not_found" and tagged:
            loc, msg = _format_loc((*err["loc"], tagged[0])), "required field is missing"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {prefix}{loc}: {msg}" if loc else f"  {prefix}{msg}")
    return "\n".join(lines)


def _format_loc(loc: tuple) -> str:
    out, previous = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_tag(previous, part):
            pass  # the discriminator tag pydantic inserts; users never write it
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


_TAGGED_UNIONS: dict[str, tuple[str, dict[str, type[BaseModel]]]] = {
    "data": ("source", {"partition": PartitionData, "file": FileData, "python": PythonData, "images": ImageData}),
    "schedule": ("mode", dict(SCHEDULE_MODES)),
    "availability": ("availability", {"periodic": Availability, "windows": Windows}),  # tag from the keys
}
"""Fields holding a tagged union: the tag's own field, and the model behind each tag."""


def _is_tag(field: Any, part: Any) -> bool:
    """Whether ``part``, right after ``field`` in an error path, is a union tag."""
    return isinstance(field, str) and field in _TAGGED_UNIONS and part in _TAGGED_UNIONS[field][1]


def _tag_at(loc: tuple) -> str:
    """``mode 'sync'`` when ``loc`` ends in a union tag (names the variant), else ''."""
    if len(loc) >= 2 and _is_tag(loc[-2], loc[-1]):
        return f"{_TAGGED_UNIONS[loc[-2]][0]} {loc[-1]!r}"
    return ""


def one_of(names: list[str]) -> str:
    """``'a', 'b' or 'c'``, as pydantic words a Literal."""
    quoted = [repr(n) for n in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def _fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at ``loc`` inside ``root``, to suggest after a typo."""
    cls: Any = root
    previous = None
    for part in loc:
        if isinstance(part, int):
            continue
        if _is_tag(previous, part):
            cls, previous = _TAGGED_UNIONS[previous][1][part], part  # the variant's model
            continue
        field = cls.model_fields.get(part) if _is_model(cls) else None
        if field is None:
            return []
        cls, previous = _model_in(field.annotation), part
    return sorted(cls.model_fields) if _is_model(cls) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The first BaseModel class inside an annotation like ``list[Group]`` or ``A | None``."""
    if _is_model(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
