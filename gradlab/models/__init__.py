"""The book's models, one module per family.

- :mod:`~gradlab.models.mlp`: fully connected networks (:func:`mlp`, :func:`init_linear_`) and
  the book's exploding network (:func:`exploding_mlp`);
- :mod:`~gradlab.models.rnn`: recurrent networks (:class:`VanillaRNN`, :class:`LSTM`,
  :class:`GRU`), masks for dropout on the recurrent connection (:func:`dropout_masks`) and the
  single-unit network of Pascanu et al. 2013 (:class:`SingleUnitRNN`,
  :func:`single_unit_last_state`).

A new family is a new module here plus one import line below. Activations come from the one
registry, :data:`gradlab.activations.ACTIVATIONS`, re-exported as ``models.ACTIVATIONS``.
"""

from ..activations import ACTIVATIONS
from .mlp import INITS, MLP, NORMS, Block, exploding_mlp, init_linear_, mlp
from .rnn import (
    GRU,
    LSTM,
    RNN_INITS,
    SingleUnitRNN,
    VanillaRNN,
    dropout_masks,
    single_unit_last_state,
)

__all__ = [
    "ACTIVATIONS",
    "GRU",
    "INITS",
    "LSTM",
    "MLP",
    "NORMS",
    "RNN_INITS",
    "Block",
    "SingleUnitRNN",
    "VanillaRNN",
    "dropout_masks",
    "exploding_mlp",
    "init_linear_",
    "mlp",
    "single_unit_last_state",
]
