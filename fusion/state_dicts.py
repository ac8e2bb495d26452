"""Models a user brings: ``torch.nn.Sequential(Linear, ReLU, Linear, ...)`` state dicts <-> flat vectors.

A state dict has the keys ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``, ... (weights (out, in),
biases (out,)); :class:`~fusion.spec.MLPSpec` lays parameters out in exactly that order. Files are
read with ``torch.load(weights_only=True)`` only. Every problem is a ``ValueError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fusion.spec import MLPSpec


class ArchitectureMismatch(ValueError):
    """A state dict whose layer shapes describe another architecture than the one expected."""


def _n_layers(keys: list[str], name: str) -> int:
    n = len(keys) // 2
    expected = [f"{2 * i}.{kind}" for i in range(n) for kind in ("weight", "bias")]
    if n < 1 or sorted(keys) != sorted(expected):
        shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        raise ValueError(
            f"{name}: keys [{shown}] are not those of torch.nn.Sequential(Linear, ReLU, Linear, ...) "
            "(0.weight, 0.bias, 2.weight, 2.bias, ...)"
        )
    return n


def infer_spec(state: Mapping, name: str = "state dict", activation: str = "relu") -> MLPSpec:
    """The architecture a Sequential state dict describes, checking that consecutive layers chain."""
    keys = [str(k) for k in state]
    widths: list[int] = []
    for i in range(_n_layers(keys, name)):
        weight, bias = state[f"{2 * i}.weight"], state[f"{2 * i}.bias"]
        if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
            raise ValueError(f"{name}: {2 * i}.weight and {2 * i}.bias must be tensors")
        if weight.dim() != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{name}: layer {2 * i} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; "
                "expected (out, in) and (out,)"
            )
        if widths and weight.shape[1] != widths[-1]:
            raise ValueError(
                f"{name}: {2 * i}.weight has {weight.shape[1]} inputs but the layer below has {widths[-1]} outputs"
            )
        widths += [int(weight.shape[1])] if not widths else []
        widths.append(int(weight.shape[0]))
    return MLPSpec(tuple(widths), activation)


def flat_from_state(state: Mapping, spec: MLPSpec, name: str = "state dict") -> np.ndarray:
    """A state dict's parameters as one float32 vector (n_params,), after checking shapes and finiteness."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{name}: holds a {type(state).__name__}, not a state dict")
    found = infer_spec(state, name, spec.activation)
    if found.widths != spec.widths:
        raise ArchitectureMismatch(f"{name}: architecture {found} does not match the expected {spec}")
    parts = []
    for key in spec.state_dict_keys():
        tensor = state[key]
        if not tensor.is_floating_point():
            raise ValueError(f"{name}: {key} has dtype {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}: {key} contains NaN or Inf")
        parts.append(tensor.detach().to(torch.float32).reshape(-1))
    return torch.cat(parts).numpy()


def state_from_flat(flat: np.ndarray, spec: MLPSpec) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flat_from_state`: a vector (n_params,) -> a state dict that loads into the Sequential."""
    flat = torch.as_tensor(np.asarray(flat, dtype=np.float32))
    if flat.shape != (spec.n_params,):
        raise ValueError(f"expected {spec.n_params} parameters for {spec}, got {tuple(flat.shape)}")
    state = {}
    for i, ((w0, b0, b1), fan_in, fan_out) in enumerate(zip(spec.offsets, spec.widths[:-1], spec.widths[1:])):
        state[f"{2 * i}.weight"] = flat[w0:b0].reshape(fan_out, fan_in).clone()
        state[f"{2 * i}.bias"] = flat[b0:b1].clone()
    return state


def load_state_file(path: str | Path) -> Mapping:
    """``torch.load(path, weights_only=True)``; anything else than plain tensors in a mapping is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types; all mean "not loadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: not a state dict loadable with torch.load(weights_only=True): {first[:200]}"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def load_model_file(path: str | Path, spec: MLPSpec | None = None) -> tuple[np.ndarray, MLPSpec]:
    """One model file -> (flat float32 (n_params,), its spec); ``spec`` given: the file must match it."""
    state = load_state_file(path)
    spec = spec or infer_spec(state, str(path))
    return flat_from_state(state, spec, str(path)), spec
