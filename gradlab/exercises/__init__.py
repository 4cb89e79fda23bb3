"""Checkers for the exercises: they run the reader's function on random cases and say what is
wrong, comparing with a reference (autograd, torch, or a gradlab function).

One module per topic, in book order, each built on :mod:`.harness` (the case loop, calling the
reader's function, comparing, naming the failing case and the known slip it matches):

- :mod:`.jacobians`: the scalar chain gradient ("What explodes"), the layer Jacobian ("Jacobians")
- :mod:`.mean_field`: chi_1 of an arbitrary activation ("Signal propagation")
- :mod:`.recurrent`: the BPTT Jacobian ("The RNN cliff")
- :mod:`.clipping`: global-norm clipping ("Gradient clipping")
- :mod:`.clipping_theory`: where clipped SGD settles ("Clipping in theory")
- :mod:`.learning_rate`: the largest stable learning rate, Hessian-vector products
- :mod:`.optimizers`: one Adam step ("Optimizer choice")
- :mod:`.accumulation`: the accumulated gradient ("Gradient accumulation")
- :mod:`.initialization`: the standard deviation of ``kaiming_normal_`` ("Initialization")
- :mod:`.activations`: Klambauer's moment map of an arbitrary activation ("Activations")
- :mod:`.normalization`: BatchNorm's backward pass in training mode ("Normalization")
- :mod:`.residual`: the growth of a residual stack with per-block scales ("Residual connections")
- :mod:`.gated_rnns`: the LSTM cell Jacobian ("Gated recurrent networks")
- :mod:`.weight_decay`: one AdamW step ("Weight decay and spectral control")
- :mod:`.dropout`: the variance shift in front of batch normalization ("Dropout")
- :mod:`.distributed`: the global norm from local shard norms ("Distributed training")
- :mod:`.mixed_precision`: one update of dynamic loss scaling ("Mixed precision")
- :mod:`.diagnostics`: the growth of gradient norms toward the input ("Diagnosing a run")
- :mod:`.case_study`: a linear warm-up + cosine schedule ("Case study")
- :mod:`.claims`: the first step of a run whose gradient overflows ("Popular claims, tested")
"""

from .accumulation import check_accumulated_gradient
from .activations import MOMENT_MAP_ACTIVATIONS, check_moment_map
from .case_study import check_warmup_cosine
from .claims import check_first_overflow_step
from .clipping import check_clip_grad_norm
from .clipping_theory import check_clipped_sgd_fixed_point
from .diagnostics import check_gradient_growth
from .distributed import check_global_norm
from .dropout import check_variance_shift
from .gated_rnns import check_lstm_cell_jacobian
from .harness import CheckResult, check_function
from .initialization import INIT_STD_NONLINEARITIES, check_init_std
from .jacobians import check_layer_jacobian, check_scalar_chain_gradient
from .learning_rate import check_hvp, check_max_stable_lr
from .mean_field import CHI1_ACTIVATIONS, check_chi1
from .mixed_precision import check_update_scale
from .normalization import check_batchnorm_backward
from .optimizers import check_adam_step
from .recurrent import check_bptt_jacobian
from .residual import check_stream_growth
from .weight_decay import check_adamw_step

__all__ = [
    "CHI1_ACTIVATIONS",
    "INIT_STD_NONLINEARITIES",
    "MOMENT_MAP_ACTIVATIONS",
    "CheckResult",
    "check_accumulated_gradient",
    "check_adam_step",
    "check_adamw_step",
    "check_batchnorm_backward",
    "check_bptt_jacobian",
    "check_first_overflow_step",
    "check_chi1",
    "check_clip_grad_norm",
    "check_clipped_sgd_fixed_point",
    "check_function",
    "check_global_norm",
    "check_gradient_growth",
    "check_hvp",
    "check_init_std",
    "check_layer_jacobian",
    "check_lstm_cell_jacobian",
    "check_max_stable_lr",
    "check_moment_map",
    "check_scalar_chain_gradient",
    "check_stream_growth",
    "check_update_scale",
    "check_variance_shift",
    "check_warmup_cosine",
]
