"""Parameter initialisers drawn from NumPy generators.

Drawing from ``numpy.random.Generator`` instead of ``jax.random`` avoids compiling the JAX
PRNG for every new parameter shape, which costs seconds per shape on CPU (a 3D U-Net's
init took 20-50 s that way).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def he_normal(rng: np.random.Generator, shape, fan_in: int, scale: float = 1.0):
    """He-normal weights, ``N(0, 2 / fan_in) * scale``, float32."""
    return jnp.asarray(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) * scale, jnp.float32)
