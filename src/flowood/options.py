"""One definition per option: its name, type, default, help line, valid values and other spellings.

An option is a dataclass field made by :func:`option`. The configuration classes (``FlowConfig``,
``TrainConfig``, ``EvaluateOptions``, ...) are those dataclasses; YAML keys are their field names; the command
line's flags, their ``--help`` lines and the CLI reference in the documentation are generated from the same
fields (:mod:`flowood.cli`), so no option is described twice.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     lr: float = option(1e-3, "learning rate", aliases=("learning_rate",))
    ...     optim: str = option("Adam", "optimizer", choices=("Adam", "SGD"))
    >>> from_mapping(Demo, {"learning_rate": "1e-4", "optim": "SGD"})
    Demo(lr=0.0001, optim='SGD')
    >>> from_mapping(Demo, {"optimm": "SGD"})
    Traceback (most recent call last):
    flowood.options.ConfigError: unknown option 'optimm' (did you mean 'optim'?)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Union

from flowood.errors import FlowoodError, closest

__all__ = ["OptionInfo", "ConfigError", "option", "option_info", "options_of", "from_mapping", "to_mapping",
           "merge_options", "coerce", "default_of"]


class ConfigError(FlowoodError, ValueError):
    """An option that does not exist, or a value that cannot work; the message names the reason and the fix
    (for names and choices, the closest valid one)."""


@dataclass(frozen=True)
class OptionInfo:
    """What an option is, beyond its dataclass field.

    Attributes:
        text: one line for ``--help`` and the docs, or a function that writes it when it is read (a line that
            lists a registry's names, which may grow after the option is defined); :attr:`help` reads it.
        choices: the valid values (None: any value of the type).
        aliases: other names accepted in YAML and as flags (older spellings, the original scripts' names).
        value_aliases: other spellings of values, mapped to the canonical ones (e.g. ``"32-true"`` -> ``"fp32"``).
        metavar: the placeholder shown in ``--help``.
        flag: whether the command line offers it.
        minimum: the smallest valid value of a number.
    """

    text: str | Callable[[], str]
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()
    value_aliases: dict[str, Any] | None = None
    metavar: str | None = None
    flag: bool = True
    minimum: float | None = None

    @property
    def help(self) -> str:
        """The help line as it reads now."""
        return self.text() if callable(self.text) else self.text


def option(default: Any = MISSING, help: str | Callable[[], str] = "", *, choices: tuple[Any, ...] | None = None,
           aliases: tuple[str, ...] = (), value_aliases: dict[str, Any] | None = None, metavar: str | None = None,
           flag: bool = True, minimum: float | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field that carries its :class:`OptionInfo` (see the module docstring); ``help`` is a line, or a
    function that writes it when it is read."""
    info = OptionInfo(help, tuple(choices) if choices is not None else None, tuple(aliases), value_aliases, metavar,
                      flag, minimum)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"option": info})
    return field(default=default, metadata={"option": info})


def option_info(f: dataclasses.Field) -> OptionInfo:
    """The :class:`OptionInfo` of a field (a plain field gets an empty one)."""
    return f.metadata.get("option", OptionInfo(""))


def options_of(cls: type) -> list[tuple[dataclasses.Field, OptionInfo, Any]]:
    """``(field, info, resolved type)`` of every field of a dataclass, in order."""
    hints = typing.get_type_hints(cls)
    return [(f, option_info(f), hints[f.name]) for f in fields(cls)]


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory if it has one)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _strip_optional(kind: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(kind, False)``."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) < len(typing.get_args(kind)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007 - built at run time
    return kind, False


def coerce(name: str, value: Any, kind: Any, info: OptionInfo | None = None) -> Any:
    """``value`` (from YAML or a flag) as the option's type, or :class:`ConfigError` naming the option.

    Example:
        >>> coerce("lr", "1e-4", float), coerce("num_blocks", 8.0, int), coerce("max_steps", "none", int | None)
        (0.0001, 8, None)
    """
    info = info or OptionInfo("")
    if isinstance(value, str) and info.value_aliases and value in info.value_aliases:
        value = info.value_aliases[value]
    kind, optional = _strip_optional(kind)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or kind is Any:
            return None
        raise ConfigError(f"{name} cannot be empty")
    value = _coerce_type(name, value, kind)
    if info.minimum is not None and isinstance(value, (int, float)) and not value >= info.minimum:
        raise ConfigError(f"{name} must be at least {info.minimum:g}, got {value!r}")
    if info.choices is not None and value not in info.choices:
        raise ConfigError(f"unknown {name} {value!r}{closest(value, info.choices)}; choose one of "
                          f"{', '.join(map(str, info.choices))}")
    return value


def _coerce_type(name: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if kind is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if kind is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        (item_kind, *_) = typing.get_args(kind) or (Any,)
        out = [_coerce_type(name, v, item_kind) if item_kind is not Any else v for v in items]
        return tuple(out) if origin is tuple else out
    return value  # Any, unions of several types: kept as given


def _flat_names(cls: type) -> dict[str, tuple[str, ...]]:
    """Every accepted key of ``cls`` (names and aliases, also those of nested option classes) -> its path."""
    names: dict[str, tuple[str, ...]] = {}
    for f, _, kind in options_of(cls):
        if is_dataclass(kind):
            names.update({k: (f.name, *path) for k, path in _flat_names(kind).items()})
    for f, info, _ in options_of(cls):  # the class's own names win over nested ones
        for name in (f.name, *info.aliases):
            names[name] = (f.name,)
    return names


def from_mapping(cls: type, values: dict[str, Any] | None, where: str = "") -> Any:
    """An instance of the option class ``cls`` from a mapping of option names (or aliases) to values.

    Nested option classes (e.g. a flow's architecture inside a training configuration) take either a nested
    mapping under their field's name or their own option names at the top level.

    Raises:
        ConfigError: an unknown name (with the closest valid one), or a value of the wrong type or not among
            the choices.
    """
    prefix = f"{where}: " if where else ""
    names = _flat_names(cls)
    by_path: dict[tuple[str, ...], Any] = {}
    for key, value in (values or {}).items():
        path = names.get(key)
        if path is None:
            raise ConfigError(f"{prefix}unknown option {key!r}{closest(key, list(names))}")
        if len(path) == 1 and isinstance(value, dict) and is_dataclass(_type_of(cls, path[0])):
            for inner_key, inner_value in value.items():
                inner = _flat_names(_type_of(cls, path[0])).get(inner_key)
                if inner is None:
                    raise ConfigError(f"{prefix}unknown option {path[0]}.{inner_key}"
                                      f"{closest(inner_key, list(_flat_names(_type_of(cls, path[0]))))}")
                by_path[(path[0], *inner)] = inner_value
        else:
            by_path[path] = value
    return _build(cls, by_path, prefix)


def _type_of(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _build(cls: type, by_path: dict[tuple[str, ...], Any], prefix: str) -> Any:
    kwargs = {}
    for f, info, kind in options_of(cls):
        if is_dataclass(kind):
            inner = {path[1:]: v for path, v in by_path.items() if path[0] == f.name}
            kwargs[f.name] = _build(kind, inner, prefix)
        elif (f.name,) in by_path:
            kwargs[f.name] = coerce(f"{prefix}{f.name}", by_path[(f.name,)], kind, info)
    return cls(**kwargs)


def to_mapping(obj: Any) -> dict[str, Any]:
    """An option object as a plain nested mapping (YAML- and JSON-ready: tuples become lists)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            value = to_mapping(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def merge_options(cls: type, options: Any | None, values: dict[str, Any]) -> Any:
    """``options`` (an instance of ``cls``, or None for the defaults) with ``values`` applied, each checked as its
    option says; how library functions take an options object and keyword overrides alike."""
    base = to_mapping(options) if options is not None else {}
    return from_mapping(cls, {**base, **values})
