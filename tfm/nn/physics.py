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
(reverse-mode autodiff of the energy) and works in dimensionless units: lengths in a unit
``h`` (the geometric mean voxel size of the grid it runs on, whose anisotropic voxels are
``spacing`` in that unit), force as ``g = f h / E``, so one compilation serves every
stiffness, and one per grid shape every voxel size.

Losses (per sample, then averaged over the batch; ``n`` voxels, floors ``eps``)
---------------------------------------------------------------------------------
* ``displacement``: ``sum |u - u*|^2 / (sum |u* - mean u*|^2 + n eps_u^2)`` (relative to the
  field's variation: a drift of the whole stack, which the network reports and
  :func:`tfm.nn.infer.predict` removes afterwards, would otherwise dwarf the cell's field)
* ``force``: ``sum |B_k (g - g*)|^2 / (sum |B_k g*|^2 + n_k eps_g^2)`` averaged over box means
  ``B_k`` of k³ voxels, k = 1, 2, 4: the force right voxel by voxel and on the coarser scales
  a force map is read at (and where a cell's force, spread over its surface, is robust)
* ``consistency``: ``sum_interior |g - G(u)|^2 / (same denominator)``, where ``G`` is the
  constitutive layer: the predicted force must be the one the predicted displacement
  implies. Away from the cell it demands ``G(u) = 0`` -- the Navier equations of a
  force-free matrix -- which is what smooths u where there are no beads to follow.
* ``support``: binary cross-entropy of the network's support map ``s`` (where a force may
  be, :mod:`tfm.nn.unet3d`) against the cell and the voxels next to it.
* ``moments``: ``(|sum dg|^2 + |sum (x - c) dg^T|^2 / R^2) / (sum |g*|)^2`` of the force
  error ``dg = g - g*``: its net force and its first moment (the force dipole -- whose trace
  is the contractility and whose antisymmetric part the torque) must vanish. On a crop that
  holds the whole cell this is the equilibrium of the predicted force (``g*`` has none);
  unlike a plain equilibrium term it is also right on crops that cut through a cell.

Relative normalisation keeps weak and strong cells equally weighted; the floors
(``eps_u = 0.01 h``, ``eps_g = 1e-3``) stop samples with no measurable motion from
dominating with their noise. A mask leaves padding (and the volume's outermost voxels, see
:mod:`tfm.nn.features`) out of every term.
"""

from __future__ import annotations

import dataclasses
from functools import partial

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
    consistency: float = 0.01  # f vs the force the constitutive layer implies from u
    moments: float = 0.1  # net force and first moments (force dipole: contractility, torque) of the force error
    support: float = 0.1  # the support map against the cell (dilated by a voxel): binary cross-entropy
    eps_u: float = 0.01  # floor of the displacement normalisation, voxels
    eps_g: float = 1e-3  # floor of the force normalisation, f h / E

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not float(getattr(self, f.name)) >= 0:
                raise ValueError(f"LossWeights.{f.name} must be >= 0, got {getattr(self, f.name)}")


@partial(jax.jit, static_argnames="law")  # one compiled call, also where users call it outside a compiled function
def implied_force(u, poisson_ratio, law: str = "linear", spacing=(1.0, 1.0, 1.0)):
    """Constitutive layer: ``g = f h / E`` implied by ``u`` (in units of ``h``) on a grid of
    voxel size ``spacing`` (in units of ``h``, e.g. the anisotropic LK grid; may be traced).

    Args:
      u: (Z, Y, X, 3) displacement in units of ``h``.
      poisson_ratio: scalar (may be traced).
      law: "linear" or "neo-hookean".
      spacing: (3,) voxel size over ``h``.

    Returns (Z, Y, X, 3); only interior voxels (not on a face) are meaningful.
    """
    if law not in LAWS:
        raise ValueError(f"law must be one of {LAWS}, got {law!r}")
    moduli = jnp.stack(lame_parameters(1.0, jnp.asarray(poisson_ratio, u.dtype))).astype(u.dtype)  # / E
    spacing = jnp.asarray(spacing, u.dtype)
    if law == "linear":
        return _linear_force(u, moduli, spacing) / (spacing[0] * spacing[1] * spacing[2])
    scale = jnp.ones(tuple(n - 1 for n in u.shape[:3]), u.dtype)
    return jax.grad(energy)(u, scale, None, None, moduli, law, spacing) / (spacing[0] * spacing[1] * spacing[2])


_CORNERS = tuple((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1))


def element_stiffness(moduli, spacing):
    """The Q1 element's stiffness matrix (24, 24) of the linear law (rows and columns: the
    8 corners in :data:`_CORNERS` order, 3 components each): the Hessian of
    :func:`tfm.synth.fem.energy` on one element, so the operator is that energy's exactly."""
    one = jnp.ones((1, 1, 1), moduli.dtype)

    def e(v):
        return energy(v.reshape(2, 2, 2, 3), one, None, None, moduli, "linear", spacing)

    return jax.hessian(e)(jnp.zeros(24, moduli.dtype))


def _linear_force(u, moduli, spacing):
    """The nodal force ``K u`` of the linear law (the gradient of its energy) assembled
    element by element: the 8 corners of every element gathered into 24 values, one
    (24, 24) matrix product with the element stiffness, the 8 corner forces added back to
    their nodes (nodes on a face get the elements they have). The same operator as the
    autodiff of the energy (tests/test_nn.py) at a quarter of its cost (a 64³ field on 2
    CPU cores: 0.19 s -> 0.05 s). A 27-point stencil inside (faces from their elements) ran
    in 10 ms instead of 24 ms alone, but saved only about 15 ms of a 128³ prediction (the
    network's pass overlaps it with other work) and took 1.4 s more to compile per shape, so
    this stays."""
    z, y, x = (n - 1 for n in u.shape[:3])
    corners = jnp.concatenate([u[a : a + z, b : b + y, c : c + x] for a, b, c in _CORNERS], -1)
    t = corners @ element_stiffness(moduli, spacing)
    return sum(jnp.pad(t[..., 3 * k : 3 * k + 3], ((a, 1 - a), (b, 1 - b), (c, 1 - c), (0, 0)))
               for k, (a, b, c) in enumerate(_CORNERS))


def implied_force_batch(u, poisson_ratio, spacing, law: str = "linear"):
    """:func:`implied_force` over a batch (N, Z, Y, X, 3), per sample its Poisson ratio (N,)
    and voxel size (N, 3), one ``law`` for all."""
    return jax.vmap(lambda uu, nu, h: implied_force(uu, nu, law, h))(u, poisson_ratio, spacing)


def interior_mask(shape, margin: int = 1, dtype=jnp.float32):
    """1 on voxels at least ``margin`` from every face, else 0 (Z, Y, X, 1)."""
    m = jnp.zeros(shape, dtype)
    sl = tuple(slice(margin, n - margin) for n in shape)
    return m.at[sl].set(1)[..., None]


FORCE_SCALES = (1, 2, 4)  # the force loss compares box means over k³ voxels for each k here


def _pool(x, k: int):
    """Box means over k³ voxels of (N, Z, Y, X, C) (the sizes cropped to a multiple of k)."""
    if k == 1:
        return x
    n, z, y, xx, c = x.shape
    z, y, xx = z // k, y // k, xx // k
    return x[:, : z * k, : y * k, : xx * k].reshape(n, z, k, y, k, xx, k, c).mean((2, 4, 6))


def _sq(x, axes=(1, 2, 3, 4)):
    return jnp.sum(x * x, axis=axes)


def _positions(g, spacing):
    """Positions (N, Z, Y, X, 3) of the voxels of (N, Z, Y, X, 3) forces about the box centre,
    in units of ``h`` (``spacing`` (N, 3) the voxel size; None: voxels), and ``R²`` (N,), the
    box's half-diagonal squared."""
    shape = g.shape[1:4]
    x = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=g.dtype) for s in shape], indexing="ij"), -1)
    x = x - jnp.asarray([(s - 1) / 2 for s in shape], g.dtype)
    h = jnp.ones((g.shape[0], 3), g.dtype) if spacing is None else jnp.asarray(spacing, g.dtype)
    return jnp.broadcast_to(x[None] * h[:, None, None, None, :], g.shape), jnp.sum((h * jnp.asarray(shape, g.dtype) / 2) ** 2, -1)


def net_force_and_torque(g, spacing=None):
    """``|sum g|^2 + |sum (x - c) x g|^2 / R^2`` per sample of (N, Z, Y, X, 3) forces (``c``
    the box centre, ``R`` its half-diagonal; positions in units of ``h`` with ``spacing``
    (N, 3) the voxel size, or voxels): zero for a cell in equilibrium."""
    x, radius2 = _positions(g, spacing)
    net = jnp.sum(g, axis=(1, 2, 3))
    torque = jnp.sum(jnp.cross(x, g), axis=(1, 2, 3))
    return jnp.sum(net**2, -1) + jnp.sum(torque**2, -1) / radius2


def force_moments(g, spacing=None):
    """``|sum g|^2 + |sum (x - c) g^T|^2 / R^2`` per sample of (N, Z, Y, X, 3) forces: the net
    force and the full first moment (the force dipole, of which the contractility is the
    trace and the torque the antisymmetric part); ``c``, ``R``, ``spacing`` as in
    :func:`net_force_and_torque`."""
    x, radius2 = _positions(g, spacing)
    net = jnp.sum(g, axis=(1, 2, 3))
    dipole = jnp.einsum("nzyxi,nzyxj->nij", x, g)
    return jnp.sum(net**2, -1) + jnp.sum(dipole**2, (-2, -1)) / radius2


def losses(u_pred, g_pred, u_true, g_true, poisson_ratio, spacing, weights: LossWeights, mask=None, g_phys=None,
           support=None, cell=None):
    """All loss terms for a batch (N, Z, Y, X, 3) in units of ``h`` and ``E / h``; per
    sample its Poisson ratio (N,) and voxel size over ``h`` (N, 3); ``mask`` (N, Z, Y, X): 1
    where the sample is (0 in padding); ``g_phys``: the constitutive layer's force for
    ``u_pred`` when already computed (linear law); ``support`` (N, Z, Y, X, 1) the network's
    support map and ``cell`` (N, Z, Y, X) the true cell fraction, for the support term.

    Returns ``(total, terms)``; ``terms`` maps each name to its batch mean."""
    m = jnp.ones(u_true.shape[:4], u_true.dtype) if mask is None else mask
    m = m[..., None]
    n_vox = jnp.sum(m, axis=(1, 2, 3, 4))
    # relative to the field's variation over the crop, not its mean (a drift of the stack,
    # which the images show and the network reports, would otherwise dwarf the cell's field)
    mean_u = jnp.sum(m * u_true, axis=(1, 2, 3), keepdims=True) / n_vox[:, None, None, None, None]
    den_u = _sq(m * (u_true - mean_u)) + n_vox * weights.eps_u**2
    den_g = _sq(m * g_true) + n_vox * weights.eps_g**2
    terms = {"displacement": jnp.mean(_sq(m * (u_pred - u_true)) / den_u),
             "force": jnp.mean(sum(_sq(_pool(m * (g_pred - g_true), k)) / (_sq(_pool(m * g_true, k)) + n_vox / k**3 * weights.eps_g**2)
                                   for k in FORCE_SCALES) / len(FORCE_SCALES))}
    if weights.consistency > 0:
        if g_phys is None:
            g_phys = implied_force_batch(u_pred, poisson_ratio, spacing)
        inner = m * interior_mask(u_true.shape[1:4], 1, u_true.dtype)
        for ax in (1, 2, 3):  # not next to padding either
            inner = inner * jnp.roll(m, 1, ax) * jnp.roll(m, -1, ax)
        terms["consistency"] = jnp.mean(_sq(inner * (g_pred - g_phys)) / den_g)
    if weights.moments > 0:
        scale = jnp.sum(m[..., 0] * jnp.linalg.norm(g_true, axis=-1), axis=(1, 2, 3)) ** 2 + (n_vox * weights.eps_g) ** 2
        terms["moments"] = jnp.mean(force_moments(m * (g_pred - g_true), spacing) / scale)
    if weights.support > 0 and support is not None and cell is not None:
        target = (_dilate(cell) > 0.05).astype(u_true.dtype)[..., None]  # the cell and its surface layer
        p = jnp.clip(support, 1e-6, 1 - 1e-6)
        bce = -(target * jnp.log(p) + (1 - target) * jnp.log(1 - p))
        terms["support"] = jnp.mean(jnp.sum(m * bce, (1, 2, 3, 4)) / n_vox)
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, terms


def _dilate(v):
    """Max over the 3³ neighbourhood of (N, Z, Y, X)."""
    return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 3, 3, 3), (1, 1, 1, 1), "SAME")
