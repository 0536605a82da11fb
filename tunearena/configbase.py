"""The base every config section derives from, and readable validation errors.

Each package owns its section (``<pkg>/config.py``); this module only holds what they share:
unknown keys are rejected, and pydantic's errors are turned into one line per problem that
names the field, the bad value and what is allowed ("did you mean ...?").
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tunearena.errors import UserError


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        protected_namespaces=(),
        use_attribute_docstrings=True,  # the docstring under a field is its description
    )


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the source and every bad field."""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``list[X]`` and the like, else the annotation."""
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in args or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def format_validation_error(
    err: ValidationError, root: type[BaseModel], source: str | Callable[[Any], str] = "config"
) -> ConfigError:
    """One readable line per problem: ``source: field.path: message (got X)``; ``source`` may
    be a function of the pydantic error, for a config assembled from several sources."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            owner = _model_at(root, loc[:-1])
            allowed = sorted(owner.model_fields) if owner else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key {str(loc[-1])!r}"
            msg += f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(allowed)}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        where = source(e) if callable(source) else source
        # A rule across sections (a model validator) has no field of its own; it names them.
        lines.append(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")
    return ConfigError("\n".join(lines))


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("NoneType", "None")


def reference_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every field, nested sections flattened."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            origin = getattr(field.annotation, "__origin__", None)
            rows += reference_rows(inner, f"{key}[]." if origin is list
                                   else f"{key}.<key>." if origin is dict else f"{key}.")
            continue
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = f"`{value}`" if value not in (None, "") else "`null`"
        rows.append((key, _type_name(field.annotation), default, (field.description or "").replace("\n", " ")))
    return rows
