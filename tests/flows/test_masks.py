"""Coupling masks (flowood.flows.masks) cover the pixels and channels as documented, and refuse what cannot work."""

from __future__ import annotations

import pytest

from flowood.flows import make_mask


def test_masks_cover_as_documented():
    cb = make_mask("checkerboard", (1, 2, 2))
    # index 0 transforms the top-left pixel's parity class, as the original's first coupling
    assert cb.transform[0].tolist() == [[1, 0], [0, 1]] and cb.condition[0].tolist() == [[0, 1], [1, 0]]
    assert make_mask("checkerboard", (1, 2, 2), 1).transform[0].tolist() == [[0, 1], [1, 0]]
    assert make_mask("vertical", (1, 2, 4), 0).transform[0, 0].tolist() == [0, 0, 1, 1]
    assert make_mask("tabular", (5,), 0).transform.tolist() == [0, 0, 1, 1, 1]
    for q in range(4):
        m = make_mask("cycle", (1, 4, 4), q)
        assert m.condition.sum() == 4 and m.transform.sum() == 4
        assert (m.condition * m.transform).sum() == 0
    # cycle order: 0 -> 1 -> 2 -> 3 -> 0, quadrants TL, TR, BR, BL
    m = make_mask("cycle", (1, 4, 4), 0)
    assert m.condition[0, 0, 0] == 1 and m.transform[0, 0, 3] == 1
    h = make_mask("horizontal", (1, 4, 2), 0)
    assert h.condition[0, :2].sum() == 4 and h.transform[0, 2:].sum() == 4
    ch = make_mask("channel", (4, 1, 1), 0)
    assert ch.transform[:, 0, 0].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("checkerbord", (1, 2, 2))
    with pytest.raises(ValueError, match="at least 2 channels"):
        make_mask("channel", (1, 2, 2))


def test_packed_checkerboard_needs_an_even_width():
    with pytest.raises(ValueError, match="even width"):
        make_mask("checkerboard_packed", (1, 4, 5))


def test_a_new_mask_is_one_function_and_one_registry_line():
    """Registered from outside the package, a mask is a valid `mask` of RealNVP and gives an exact coupling."""
    import torch
    from builders import randomise
    from layer_checks import check_layer

    from flowood.flows import MASKS, ConfigError, CouplingMask, build_flow, register_mask

    @register_mask("diagonal")
    def diagonal(shape, index):
        """Pixels on and above the diagonal condition the others (and the other way round)."""
        _, h, w = shape
        upper = (torch.arange(h)[:, None] <= torch.arange(w)[None, :]).float().expand(shape).clone()
        cond = upper if index % 2 == 0 else 1.0 - upper
        return CouplingMask("diagonal", index % 2, cond, 1.0 - cond)

    try:
        flow = build_flow(flow="RealNVP", input_shape=(1, 4, 4), mask="diagonal", num_blocks=1, num_mid_channels=4)
        spatial = [layer for name, layer in flow.coupling_layers() if "channel" not in name]
        assert [layer.mask_kind for layer in spatial] == ["diagonal"] * len(spatial)
        check_layer(randomise(spatial[1]), torch.randn(2, 1, 4, 4))
    finally:
        MASKS.unregister("diagonal")
    with pytest.raises(ConfigError, match="does not work with RealNVP"):
        build_flow(flow="RealNVP", input_shape=(1, 4, 4), mask="diagonal")


def test_a_mask_built_by_hand_takes_its_kinds_layout():
    import torch

    from flowood.flows import CouplingMask, make_coupling

    cond = torch.zeros(4, 2, 2)
    cond[2:] = 1.0
    mask = CouplingMask("channel", 0, cond, 1.0 - cond)
    assert mask.is_channel_split and type(make_coupling(mask, torch.nn.Conv2d(2, 4, 1))).__name__ == "ChannelCoupling"
    assert CouplingMask("my_own", 0, cond, 1.0 - cond).layout == "masked"
