"""A party's model: its architecture (:mod:`~fusion.models.spec`), its flat parameter vector and the batched passes
over stacks of them (:mod:`~fusion.models.params`; CNNs in :mod:`~fusion.models.conv`, the compiled kernels in
:mod:`~fusion.models.kernels`, per-model losses in :mod:`~fusion.models.loss`, kept buffers in
:mod:`~fusion.models.workspace`, activations in :mod:`~fusion.models.activation`), outputs on probe inputs
(:mod:`~fusion.models.probe`), per-party scores on each party's own rows (:mod:`~fusion.models.party_scores`), nets
of several widths in one stack (:mod:`~fusion.models.widths`), and ``torch.nn.Sequential`` state dicts
(:mod:`~fusion.models.state_dicts`)."""

from fusion.models.activation import activate
from fusion.models.loss import RowLoss
from fusion.models.params import (
    features,
    flatten,
    forward,
    init_params,
    last_hidden,
    layers,
    loss_and_grad,
    permute,
    unit_features,
)
from fusion.models.party_scores import party_scores
from fusion.models.probe import probe_outputs
from fusion.models.spec import CNNSpec, MLPSpec, Spec, body_spec, n_body, spec_for_family, spec_from_state, spec_state
from fusion.models.state_dicts import flat_from_state, infer_spec, load_model_file, state_from_flat
from fusion.models.widths import at_width, embed, own_width

__all__ = [
    "CNNSpec",
    "MLPSpec",
    "RowLoss",
    "Spec",
    "activate",
    "at_width",
    "body_spec",
    "embed",
    "features",
    "flat_from_state",
    "flatten",
    "forward",
    "infer_spec",
    "init_params",
    "last_hidden",
    "layers",
    "load_model_file",
    "loss_and_grad",
    "n_body",
    "own_width",
    "party_scores",
    "permute",
    "probe_outputs",
    "spec_for_family",
    "spec_from_state",
    "spec_state",
    "state_from_flat",
    "unit_features",
]
