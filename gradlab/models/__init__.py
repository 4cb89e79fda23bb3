"""The book's models, one module per family.

- :mod:`~gradlab.models.mlp`: fully connected networks (:func:`mlp`, :func:`init_linear_`) and
  the book's exploding network (:func:`exploding_mlp`);
- :mod:`~gradlab.models.rnn`: recurrent networks (:class:`VanillaRNN`, :class:`LSTM`,
  :class:`GRU`) and the single-unit network of Pascanu et al. 2013 (:class:`SingleUnitRNN`,
  :func:`single_unit_last_state`);
- :mod:`~gradlab.models.transformer`: a small decoder-only transformer with Pre-LN or Post-LN
  blocks (:class:`Transformer`, :class:`TransformerBlock`) and its loss (:func:`lm_loss`).

A new family is a new module here plus one import line below. Activations come from the one
registry, :data:`gradlab.activations.ACTIVATIONS`, re-exported as ``models.ACTIVATIONS``.
"""

from ..activations import ACTIVATIONS
from .mlp import INITS, MLP, NORMS, Block, exploding_mlp, init_linear_, mlp
from .rnn import GRU, LSTM, RNN_INITS, SingleUnitRNN, VanillaRNN, single_unit_last_state
from .transformer import NORM_POSITIONS, Transformer, TransformerBlock, lm_loss

__all__ = [
    "ACTIVATIONS",
    "GRU",
    "INITS",
    "LSTM",
    "MLP",
    "NORMS",
    "NORM_POSITIONS",
    "RNN_INITS",
    "Block",
    "SingleUnitRNN",
    "Transformer",
    "TransformerBlock",
    "VanillaRNN",
    "exploding_mlp",
    "init_linear_",
    "lm_loss",
    "mlp",
    "single_unit_last_state",
]
