"""Flags generated from option classes (:mod:`flowood.options`), so the command line, its ``--help`` and the
docs' CLI reference never repeat an option's definition.

One dialect everywhere: a flag is the option's name with underscores (``--batch_size``, the original scripts'
spelling); the same name with dashes (``--batch-size``) and the option's aliases are accepted too. Boolean
options have ``--NAME`` and ``--no_NAME``. List options take several values and may be repeated
(``--ood A --ood B`` is ``--ood A B``). An unknown flag is answered with the closest known one.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from dataclasses import is_dataclass
from typing import Any

from flowood.errors import closest
from flowood.options import default_of, options_of

__all__ = ["FlowoodParser", "Accumulate", "add_options", "given_options", "spellings", "as_flags"]


class FlowoodParser(argparse.ArgumentParser):
    """An ArgumentParser whose "unrecognized arguments" error names the closest known flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subcommand_actions: list[argparse.Action] = []

    def add_subparsers(self, **kwargs: Any) -> Any:
        """argparse's subcommands, remembered so that an unknown flag of a subcommand finds its closest flag."""
        action = super().add_subparsers(**kwargs)
        self._subcommand_actions.append(action)
        return action

    def _known_flags(self) -> list[str]:
        """Every flag of this parser and of its subcommands (an unknown flag of a subcommand surfaces here)."""
        flags = [s for action in self._actions for s in action.option_strings]
        for action in self._subcommand_actions:
            for sub in action.choices.values():
                flags += sub._known_flags() if isinstance(sub, FlowoodParser) else []
        return flags

    def error(self, message: str) -> typing.NoReturn:
        unknown = re.match(r"unrecognized arguments: (.+)", message)
        if unknown:
            known = self._known_flags()
            hints = [f"{arg}{closest(arg, known)}" for arg in unknown.group(1).split() if arg.startswith("-")]
            if hints:
                message = "unrecognized arguments: " + ", ".join(hints)
        super().error(message)


class Accumulate(argparse.Action):
    """A list flag that may be repeated: ``--ood A --ood B`` is ``--ood A B`` (argparse's own ``nargs='+'``
    keeps only the last occurrence, silently). The first occurrence replaces the default."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        earlier = [] if current is None or current is self.default else list(current)  # the default is replaced
        setattr(namespace, self.dest, earlier + list(values))


def spellings(name: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """``--name`` first, then ``--na-me`` and the aliases' spellings."""
    out: list[str] = []
    for n in (name, *aliases):
        for s in (f"--{n}", f"--{n.replace('_', '-')}", f"--{n.replace('-', '_')}"):
            if s not in out:
                out.append(s)
    return out


def _members(kind: Any) -> list[Any]:
    """The types of a union (``T | None`` -> ``[T]``), or ``[kind]``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(kind) if a is not type(None)]
    return [kind]


def _is_list(kind: Any) -> bool:
    return any(typing.get_origin(a) in (list, tuple) for a in _members(kind))


def _metavar(kind: Any) -> str:
    kinds = _members(kind)
    if _is_list(kind):
        kinds = [a for k in kinds for a in typing.get_args(k)] or [str]
    return "N" if int in kinds else "X" if float in kinds else "VALUE"


def _with_default(help_line: str, default: Any) -> str:
    return help_line if "(default" in help_line else f"{help_line} (default: {_shown(default)})"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (),
                group: str | None = None) -> None:
    """Add a flag for every option of the dataclass ``cls`` (and of nested option classes), with its help line,
    its default and its valid values. A flag not given leaves its option out of :func:`given_options`."""
    target = parser.add_argument_group(group) if group else parser
    for f, info, kind in options_of(cls):
        if f.name in exclude:
            continue
        if is_dataclass(kind):
            add_options(parser, kind, exclude, group=f.name.replace("_", " "))
            continue
        if not info.flag:
            continue
        default = default_of(f)
        help_line = as_flags(info.help) + (f"; one of: {', '.join(map(str, info.choices))}" if info.choices else "")
        help_line = help_line.replace("%", "%%")  # argparse formats help with %
        if _members(kind) == [bool]:  # a switch (an optional one left out keeps its per-model default)
            target.add_argument(*spellings(f.name, info.aliases), dest=f.name, action="store_const", const=True,
                                default=argparse.SUPPRESS, help=_with_default(help_line, default))
            target.add_argument(*spellings(f"no_{f.name}"), dest=f.name, action="store_const", const=False,
                                default=argparse.SUPPRESS, help=f"turn {f.name} off")
            continue
        extra: dict[str, Any] = {"nargs": "+", "action": Accumulate} if _is_list(kind) else {}
        target.add_argument(*spellings(f.name, info.aliases), dest=f.name, default=argparse.SUPPRESS,
                            metavar=info.metavar or _metavar(kind), help=_with_default(help_line, default), **extra)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of ``cls`` (and nested ones, flat) that were given on the command line, as strings or lists;
    :func:`flowood.options.from_mapping` turns them into typed values."""
    names: set[str] = set()

    def collect(c: type) -> None:
        for f, info, kind in options_of(c):
            if is_dataclass(kind):
                collect(kind)
            elif info.flag:
                names.add(f.name)
    collect(cls)
    return {k: v for k, v in vars(args).items() if k in names}


def as_flags(message: str) -> str:
    """A library message in command-line words: ```overwrite=True``` -> ``--overwrite``, ```lr``` -> ``--lr``,
    ```device='cpu'``` -> ``--device cpu``.

    Example:
        >>> as_flags("pass `overwrite=True` or lower `lr`")
        'pass --overwrite or lower --lr'
    """
    def flag(match: re.Match) -> str:
        name, _, value = match.group(1).partition("=")
        option = "--" + name
        if not value or value == "True":
            return option
        if value == "False":
            return "--no_" + name
        value = value.strip("'\"[]").replace("', '", " ").replace("'", "")
        return f"{option} {value}"
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*(?:=[^`]*)?)`", flag, message)
