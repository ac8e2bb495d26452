"""Sequential state dicts <-> flat vectors, and the checks on files a user brings (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.models.spec import MLPSpec
from fusion.models.state_dicts import flat_from_state, infer_spec, load_model_file, state_from_flat


def sequential(*widths: int) -> torch.nn.Sequential:
    mods: list[torch.nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods[:-1])


def test_state_dict_round_trip_and_inferred_spec(tmp_path):
    net = sequential(3, 7, 5, 2)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    flat, spec = load_model_file(tmp_path / "m.pt")
    assert spec == MLPSpec((3, 7, 5, 2)) and flat.shape == (spec.n_params,) and flat.dtype == np.float32
    again = sequential(3, 7, 5, 2)
    again.load_state_dict(state_from_flat(flat, spec), strict=True)
    x = torch.randn(4, 3)
    assert torch.equal(again(x), net(x))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("2.bias"), "are not those of torch.nn.Sequential"),
        (lambda s: s.__setitem__("0.weight", torch.zeros(7, 4)), "0.weight has 4 inputs|does not match"),
        (lambda s: s.__setitem__("2.weight", torch.zeros(5, 6)), "2.weight has 6 inputs"),
        (lambda s: s["0.bias"].__setitem__(0, float("nan")), "0.bias contains NaN or Inf"),
        (lambda s: s["2.weight"].__setitem__((0, 0), float("inf")), "2.weight contains NaN or Inf"),
    ],
)
def test_bad_state_dicts_are_named_errors(mutate, message):
    state = {k: v.clone() for k, v in sequential(3, 7, 5).state_dict().items()}
    mutate(state)
    with pytest.raises(ValueError, match=message):
        flat_from_state(state, MLPSpec((3, 7, 5)), "party-9.pt")


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    torch.save(sequential(2, 3, 1), tmp_path / "module.pt")  # a whole pickled module: weights_only refuses it
    with pytest.raises(ValueError, match="module.pt: not a state dict loadable"):
        load_model_file(tmp_path / "module.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: holds a list"):
        load_model_file(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model_file(tmp_path / "junk.pt")
    torch.save(sequential(2, 3, 1).state_dict(), tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="ok.pt: architecture 2-3-1 does not match the expected 1-3-1"):
        load_model_file(tmp_path / "ok.pt", MLPSpec((1, 3, 1)))
    assert infer_spec(sequential(2, 3, 1).state_dict()).widths == (2, 3, 1)
