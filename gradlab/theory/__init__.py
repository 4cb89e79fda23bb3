"""Closed-form results that the chapters derive; the tests compare each with a measurement.

One module per topic, in the book's order: :mod:`~gradlab.theory.jacobians` (backpropagation as
a product of Jacobians, spectral bounds, growth rates), :mod:`~gradlab.theory.mean_field`
(signal propagation in wide random networks: length map, ``q*``, ``chi_1``, critical line),
:mod:`~gradlab.theory.correlation` (two inputs through a wide network: the correlation map, its
fixed point and depth scale), :mod:`~gradlab.theory.isometry` (the whole singular-value spectrum
of the input-output Jacobian: Gaussian against orthogonal weights, the critical line labelled by
``q*``), :mod:`~gradlab.theory.recurrent` (backpropagation through time, the
Pascanu bound, the single-unit cliff and its saddle-node bifurcation),
:mod:`~gradlab.theory.clipping` (divergence of fixed-step descent on x⁴,
the clipped walk, the fixed point of clipped SGD), :mod:`~gradlab.theory.normalization`
(BatchNorm's gradient growth, LayerNorm's Jacobian, the Pre-LN residual stream),
:mod:`~gradlab.theory.optimizers` (Adam's step bound, its size under noise, the shadow of a
gradient spike, its stability threshold),
:mod:`~gradlab.theory.weight_decay` (how far AdamW lets a weight grow, the equilibrium of decay
and noise, the orthogonality penalty's bounds) and :mod:`~gradlab.theory.dropout` (the second
moment of a gradient through dropout masks, the variance shift in front of batch normalization,
the gradient's growth in a batch-normalized network with dropout) and
:mod:`~gradlab.theory.residual` (the growth of residual stacks, Fixup's multiplier, the first
step of Fixup and ReZero). Every function that takes an
``activation`` accepts any name of :data:`gradlab.activations.ACTIVATIONS`. Each public name is available as
``gl.theory.X``.
"""

from .clipping import clipped_sgd_fixed_point, quartic_clipped_steps, quartic_gd_threshold
from .correlation import c_star, correlation_depth_scale, correlation_map, correlation_slope
from .dropout import (
    bn_dropout_gradient_rate,
    bn_dropout_variance_shift,
    dropout_gradient_factor,
    variance_shift,
)
from .isometry import (
    critical_point,
    input_output_jacobian,
    jacobian_singular_values,
    jacobian_spectrum_moments,
)
from .jacobians import (
    activation_derivative,
    average_growth_factor,
    jacobian_product,
    layer_jacobians,
    log_growth_rate,
    log_growth_variance,
    matrix_power_norms,
    max_slope,
    spectral_bound,
    spectral_norm,
    spectral_radius,
)
from .mean_field import (
    LengthMapPath,
    chi1,
    critical_sigma_w,
    depth_scale,
    gaussian_expectation,
    gradient_factor,
    length_map,
    length_map_path,
    moment_map,
    normalizing_sigma_w,
    q_star,
)

# The exercises' checkers reuse the fixed-point solver on the reader's own NumPy functions.
from .mean_field import _chi1_callable as _chi1_callable
from .mean_field import _moment_map_callable as _moment_map_callable
from .mean_field import _q_star_callable as _q_star_callable
from .normalization import (
    bn_gradient_growth,
    norm_gradient_growth,
    norm_jacobian_norm,
    pre_ln_stream_bounds,
)
from .optimizers import (
    adam_noise_step_mean,
    adam_noise_step_rms,
    adam_spike_ratio,
    adam_spike_recovery,
    adam_stability_threshold,
    adam_step_bound,
)
from .recurrent import (
    bptt_jacobian,
    bptt_jacobian_norms,
    cliff_bias,
    cliff_gradient_norm,
    dominant_mode_norms,
    pascanu_bound,
    saddle_node_bias,
    saddle_node_offset,
)
from .residual import fixup_multiplier, fixup_update_size, residual_growth, rezero_update_size
from .weight_decay import (
    adamw_weight_bound,
    noise_equilibrium_rms,
    penalty_singular_value_bounds,
)

__all__ = [
    # jacobians
    "activation_derivative",
    "max_slope",
    "layer_jacobians",
    "jacobian_product",
    "spectral_norm",
    "spectral_bound",
    "average_growth_factor",
    "log_growth_rate",
    "log_growth_variance",
    "matrix_power_norms",
    "spectral_radius",
    # mean_field
    "gaussian_expectation",
    "length_map",
    "length_map_path",
    "LengthMapPath",
    "q_star",
    "chi1",
    "depth_scale",
    "critical_sigma_w",
    "gradient_factor",
    "normalizing_sigma_w",
    "moment_map",
    # isometry
    "critical_point",
    "jacobian_spectrum_moments",
    "input_output_jacobian",
    "jacobian_singular_values",
    # recurrent
    "bptt_jacobian",
    "bptt_jacobian_norms",
    "pascanu_bound",
    "cliff_bias",
    "cliff_gradient_norm",
    "dominant_mode_norms",
    "saddle_node_bias",
    "saddle_node_offset",
    # correlation
    "correlation_map",
    "correlation_slope",
    "c_star",
    "correlation_depth_scale",
    # clipping
    "quartic_gd_threshold",
    "quartic_clipped_steps",
    "clipped_sgd_fixed_point",
    # normalization
    "bn_gradient_growth",
    "norm_gradient_growth",
    "norm_jacobian_norm",
    "pre_ln_stream_bounds",
    # optimizers
    "adam_step_bound",
    "adam_noise_step_mean",
    "adam_noise_step_rms",
    "adam_spike_ratio",
    "adam_spike_recovery",
    "adam_stability_threshold",
    # residual
    "residual_growth",
    "fixup_multiplier",
    "fixup_update_size",
    "rezero_update_size",
    # weight_decay
    "adamw_weight_bound",
    "noise_equilibrium_rms",
    "penalty_singular_value_bounds",
    # dropout
    "dropout_gradient_factor",
    "variance_shift",
    "bn_dropout_variance_shift",
    "bn_dropout_gradient_rate",
]
