"""Models of different hidden widths in one stack: a net of width ``w`` embedded at a wider width ``W``.

A single-hidden-layer net ``[fan_in-w-fan_out]`` is stored as ``[fan_in-W-fan_out]`` with its units in the
first ``w`` slots and zero units (zero incoming weights, bias and outgoing weights) after them. A zero unit
computes nothing, and under (batched) training it stays exactly zero: its activation is 0 (ReLU and tanh of 0)
so its outgoing weights get no gradient, and its outgoing weights are 0 so its incoming weights get none
either; Adam's update of a parameter whose gradient was always 0 is 0. So the embedded net *is* the width-``w``
net — same outputs, same fine-tuning — and parties of every width travel as one ``(n, n_params_W)`` array
(object store, checkpoints, quarantine, fine-tuning batches) next to their widths ``(n,)``.

    >>> import numpy as np
    >>> from fusion.models.spec import MLPSpec
    >>> small = np.arange(MLPSpec((1, 2, 1)).n_params, dtype=np.float32)[None]  # (1, 7)
    >>> wide = embed(small, MLPSpec((1, 2, 1)), 4)                               # (1, 13)
    >>> bool((own_width(wide, MLPSpec((1, 4, 1)), 2) == small).all())
    True
"""

from __future__ import annotations

import numpy as np

from fusion.models.spec import MLPSpec


def at_width(spec: MLPSpec, width: int) -> MLPSpec:
    """``spec`` (single hidden layer) with hidden width ``width``."""
    if spec.n_layers != 2:
        raise ValueError(f"mixed widths need single-hidden-layer nets, got {spec}")
    return MLPSpec((spec.widths[0], int(width), spec.widths[-1]), spec.activation)


def embed(params: np.ndarray, spec: MLPSpec, width: int) -> np.ndarray:
    """Models (m, spec.n_params) of hidden width ``spec.widths[1]`` -> (m, n_params at ``width``), zero units after."""
    params = np.asarray(params, dtype=np.float32)
    fan_in, h, fan_out = spec.widths
    if width < h:
        raise ValueError(f"cannot embed width {h} in the narrower width {width}")
    wide = at_width(spec, width)
    m = len(params)
    (w0, b0, b1), (v0, v1, c1) = spec.offsets
    (gw0, gb0, gb1), (gv0, gv1, gc1) = wide.offsets
    out = np.zeros((m, wide.n_params), np.float32)
    out[:, gw0:gb0].reshape(m, width, fan_in)[:, :h] = params[:, w0:b0].reshape(m, h, fan_in)
    out[:, gb0:gb1][:, :h] = params[:, b0:b1]
    out[:, gv0:gv1].reshape(m, fan_out, width)[:, :, :h] = params[:, v0:v1].reshape(m, fan_out, h)
    out[:, gv1:gc1] = params[:, v1:c1]
    return out


def own_width(params: np.ndarray, spec: MLPSpec, width: int) -> np.ndarray:
    """The inverse of :func:`embed`: the first ``width`` units of models (m, spec.n_params) -> (m, n_params_width)."""
    params = np.asarray(params, dtype=np.float32)
    fan_in, big, fan_out = spec.widths
    if width > big:
        raise ValueError(f"width {width} is more than the {big} units of {spec}")
    m = len(params)
    (w0, b0, b1), (v0, v1, c1) = spec.offsets
    parts = [
        params[:, w0:b0].reshape(m, big, fan_in)[:, :width].reshape(m, -1),
        params[:, b0:b1][:, :width],
        params[:, v0:v1].reshape(m, fan_out, big)[:, :, :width].reshape(m, -1),
        params[:, v1:c1],
    ]
    return np.concatenate(parts, axis=1)
