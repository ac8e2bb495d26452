"""Iterative federated algorithms on the party shards, registered by name. Importing this registers them all."""

from fusion.federated import fedavg  # noqa: F401  (registration)
from fusion.federated.base import (
    ALGORITHMS,
    FederatedAlgorithm,
    FederatedConfig,
    FederatedStart,
    LocalBatch,
    register,
)

__all__ = ["ALGORITHMS", "FederatedAlgorithm", "FederatedConfig", "FederatedStart", "LocalBatch", "register"]
