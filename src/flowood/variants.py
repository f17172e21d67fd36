"""Name-to-class tables of variants: st-networks, masks, flows, scores, detectors.

A variant is chosen by name in configs and on the command line. Each kind of variant keeps one
:class:`Registry`; its keys give the valid choices, the help lines and the documentation's tables, so a new
variant is one class plus one registration, never a new branch in a chain of ``if name == ...``.

Example:
    >>> shapes = Registry("shape", "shape")
    >>> @shapes.register("square")
    ... class Square:
    ...     '''Four equal sides.'''
    >>> shapes["square"].__name__, shapes.names()
    ('Square', ('square',))
    >>> shapes["squre"]
    Traceback (most recent call last):
    flowood.options.ConfigError: unknown shape 'squre' (did you mean 'square'?); choose one of square
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from flowood.errors import closest
from flowood.options import ConfigError

__all__ = ["Registry", "declared_parameters", "summary"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A table of named variants of one kind, in the order they were registered.

    Args:
        kind: what the entries are, for messages ("st-network", "score").
        parameter: the option that names an entry (``st_type``), for messages.
    """

    def __init__(self, kind: str, parameter: str) -> None:
        self.kind = kind
        self.parameter = parameter
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Any:
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds the class it decorates.

        Raises:
            ConfigError: ``name`` is taken and ``replace`` is False.
        """
        def add(value: T) -> T:
            if name in self._entries and not replace:
                raise ConfigError(f"a {self.kind} named {name!r} exists already; pass `replace=True` to replace it")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        """Remove the entry ``name`` and return it (a variant registered for a test or a session)."""
        self[name]  # an unknown name is refused with the valid ones
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.parameter} {name!r}{closest(str(name), self._entries)}; "
                              f"choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The entry ``name``, or ``default`` when there is none."""
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, where: Callable[[T], bool] | None = None) -> tuple[str, ...]:
        """The names, in registration order; ``where`` keeps those whose entry it accepts."""
        return tuple(n for n, e in self._entries.items() if where is None or where(e))


def declared_parameters(cls: Callable[..., Any], skip: int = 0) -> dict[str, Any]:
    """The keyword parameters a class's constructor (or a function) declares, with their defaults
    (``inspect.Parameter.empty`` where there is none), after the first ``skip`` positional ones.

    A constructor that passes ``**kwargs`` on to its base class declares the base's parameters too, except those
    it names in a class attribute ``fixed_options``.
    """
    target = cls.__init__ if inspect.isclass(cls) else cls
    signature = inspect.signature(target).parameters.values()
    params = [p for p in signature if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    declared = {p.name: p.default for p in params[skip:]}
    if inspect.isclass(cls) and any(p.kind == p.VAR_KEYWORD for p in signature):
        base = next((b for b in cls.__mro__[1:] if "__init__" in vars(b)), object)
        if base is not object:
            inherited = declared_parameters(base, skip)
            fixed = set(getattr(cls, "fixed_options", ()))
            declared.update({n: d for n, d in inherited.items() if n not in declared and n not in fixed})
    return declared


def summary(entry: Any) -> str:
    """The first paragraph of an entry's docstring, on one line, cross-reference roles dropped (for tables of
    variants)."""
    doc = inspect.getdoc(entry) or ""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(doc.split("\n\n")[0].split()))
