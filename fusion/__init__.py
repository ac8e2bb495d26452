"""The algorithm core: parameter views, neuron matching, the GP meta-model, warm starts, baselines.

Pure numpy / scipy / torch / gpytorch; never imports Ray.
"""

from fusion.models.spec import CNNSpec, MLPSpec, spec_for_family

__all__ = ["CNNSpec", "MLPSpec", "spec_for_family"]
