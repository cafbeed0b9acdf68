"""The constitutive-law layer and the losses of the learned reconstruction.

Constitutive layer
------------------
:func:`implied_force` maps a displacement field to the body-force density that the
matrix's elasticity requires for equilibrium, ``f = grad Pi(u) / h^3``, with ``Pi`` the
discrete strain energy of :mod:`tfm.synth.fem` (Q1 voxel elements, 2x2x2 Gauss points,
linear or neo-Hookean law). This is the very operator that defines the ground-truth force
of the synthetic data, so the layer applied to the true displacement returns the true
force exactly (to float rounding, on interior voxels); a finite-difference Navier operator
(:func:`tfm.fields.force_density`) agrees with it only to O(h^2). It is differentiable
(reverse-mode autodiff of the energy) and works in dimensionless units: ``u`` in voxels,
force as ``g = f h / E``, so one compilation serves every stiffness and voxel size.

Losses (per sample, then averaged over the batch; ``n`` voxels, floors ``eps``)
---------------------------------------------------------------------------------
* ``displacement``: ``sum |u - u*|^2 / (sum |u*|^2 + n eps_u^2)``
* ``force``: ``sum |g - g*|^2 / (sum |g*|^2 + n eps_g^2)``
* ``consistency``: ``sum_interior |g - G(u)|^2 / (same denominator)``, where ``G`` is the
  constitutive layer: the predicted force must be the one the predicted displacement
  implies. Away from the cell it demands ``G(u) = 0`` -- the Navier equations of a
  force-free matrix -- which is what smooths u where there are no beads to follow.
* ``equilibrium``: ``(|sum g|^2 + |sum (x - c) x g|^2 / R^2) / (sum |g*|)^2``: a cell
  exerts no net force and no net torque on its matrix.

Relative normalisation keeps weak and strong cells equally weighted; the floors
(``eps_u = 0.01`` voxel, ``eps_g = 1e-3``) stop samples with no measurable motion from
dominating with their noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..material import lame_parameters
from ..synth.fem import energy

LAWS = ("linear", "neo-hookean")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (see the module docstring)."""

    displacement: float = 1.0  # supervised u
    force: float = 1.0  # supervised f
    consistency: float = 0.1  # f vs the force the constitutive layer implies from u
    equilibrium: float = 0.01  # net force and torque of f
    eps_u: float = 0.01  # floor of the displacement normalisation, voxels
    eps_g: float = 1e-3  # floor of the force normalisation, f h / E

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not float(getattr(self, f.name)) >= 0:
                raise ValueError(f"LossWeights.{f.name} must be >= 0, got {getattr(self, f.name)}")


def implied_force(u_voxels, poisson_ratio, law: str = "linear"):
    """Constitutive layer: ``g = f h / E`` implied by ``u`` (voxels) on a unit-spaced grid.

    Args:
      u_voxels: (Z, Y, X, 3) displacement in voxels (isotropic voxels).
      poisson_ratio: scalar (may be traced).
      law: "linear" or "neo-hookean".

    Returns (Z, Y, X, 3); only interior voxels (not on a face) are meaningful.
    """
    if law not in LAWS:
        raise ValueError(f"law must be one of {LAWS}, got {law!r}")
    moduli = jnp.stack(lame_parameters(1.0, jnp.asarray(poisson_ratio, u_voxels.dtype))).astype(u_voxels.dtype)  # / E
    scale = jnp.ones(tuple(n - 1 for n in u_voxels.shape[:3]), u_voxels.dtype)
    return jax.grad(energy)(u_voxels, scale, None, None, moduli, law, (1.0, 1.0, 1.0))


def interior_mask(shape, margin: int = 1, dtype=jnp.float32):
    """1 on voxels at least ``margin`` from every face, else 0 (Z, Y, X, 1)."""
    m = jnp.zeros(shape, dtype)
    sl = tuple(slice(margin, n - margin) for n in shape)
    return m.at[sl].set(1)[..., None]


def _sq(x, axes=(1, 2, 3, 4)):
    return jnp.sum(x * x, axis=axes)


def net_force_and_torque(g):
    """``|sum g|^2 + |sum (x - c) x g|^2 / R^2`` per sample of (N, Z, Y, X, 3) forces (voxel
    units, ``c`` the box centre, ``R`` its half-diagonal): zero for a cell in equilibrium."""
    shape = g.shape[1:4]
    x = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=g.dtype) for s in shape], indexing="ij"), -1)
    x = x - jnp.asarray([(s - 1) / 2 for s in shape], g.dtype)
    radius2 = sum((s / 2) ** 2 for s in shape)
    net = jnp.sum(g, axis=(1, 2, 3))
    torque = jnp.sum(jnp.cross(jnp.broadcast_to(x, g.shape), g), axis=(1, 2, 3))
    return jnp.sum(net**2, -1) + jnp.sum(torque**2, -1) / radius2


def losses(u_pred, g_pred, u_true, g_true, poisson_ratio, weights: LossWeights, law: str = "linear"):
    """All loss terms for a batch (N, Z, Y, X, 3) in voxel / dimensionless units.

    Returns ``(total, terms)``; ``terms`` maps each name to its batch mean."""
    n_vox = u_true.shape[1] * u_true.shape[2] * u_true.shape[3]
    den_u = _sq(u_true) + n_vox * weights.eps_u**2
    den_g = _sq(g_true) + n_vox * weights.eps_g**2
    terms = {"displacement": jnp.mean(_sq(u_pred - u_true) / den_u), "force": jnp.mean(_sq(g_pred - g_true) / den_g)}
    if weights.consistency > 0:
        g_phys = jax.vmap(lambda u, nu: implied_force(u, nu, law))(u_pred, poisson_ratio)
        mask = interior_mask(u_true.shape[1:4], 1, u_true.dtype)
        terms["consistency"] = jnp.mean(_sq(mask * (g_pred - g_phys)) / den_g)
    if weights.equilibrium > 0:
        scale = jnp.sum(jnp.linalg.norm(g_true, axis=-1), axis=(1, 2, 3)) ** 2 + (n_vox * weights.eps_g) ** 2
        terms["equilibrium"] = jnp.mean(net_force_and_torque(g_pred) / scale)
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, terms
