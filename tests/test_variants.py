"""Registries of variants (flowood.variants): lookup with the valid names in the error, refusal of a taken name,
removal, and the parameters an entry declares."""

from __future__ import annotations

import pytest

from flowood.options import ConfigError
from flowood.variants import Registry, declared_parameters, summary


class Widget:
    """A widget.

    More text."""

    def __init__(self, size, colour="red", *, round_=False, **extra):
        pass


def test_lookup_registration_and_removal():
    table = Registry("widget", "widget_type")
    table.register("plain", Widget)
    assert table["plain"] is Widget and list(table) == ["plain"] and len(table) == 1
    assert table.get("plain") is Widget and table.get("none") is None and table.get("none", 1) == 1
    message = r"unknown widget_type 'plian' \(did you mean 'plain'\?\); choose one of plain"
    with pytest.raises(ConfigError, match=message):
        table["plian"]
    with pytest.raises(ConfigError, match="exists already"):
        table.register("plain", Widget)
    table.register("plain", dict, replace=True)
    assert table["plain"] is dict
    assert table.names(lambda entry: entry is dict) == ("plain",) and table.names(lambda entry: False) == ()
    assert table.unregister("plain") is dict and "plain" not in table
    with pytest.raises(ConfigError, match="unknown widget_type"):
        table.unregister("plain")


def test_declared_parameters_and_summary():
    assert declared_parameters(Widget) == {"size": __import__("inspect").Parameter.empty, "colour": "red",
                                           "round_": False}
    assert list(declared_parameters(Widget, skip=1)) == ["colour", "round_"]
    assert summary(Widget) == "A widget."


def test_a_constructor_passing_options_on_declares_its_bases_options():
    class Base:
        def __init__(self, a, b=1, skip=True, c=2):
            pass

    class Child(Base):
        fixed_options = ("skip",)

        def __init__(self, a, d=3, **options):
            super().__init__(a, skip=False, **options)

    assert declared_parameters(Child, skip=1) == {"d": 3, "b": 1, "c": 2}
