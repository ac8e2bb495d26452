"""The algorithm core: parameter views, neuron matching, the GP meta-model, warm starts, baselines.

Pure numpy / scipy / torch / gpytorch; never imports Ray.
"""

from fusion.spec import MLPSpec

__all__ = ["MLPSpec"]
