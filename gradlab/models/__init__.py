"""The book's models, one module per family.

- :mod:`~gradlab.models.mlp`: fully connected networks (:func:`mlp`, :func:`init_linear_`) and
  the book's exploding network (:func:`exploding_mlp`);
- :mod:`~gradlab.models.rnn`: recurrent networks (:class:`VanillaRNN`, :class:`LSTM`,
  :class:`GRU`), their state Jacobians against the lag (:func:`state_jacobian_norms`), masks for
  dropout on the recurrent connection (:func:`dropout_masks`) and the single-unit network of
  Pascanu et al. 2013 (:class:`SingleUnitRNN`, :func:`single_unit_last_state`);
- :mod:`~gradlab.models.residual`: residual networks with two-layer branches (:func:`resmlp`,
  :class:`ResidualBlock` with a branch scale or a ReZero gate, :class:`FixupBlock`);
- :mod:`~gradlab.models.transformer`: a small decoder-only transformer with Pre-LN or Post-LN
  blocks (:class:`Transformer`, :class:`TransformerBlock`) and its loss (:func:`lm_loss`);
- :mod:`~gradlab.models.zoo`: broken and healthy networks for :func:`gradlab.doctor`
  (:func:`~gradlab.models.zoo.broken`, :func:`~gradlab.models.zoo.healthy`);
- :mod:`~gradlab.models.init`: data-dependent initialization of any model's linear and
  convolution layers (:func:`lsuv_init_`, Mishkin & Matas 2016).

A new family is a new module here plus one import line below. Activations come from the one
registry, :data:`gradlab.activations.ACTIVATIONS`, re-exported as ``models.ACTIVATIONS``.
"""

from ..activations import ACTIVATIONS
from . import zoo
from .init import LSUV_LAYERS, lsuv_init_
from .mlp import INITS, MLP, NORMS, RESIDUAL_SCALES, Block, exploding_mlp, init_linear_, mlp
from .residual import RESMLP_SCALES, FixupBlock, ResidualBlock, ResMLP, resmlp
from .rnn import (
    GRU,
    LSTM,
    RNN_INITS,
    SingleUnitRNN,
    VanillaRNN,
    dropout_masks,
    single_unit_last_state,
    state_jacobian_norms,
)
from .transformer import NORM_POSITIONS, Transformer, TransformerBlock, lm_loss

__all__ = [
    "ACTIVATIONS",
    "GRU",
    "INITS",
    "LSUV_LAYERS",
    "LSTM",
    "MLP",
    "NORMS",
    "NORM_POSITIONS",
    "RESIDUAL_SCALES",
    "RESMLP_SCALES",
    "RNN_INITS",
    "Block",
    "FixupBlock",
    "ResMLP",
    "ResidualBlock",
    "SingleUnitRNN",
    "Transformer",
    "TransformerBlock",
    "VanillaRNN",
    "dropout_masks",
    "exploding_mlp",
    "init_linear_",
    "lm_loss",
    "lsuv_init_",
    "mlp",
    "resmlp",
    "single_unit_last_state",
    "state_jacobian_norms",
    "zoo",
]
