"""Iterative federated algorithms on the party shards, registered by name. Importing this registers them all."""

from fusion.federated import ditto, fedala, fedavg, fedrep, per_fedavg, pfedhn  # noqa: F401  (registration)
from fusion.federated.base import (
    ALGORITHMS,
    FederatedAlgorithm,
    FederatedConfig,
    FederatedStart,
    LocalBatch,
    register,
)

__all__ = ["ALGORITHMS", "FederatedAlgorithm", "FederatedConfig", "FederatedStart", "LocalBatch", "register"]
