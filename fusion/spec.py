"""The architecture of a party's model: a plain ReLU MLP and its flat parameter layout."""

from __future__ import annotations

from dataclasses import dataclass
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
