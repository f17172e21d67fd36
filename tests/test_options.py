"""One definition per option (flowood.options): typed loading from YAML or flags, aliases, value spellings,
nested option classes, choices and minimums with clear errors, and the runtime's shared vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from flowood.options import ConfigError, coerce, from_mapping, merge_options, option, to_mapping
from flowood.runtime import DeviceError, check_precision, lightning_accelerator, lightning_precision, resolve_device


@dataclass
class Inner:
    width: int = option(8, "width", minimum=1)


@dataclass
class Outer:
    lr: float = option(1e-3, "learning rate", aliases=("learning_rate",))
    mode: str = option("a", "mode", choices=("a", "b"), value_aliases={"alpha": "a"})
    steps: int | None = option(None, "steps")
    names: list[str] = option(default_factory=list, help="names")
    inner: Inner = option(default_factory=Inner, help="nested")


def test_typed_loading_aliases_and_nesting():
    o = from_mapping(Outer, {"learning_rate": "1e-2", "mode": "alpha", "steps": "none", "names": "x", "width": "3"})
    assert o == Outer(lr=0.01, mode="a", steps=None, names=["x"], inner=Inner(3))
    assert from_mapping(Outer, {"inner": {"width": 5}}).inner.width == 5
    assert to_mapping(o) == {"lr": 0.01, "mode": "a", "steps": None, "names": ["x"], "inner": {"width": 3}}
    assert merge_options(Outer, o, {"steps": 7}).steps == 7 and o.steps is None


@pytest.mark.parametrize("values, match", [
    ({"lrr": 1}, "unknown option 'lrr' \\(did you mean 'lr'\\?\\)"),
    ({"inner": {"widht": 1}}, "unknown option inner.widht \\(did you mean 'width'\\?\\)"),
    ({"mode": "c"}, "unknown mode 'c'; choose one of a, b"),
    ({"width": 0}, "width must be at least 1"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"steps": 1.5}, "steps must be an integer"),
])
def test_bad_values_are_refused_with_the_fix(values, match):
    with pytest.raises(ConfigError, match=match):
        from_mapping(Outer, values)


def test_coerce_keeps_booleans_strict():
    assert coerce("aug", "true", bool) is True
    with pytest.raises(ConfigError, match="true or false"):
        coerce("aug", 3, bool)


def test_one_vocabulary_for_devices_and_precision():
    assert check_precision("bf16-mixed") == "bf16" and lightning_precision("fp16") == "16-mixed"
    with pytest.raises(ConfigError, match="log-determinants included"):
        check_precision("bf16-true")
    assert resolve_device("cpu").type == "cpu" and lightning_accelerator("cpu", "2") == ("cpu", 2)
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu7")


def test_training_precision_auto_is_bf16_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch):
    import torch

    from flowood import runtime
    from flowood.training import load_config

    x86 = tmp_path / "cpuinfo_x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                   "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    arm = tmp_path / "cpuinfo_arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp bf16\n")
    assert {"avx512_bf16", "avx2"} <= runtime.cpu_flags(x86) and "bf16" in runtime.cpu_flags(arm)
    assert runtime.cpu_flags(tmp_path / "missing") is None
    for flags, expected in ((frozenset({"avx2", "avx512_bf16"}), "bf16"), (frozenset({"avx2", "amx_bf16"}), "bf16"),
                            (frozenset({"avx2", "avx512_vnni"}), "fp32"), (frozenset({"asimd", "bf16"}), "fp32"),
                            (None, "fp32")):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        assert runtime.native_bf16() is (expected == "bf16")
        assert runtime.resolve_precision("auto", "cpu") == expected
        assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
        assert runtime.resolve_precision("AUTO", "cuda:1") == "fp32"  # a GPU: fp32, without asking for CUDA here
        assert runtime.resolve_precision("bf16-mixed", "cpu") == "bf16"  # an explicit choice is kept
        assert runtime.resolve_precision("fp32", "cpu") == "fp32"
        assert load_config(None, {"device": "cpu"}).precision == expected
        assert load_config(None, {"device": "cpu", "precision": "32-true"}).precision == "fp32"
    with pytest.raises(ConfigError, match="auto is a training precision"):
        check_precision("auto")  # where a concrete precision is needed (evaluate, engines)
    with pytest.raises(ConfigError, match="choose fp32, bf16 or fp16"):
        runtime.resolve_precision("bf8", "cpu")


def test_a_help_line_can_list_names_as_they_are_when_read():
    """A help line given as a function is written when read, so a registry's later entries are listed."""
    from dataclasses import dataclass, fields

    from flowood.options import option, option_info

    names = ["a"]

    @dataclass
    class Listed:
        pick: str = option("a", lambda: f"one of {', '.join(names)}")

    names.append("b")
    assert option_info(fields(Listed)[0]).help == "one of a, b"
