"""gradlab: the tested code behind the executable textbook on exploding gradients.

Modules: ``activations`` (the one activation registry), ``amp`` (16-bit casts, dynamic loss
scaling), ``models`` (networks with init/activation/depth knobs), ``monitor`` (per-layer
gradient statistics), ``theory`` (closed-form results), ``spectral`` (singular values of a
model's weights, the orthogonality penalty), ``distributed`` (clipping and NaN checks across
processes), ``plot`` (the book's figures), ``propagation`` (signals and gradients through random
networks, measured), ``exercises`` (checkers for the reader's solutions), ``doctor`` (the
function ``gl.doctor``: a diagnosis of any model's gradients, run on a copy), ``claims``
(popular claims about exploding gradients, each tested by an experiment), ``utils`` (seeding,
the thread policy, device, source).
"""

from . import (
    activations,
    amp,
    claims,
    clip,
    data,
    distributed,
    exercises,
    hessian,
    models,
    monitor,
    plot,
    propagation,
    spectral,
    theory,
    train,
    utils,
)
from .doctor import doctor  # the function; the module is gradlab.doctor in sys.modules
from .models import mlp
from .monitor import GradientMonitor, NonFiniteError
from .train import fit
from .utils import get_device, seed_everything, setup_chapter, show_source

__version__ = "0.1.0"
__all__ = [
    "GradientMonitor",
    "activations",
    "amp",
    "claims",
    "NonFiniteError",
    "clip",
    "data",
    "distributed",
    "doctor",
    "exercises",
    "fit",
    "get_device",
    "hessian",
    "mlp",
    "models",
    "monitor",
    "plot",
    "propagation",
    "seed_everything",
    "setup_chapter",
    "show_source",
    "spectral",
    "theory",
    "train",
    "utils",
]
