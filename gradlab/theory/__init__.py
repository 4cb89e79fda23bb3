"""Closed-form results that the chapters derive; the tests compare each with a measurement.

One module per topic, in the book's order: :mod:`~gradlab.theory.jacobians` (backpropagation as
a product of Jacobians, spectral bounds, growth rates), :mod:`~gradlab.theory.mean_field`
(signal propagation in wide random networks: length map, ``q*``, ``chi_1``, critical line),
:mod:`~gradlab.theory.isometry` (the whole singular-value spectrum of the input-output Jacobian:
Gaussian against orthogonal weights, the critical line labelled by ``q*``),
:mod:`~gradlab.theory.recurrent` (backpropagation through time, the Pascanu bound, the
single-unit cliff) and :mod:`~gradlab.theory.weight_decay` (Adam's step bound, how far AdamW
lets a weight grow, the equilibrium of decay and noise, the orthogonality penalty's bounds).
Every function that takes an ``activation`` accepts any name of
:data:`gradlab.activations.ACTIVATIONS`. Each public name is available as ``gl.theory.X``.
"""

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

# The exercises' checkers reuse the fixed-point solver on the reader's own NumPy functions.
from .mean_field import _chi1_callable as _chi1_callable
from .mean_field import _moment_map_callable as _moment_map_callable
from .mean_field import _q_star_callable as _q_star_callable
from .mean_field import (
    chi1,
    critical_sigma_w,
    depth_scale,
    gaussian_expectation,
    gradient_factor,
    length_map,
    moment_map,
    normalizing_sigma_w,
    q_star,
)
from .recurrent import bptt_jacobian, bptt_jacobian_norms, cliff_bias, cliff_gradient_norm, pascanu_bound
from .weight_decay import (
    adam_step_bound,
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
    # weight_decay
    "adam_step_bound",
    "adamw_weight_bound",
    "noise_equilibrium_rms",
    "penalty_singular_value_bounds",
]
