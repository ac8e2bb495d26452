"""Models a user brings: ``torch.nn.Sequential`` state dicts <-> flat vectors.

An MLP ``Sequential(Linear, ReLU, Linear, ...)`` has the keys ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``,
... (weights (out, in), biases (out,)); :class:`~fusion.models.spec.MLPSpec` lays parameters out in exactly that
order. A CNN ``Sequential([Conv2d, ReLU, MaxPool2d(2)] * c, Flatten, Linear, ReLU, ..., Linear)`` has conv weights
(out, in, k, k) at ``0``, ``3``, ... and Linear ones after the Flatten (:class:`~fusion.models.spec.CNNSpec`). A state
dict holds no image size and no padding: they are inferred as the ones under which every 2x2 pooling is exact and the
first Linear gets the conv stack's features (one known family — ``cnn-s``, ``cnn-m`` — preferred; still ambiguous:
``--arch``). Files are read with ``torch.load(weights_only=True)`` only. Every problem is a ``ValueError`` naming
the file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fusion.lazy import torch
from fusion.models.spec import CNN_FAMILIES, CNNSpec, MLPSpec, Spec


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


def _is_cnn(state: Mapping) -> bool:
    weight = state.get("0.weight")
    return isinstance(weight, torch.Tensor) and weight.dim() == 4


def _cnn_candidates(shapes: dict[str, tuple[int, ...]], family: str = "") -> list[CNNSpec]:
    """CNN specs (image side, padding) whose state-dict shapes are ``shapes``, every pooling exact."""
    conv_keys = sorted((k for k, v in shapes.items() if k.endswith(".weight") and len(v) == 4), key=_index)
    first = shapes[conv_keys[0]]
    kernel = first[-1]
    lin = sorted((k for k, v in shapes.items() if k.endswith(".weight") and len(v) == 2), key=_index)
    convs = tuple(shapes[k][0] for k in conv_keys)
    fc, n_out = tuple(shapes[k][0] for k in lin[:-1]), shapes[lin[-1]][0] if lin else 0
    options = [(kernel // 2, ""), (0, "")]
    if family:
        _, k_fam, pad, _ = CNN_FAMILIES[family]
        options = [(pad, family)] if k_fam == kernel else []
    found = []
    for padding, name in options:
        for side in range(kernel, 513):
            try:
                spec = CNNSpec(side, convs, kernel, padding, fc, n_out, first[1], name)
            except ValueError:
                continue
            steps = zip(spec.sizes[:-1], spec.sizes[1:])
            exact = all((s + 2 * padding - kernel + 1) == 2 * t for s, t in steps)
            wanted = dict(zip(spec.state_dict_keys(), (x for w in spec.weight_shapes for x in (w, (w[0],)))))
            if exact and wanted == shapes:
                found.append(spec)
    named = [dataclasses.replace(s, name=_family_of(s)) for s in found if _family_of(s)]
    return named or found


def _family_of(spec: CNNSpec) -> str:
    """The name of the known family with ``spec``'s layers, or ""."""
    for name, (convs, kernel, padding, fc) in CNN_FAMILIES.items():
        if (convs, kernel, padding, fc) == (spec.convs, spec.kernel, spec.padding, spec.fc):
            return name
    return ""


def _index(key: str) -> int:
    return int(key.split(".")[0])


def infer_cnn_spec(state: Mapping, name: str = "state dict", family: str = "") -> CNNSpec:
    """The CNN a Sequential state dict describes (``family``: one of :data:`fusion.models.spec.CNN_FAMILIES` to
    assume)."""
    shapes = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}: {key} must be a tensor")
        shapes[str(key)] = tuple(value.shape)
    numbered = all(re.fullmatch(r"\d+\.(weight|bias)", k) for k in shapes)
    found = _cnn_candidates(shapes, family) if numbered else []
    if len(found) == 1:
        return found[0]
    shown = ", ".join(f"{k} {v}" for k, v in list(shapes.items())[:8])
    layout = (
        "torch.nn.Sequential([Conv2d(k), ReLU, MaxPool2d(2)] * n, Flatten, Linear, ReLU, ..., Linear) on square images"
    )
    if not found:
        want = f"the {family} family" if family else layout
        raise ValueError(f"{name}: keys and shapes [{shown}] are not those of {want}")
    sides = ", ".join(f"{s.side}x{s.side} padding {s.padding}" for s in found[:4])
    raise ValueError(f"{name}: the state dict fits several image sizes ({sides}); pass --arch")


def check_layers(state: Mapping, name: str = "state dict") -> None:
    """Refuse, naming the key, what no supported layout has: a layer type other than Conv2d and Linear (its own
    keys, e.g. a BatchNorm's ``running_mean``, or a weight that is neither (out, in, k, k) nor (out, in)), a conv
    after a Linear, and a conv whose input channels are not the output channels of the conv before it."""
    layers: dict[int, tuple[int, ...]] = {}
    for key in state:
        if not re.fullmatch(r"\d+\.(weight|bias)", str(key)):
            what = " (a BatchNorm layer's)" if str(key).endswith(("running_mean", "running_var")) else ""
            raise ValueError(
                f"{name}: key {key}{what}: unsupported layer type; only Conv2d and Linear layers may hold parameters "
                "(with ReLU, MaxPool2d(2) and Flatten between them)"
            )
    for key, value in state.items():
        if str(key).endswith(".weight") and isinstance(value, torch.Tensor):
            if value.dim() not in (2, 4):
                raise ValueError(
                    f"{name}: {key} has shape {tuple(value.shape)}, neither a Conv2d (out, in, k, k) nor a Linear "
                    "(out, in) weight: unsupported layer type"
                )
            layers[int(str(key).split(".")[0])] = tuple(value.shape)
    previous = None
    for index in sorted(layers):
        shape = layers[index]
        if len(shape) == 4 and previous is not None:
            p_index, p_shape = previous
            if len(p_shape) == 2:
                raise ValueError(f"{name}: {index}.weight is a Conv2d after the Linear {p_index}.weight: unsupported")
            if shape[1] != p_shape[0]:
                raise ValueError(
                    f"{name}: {index}.weight reads {shape[1]} input channels but the conv before it "
                    f"({p_index}.weight) has {p_shape[0]} output channels"
                )
        previous = (index, shape)


def infer_spec(state: Mapping, name: str = "state dict", activation: str = "relu") -> Spec:
    """The architecture a Sequential state dict describes, checking that consecutive layers chain."""
    check_layers(state, name)
    if _is_cnn(state):
        return infer_cnn_spec(state, name)
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


def _matches(state: Mapping, spec: Spec) -> bool:
    keys = spec.state_dict_keys()
    shapes = [s for w in spec.weight_shapes for s in (w, (w[0],))]
    return sorted(map(str, state)) == sorted(keys) and all(
        isinstance(state[k], torch.Tensor) and tuple(state[k].shape) == s for k, s in zip(keys, shapes)
    )


def flat_from_state(state: Mapping, spec: Spec, name: str = "state dict") -> np.ndarray:
    """A state dict's parameters as one float32 vector (n_params,), after checking shapes and finiteness."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{name}: holds a {type(state).__name__}, not a state dict")
    if not _matches(state, spec):
        try:
            found = str(infer_spec(state, name, spec.activation))
        except ValueError as exc:
            if isinstance(spec, MLPSpec) or _is_cnn(state):
                raise
            found = str(exc)
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


def state_from_flat(flat: np.ndarray, spec: Spec) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flat_from_state`: a vector (n_params,) -> a state dict that loads into the Sequential."""
    flat = torch.as_tensor(np.asarray(flat, dtype=np.float32))
    if flat.shape != (spec.n_params,):
        raise ValueError(f"expected {spec.n_params} parameters for {spec}, got {tuple(flat.shape)}")
    keys, state = spec.state_dict_keys(), {}
    for i, ((w0, b0, b1), shape) in enumerate(zip(spec.offsets, spec.weight_shapes)):
        state[keys[2 * i]] = flat[w0:b0].reshape(shape).clone()
        state[keys[2 * i + 1]] = flat[b0:b1].clone()
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


def load_model_file(path: str | Path, spec: Spec | None = None) -> tuple[np.ndarray, Spec]:
    """One model file -> (flat float32 (n_params,), its spec); ``spec`` given: the file must match it."""
    state = load_state_file(path)
    spec = spec or infer_spec(state, str(path))
    return flat_from_state(state, spec, str(path)), spec
