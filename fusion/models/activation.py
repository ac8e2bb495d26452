"""A hidden layer's activation by its name (``MLPSpec.activation``; a CNN's is ``"relu"``), on a torch tensor or
a numpy array."""

from __future__ import annotations

import numpy as np

from fusion.lazy import torch


def activate(z, activation: str):
    """``relu`` or ``tanh`` (``activation``) of ``z``: a torch tensor by torch's ops, a numpy array by numpy's.

    >>> activate(np.array([-1.0, 2.0]), "relu").tolist()
    [0.0, 2.0]
    """
    relu = activation == "relu"
    if isinstance(z, np.ndarray):
        return np.maximum(z, 0.0) if relu else np.tanh(z)
    return torch.relu(z) if relu else torch.tanh(z)
