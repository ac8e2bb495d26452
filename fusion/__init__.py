"""The algorithm core, one concept per package: a party's model (:mod:`fusion.models`), neuron matching
(:mod:`fusion.matching`), the meta-models (:mod:`fusion.metamodels`), training and k-shot fine-tuning
(:mod:`fusion.adapt`), screening of uploaded models (:mod:`fusion.screening`), the warm-start contract
(:mod:`fusion.warm_start`), the fusion strategies (:mod:`fusion.strategies`) and the federated algorithms
(:mod:`fusion.federated`).

Pure numpy / scipy / torch / gpytorch; never imports Ray.
"""

from fusion.models.spec import CNNSpec, MLPSpec, spec_for_family

__all__ = ["CNNSpec", "MLPSpec", "spec_for_family"]
