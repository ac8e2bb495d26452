"""Iterative federated algorithms on the party shards, registered by name. Importing this registers them all."""

from fusion.federated import (  # noqa: F401  (registration)
    ditto,
    fd,
    fedala,
    fedavg,
    fedbuff,
    fedgh,
    fedproto,
    fedrep,
    fedtgp,
    lg_fedavg,
    per_fedavg,
    pfedhn,
)
from fusion.federated.base import (
    ALGORITHMS,
    FederatedAlgorithm,
    FederatedConfig,
    FederatedStart,
    LocalBatch,
    register,
)

__all__ = ["ALGORITHMS", "FederatedAlgorithm", "FederatedConfig", "FederatedStart", "LocalBatch", "register"]
