"""The architecture of a party's model and its flat parameter layout: a plain MLP or a small CNN.

Both lay a model out as one flat float32 vector in the order of the equivalent ``torch.nn.Sequential``'s state
dict, layer by layer ``weight`` then ``bias``, and describe their *hidden units* (what a permutation moves) the
same way: hidden layer ``l`` has ``hidden[l]`` units; a unit is the ``l``-th layer's output row (an MLP neuron
or a conv output channel) together with its incoming weights, its bias and its outgoing weights
(:func:`fusion.models.params.unit_features`). ``spec_for_family("cnn-s", 784, 10)`` names architectures by family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class MLPSpec:
    """An MLP ``widths[0] -> widths[1] -> ... -> widths[-1]`` with one activation between layers.

    A model's parameters live in one flat float32 vector, layer by layer, each layer as
    ``weight`` (fan_out, fan_in) row-major then ``bias`` (fan_out,), which is exactly the order
    of ``torch.nn.Sequential(Linear, Act, Linear, ...)``'s state dict.

    >>> MLPSpec((1, 100, 1)).n_params
    301
    """

    widths: tuple[int, ...]
    activation: str = "relu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ValueError(f"MLP widths must be at least two positive integers, got {self.widths}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @classmethod
    def parse(cls, text: str, activation: str = "relu") -> MLPSpec:
        """``"1-100-1"`` -> ``MLPSpec((1, 100, 1))``."""
        try:
            widths = tuple(int(part) for part in text.strip().split("-"))
        except ValueError:
            raise ValueError(f"architecture must look like 1-100-1, got {text!r}") from None
        return cls(widths, activation)

    def __str__(self) -> str:
        return "-".join(map(str, self.widths))

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def fan_in(self) -> int:
        return self.widths[0]

    @property
    def fan_out(self) -> int:
        return self.widths[-1]

    @property
    def family(self) -> str:
        """``mlp-<hidden widths>``, the name :func:`spec_for_family` parses back."""
        return "mlp-" + "-".join(map(str, self.hidden)) if self.hidden else "mlp"

    @property
    def weight_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Each layer's weight shape, as torch stores it: (fan_out, fan_in)."""
        return tuple((o, i) for i, o in zip(self.widths[:-1], self.widths[1:]))

    @property
    def unit_columns(self) -> tuple[int, ...]:
        """Per layer: weight columns per input unit (1 for a Linear layer)."""
        return (1,) * self.n_layers

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.widths[1:-1]

    @cached_property
    def offsets(self) -> tuple[tuple[int, int, int], ...]:
        """Per layer: (start of weight, start of bias, end of bias) in the flat vector."""
        out, pos = [], 0
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            w_end = pos + fan_in * fan_out
            out.append((pos, w_end, w_end + fan_out))
            pos = w_end + fan_out
        return tuple(out)

    @property
    def n_params(self) -> int:
        return self.offsets[-1][2]

    def state_dict_keys(self) -> list[str]:
        """Keys of ``torch.nn.Sequential(Linear, Act, Linear, ...)``: ``0.weight``, ``0.bias``, ``2.weight``, ..."""
        return [f"{2 * i}.{kind}" for i in range(self.n_layers) for kind in ("weight", "bias")]


# conv output channels, kernel side, padding, hidden FC widths; each conv is followed by ReLU and MaxPool2d(2)
CNN_FAMILIES: dict[str, tuple[tuple[int, ...], int, int, tuple[int, ...]]] = {
    "cnn-s": ((16, 32), 3, 1, (128,)),
    "cnn-m": ((32, 64), 5, 0, (512,)),  # PFLlib's FedAvgCNN (McMahan et al. 2017): 1,024 flat features on 28x28
}


@dataclass(frozen=True)
class CNNSpec:
    """``[Conv2d(k, padding) -> ReLU -> MaxPool2d(2)] * len(convs) -> Flatten -> [Linear -> ReLU] * len(fc) -> Linear``.

    Inputs are square images ``side x side`` with ``channels`` channels, flattened (fan_in = channels * side²) the
    way ``x.reshape(N, channels, side, side)`` reads them. The flat layout is the state dict of that
    ``torch.nn.Sequential`` (conv ``i`` at index ``3i``, then Flatten, then the Linear layers every second index).

    >>> spec = spec_for_family("cnn-s", 784, 10)
    >>> spec.state_dict_keys()[:4], spec.hidden
    (['0.weight', '0.bias', '3.weight', '3.bias'], (16, 32, 128))
    """

    side: int
    convs: tuple[int, ...]
    kernel: int
    padding: int
    fc: tuple[int, ...]
    n_out: int
    channels: int = 1
    name: str = ""

    activation = "relu"  # (class attribute) every hidden layer is ReLU

    def __post_init__(self) -> None:
        object.__setattr__(self, "convs", tuple(int(c) for c in self.convs))
        object.__setattr__(self, "fc", tuple(int(w) for w in self.fc))
        if not self.convs or any(c < 1 for c in (*self.convs, *self.fc, self.n_out, self.channels, self.kernel)):
            raise ValueError(f"a CNN needs at least one conv and positive sizes, got {self}")
        if self.sizes[-1] < 1:
            raise ValueError(
                f"{self.family}: {self.side}x{self.side} images shrink to nothing after {len(self.convs)} conv "
                f"(kernel {self.kernel}, padding {self.padding}) + 2x2 pooling layers; sizes {self.sizes}"
            )

    def __str__(self) -> str:
        return self.family

    @property
    def family(self) -> str:
        return self.name or "cnn-" + "-".join(map(str, (*self.convs, *self.fc)))

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Image side at the input and after each conv + pool block."""
        out = [self.side]
        for _ in self.convs:
            out.append((out[-1] + 2 * self.padding - self.kernel + 1) // 2)
        return tuple(out)

    @property
    def fan_in(self) -> int:
        return self.channels * self.side**2

    @property
    def fan_out(self) -> int:
        return self.n_out

    @property
    def n_layers(self) -> int:
        return len(self.convs) + len(self.fc) + 1

    @property
    def hidden(self) -> tuple[int, ...]:
        """Units of each hidden layer: the conv output channels, then the hidden FC widths."""
        return (*self.convs, *self.fc)

    @property
    def flat_features(self) -> int:
        return self.convs[-1] * self.sizes[-1] ** 2

    @property
    def weight_shapes(self) -> tuple[tuple[int, ...], ...]:
        """(out, in, k, k) per conv, then (out, in) per Linear."""
        k, chans = self.kernel, (self.channels, *self.convs)
        convs = [(o, i, k, k) for i, o in zip(chans[:-1], chans[1:])]
        dims = (self.flat_features, *self.fc, self.n_out)
        return (*convs, *((o, i) for i, o in zip(dims[:-1], dims[1:])))

    @property
    def unit_columns(self) -> tuple[int, ...]:
        """Per layer: weight columns per input unit: k² for a conv, the pooled map (side²) for the first Linear."""
        return (*(self.kernel**2,) * len(self.convs), self.sizes[-1] ** 2, *(1,) * len(self.fc))

    @cached_property
    def offsets(self) -> tuple[tuple[int, int, int], ...]:
        """Per layer: (start of weight, start of bias, end of bias) in the flat vector."""
        out, pos = [], 0
        for shape in self.weight_shapes:
            w_end = pos + math.prod(shape)
            out.append((pos, w_end, w_end + shape[0]))
            pos = w_end + shape[0]
        return tuple(out)

    @property
    def n_params(self) -> int:
        return self.offsets[-1][2]

    def module_indices(self) -> list[int]:
        """Index of each Conv2d / Linear in the ``torch.nn.Sequential``."""
        n_conv = len(self.convs)
        return [3 * i for i in range(n_conv)] + [3 * n_conv + 1 + 2 * j for j in range(len(self.fc) + 1)]

    def state_dict_keys(self) -> list[str]:
        return [f"{i}.{kind}" for i in self.module_indices() for kind in ("weight", "bias")]


Spec = MLPSpec | CNNSpec


def body_spec(spec: Spec) -> Spec:
    """The model without its read-out: its output is the last hidden layer's pre-activation."""
    if isinstance(spec, CNNSpec):
        return replace(spec, fc=spec.fc[:-1], n_out=spec.fc[-1], name="")
    return MLPSpec(spec.widths[:-1], spec.activation)


def n_body(spec: Spec) -> int:
    """Parameters before the read-out: the flat layout's first ``n_body`` entries."""
    return spec.offsets[-1][0]


def spec_for_family(family: str, fan_in: int, fan_out: int) -> Spec:
    """``"mlp-100"`` -> ``MLPSpec((fan_in, 100, fan_out))`` (``mlp-64-32``: two hidden layers); ``"cnn-s"`` /
    ``"cnn-m"`` -> a :class:`CNNSpec` for square one-channel images of ``fan_in`` pixels."""
    name = family.strip().lower()
    if name.startswith("mlp-"):
        try:
            hidden = tuple(int(w) for w in name[4:].split("-"))
        except ValueError:
            hidden = ()
        if hidden and all(w >= 1 for w in hidden):
            return MLPSpec((fan_in, *hidden, fan_out))
    elif name in CNN_FAMILIES:
        side = math.isqrt(fan_in)
        if side * side != fan_in:
            raise ValueError(f"{name} needs square one-channel images, but the inputs have {fan_in} features")
        convs, kernel, padding, fc = CNN_FAMILIES[name]
        return CNNSpec(side, convs, kernel, padding, fc, fan_out, name=name)
    known = ", ".join(["mlp-<width>[-<width>...]", *CNN_FAMILIES])
    raise ValueError(f"unknown architecture family {family!r}; known: {known}")


def spec_state(spec: Spec, widths_key: str = "widths") -> dict:
    """A spec as plain numbers and strings (safe for ``torch.load(weights_only=True)``), to merge into a saved
    state; ``widths_key`` names an MLP's widths entry (a second spec in one state takes another key, and its CNN
    entries that key as a prefix). See :func:`spec_from_state`."""
    if isinstance(spec, CNNSpec):
        prefix = "" if widths_key == "widths" else widths_key + "_"
        return {
            prefix + "cnn": [
                spec.side,
                list(spec.convs),
                spec.kernel,
                spec.padding,
                list(spec.fc),
                spec.n_out,
                spec.channels,
            ],
            prefix + "name": spec.name,
        }
    return {widths_key: list(spec.widths), "activation": spec.activation}


def spec_from_state(state: dict, widths_key: str = "widths") -> Spec:
    prefix = "" if widths_key == "widths" else widths_key + "_"
    if prefix + "cnn" in state:
        side, convs, kernel, padding, fc, n_out, channels = state[prefix + "cnn"]
        return CNNSpec(side, tuple(convs), kernel, padding, tuple(fc), n_out, channels, state.get(prefix + "name", ""))
    return MLPSpec(tuple(state[widths_key]), state["activation"])
