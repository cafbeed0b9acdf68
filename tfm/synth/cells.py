"""Random cells for synthetic ground truth: shape, contractility pattern and matrix.

A cell is an ellipsoidal body (random semi-axes and orientation) with 0-N protrusions:
tapered capsules leaving the body along random directions. On a grid it becomes a
*volume fraction* per voxel (supersampled), which weights its loads so that sub-voxel
geometry is represented smoothly.

Loads (the cell's contraction), in one of two forms the FEM accepts:

* eigenstrain (stress-free strain, < 0 contracts), by ``pattern``:
  ``"uniform"``   isotropic ``-c I`` in the whole cell;
  ``"polarised"`` uniaxial along the cell's long axis, ``-c (0.8 e e^T + 0.2 I / 3)``;
  ``"tips"``      uniaxial along each protrusion, growing linearly from its base to its
                  tip (forces concentrate at the tips), a weak isotropic body ``-0.2 c I``;
                  a cell without protrusions contracts toward its poles instead.
* surface traction: an inward pull of ``T`` Pa spread over the cell's boundary voxels,
  ``f = T w(x) grad(phi)`` with ``phi`` the volume fraction and ``w`` the same pattern
  weights; net force and torque are projected out exactly.

Matrix: Young's modulus (log-uniform, 100 Pa - 10 kPa by default) and Poisson's ratio;
optionally a heterogeneous modulus: the cell's own stiffness and a stiffened or degraded
shell around it (remodelled matrix).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..grid import Grid
from .fem import rigid_body_modes

PATTERNS = ("uniform", "polarised", "tips")
LOADINGS = ("eigenstrain", "traction")


@dataclasses.dataclass(frozen=True)
class CellConfig:
    """Ranges the random cells are drawn from (uniform unless stated)."""

    radius_um: tuple = (3.0, 6.0)  # equivalent radius of the body (geometric mean of semi-axes)
    aspect: tuple = (1.0, 2.5)  # longest / shortest semi-axis of the body
    protrusions: tuple = (0, 4)  # number of protrusions, inclusive range
    protrusion_length_um: tuple = (3.0, 9.0)
    protrusion_radius_um: tuple = (0.8, 1.8)  # at the base; the tip is half as wide
    patterns: tuple = PATTERNS  # contractility patterns, drawn with equal probability
    contraction: tuple = (0.02, 0.15)  # eigenstrain magnitude c (dimensionless)
    traction_pa: tuple = (20.0, 300.0)  # inward traction for the "traction" loading, Pa (x E / 1 kPa)
    loadings: tuple = ("eigenstrain",)  # drawn with equal probability
    youngs_modulus_pa: tuple = (100.0, 10000.0)  # log-uniform
    poisson_ratio: tuple = (0.3, 0.48)
    cell_modulus_scale: tuple = (1.0, 1.0)  # cell's modulus / matrix's, log-uniform
    shell_probability: float = 0.0  # chance of a remodelled shell around the cell
    shell_thickness_um: tuple = (1.0, 4.0)
    shell_modulus_scale: tuple = (0.3, 3.0)  # log-uniform
    margin_fraction: float = 0.15  # keep the cell this fraction of the box away from the faces

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and f.name not in ("patterns", "loadings") and (
                    len(v) != 2 or v[0] > v[1] or (f.name not in ("protrusions", "poisson_ratio") and v[0] <= 0)):
                raise ValueError(f"CellConfig.{f.name} must be a (low, high) range with 0 < low <= high, got {v}")
        bad = [p for p in self.patterns if p not in PATTERNS]
        if bad or not self.patterns:
            raise ValueError(f"CellConfig.patterns must be a non-empty subset of {PATTERNS}, got {self.patterns}")
        bad = [p for p in self.loadings if p not in LOADINGS]
        if bad or not self.loadings:
            raise ValueError(f"CellConfig.loadings must be a non-empty subset of {LOADINGS}, got {self.loadings}")
        if not (-1 < self.poisson_ratio[0] and self.poisson_ratio[1] < 0.5):
            raise ValueError(f"CellConfig.poisson_ratio must lie in (-1, 0.5), got {self.poisson_ratio}")
        if not 0 <= self.margin_fraction < 0.5:
            raise ValueError(f"CellConfig.margin_fraction must lie in [0, 0.5), got {self.margin_fraction}")


@dataclasses.dataclass(frozen=True)
class Protrusion:
    direction: tuple  # unit vector (z, y, x) from the body centre
    base_um: tuple  # start point (inside the body)
    length_um: float
    radius_um: float  # at the base; tip radius is half


@dataclasses.dataclass(frozen=True)
class Cell:
    """One random cell and its load; all lengths µm, points in (z, y, x)."""

    center_um: tuple
    semi_axes_um: tuple  # body semi-axes along the columns of ``rotation``
    rotation: tuple  # 3x3 rotation, columns = body axes in (z, y, x)
    protrusions: tuple  # of Protrusion
    pattern: str
    loading: str
    contraction: float  # eigenstrain magnitude (eigenstrain loading)
    traction_pa: float  # inward traction (traction loading)
    youngs_modulus_pa: float
    poisson_ratio: float
    cell_modulus_scale: float = 1.0
    shell_thickness_um: float = 0.0
    shell_modulus_scale: float = 1.0

    @property
    def long_axis(self) -> np.ndarray:
        r = np.asarray(self.rotation)
        return r[:, int(np.argmax(self.semi_axes_um))]

    def to_dict(self) -> dict:
        """JSON-ready description (stored with every dataset sample)."""
        d = dataclasses.asdict(self)
        d["protrusions"] = [dataclasses.asdict(p) for p in self.protrusions]
        return d

    # -- geometry ---------------------------------------------------------------------
    def _body_coords(self, pts):
        return (pts - np.asarray(self.center_um)) @ np.asarray(self.rotation) / np.asarray(self.semi_axes_um)

    def _segment(self, p: Protrusion, pts):
        d = np.asarray(p.direction)
        rel = pts - np.asarray(p.base_um)
        t = np.clip(rel @ d / p.length_um, 0.0, 1.0)
        dist = np.linalg.norm(rel - t[..., None] * p.length_um * d, axis=-1)
        return t, dist - p.radius_um * (1 - 0.5 * t)

    def regions(self, pts):
        """Region label of each point: 0 outside, 1 body, 2 + k protrusion k; and the
        position along the owning protrusion (0 base, 1 tip)."""
        label = np.where(np.sum(self._body_coords(pts) ** 2, axis=-1) < 1.0, 1, 0)
        along = np.zeros(pts.shape[:-1])
        for k, p in enumerate(self.protrusions):
            t, sd = self._segment(p, pts)
            take = (label == 0) & (sd < 0)
            label = np.where(take, 2 + k, label)
            along = np.where(take, t, along)
        return label, along

    def signed_distance(self, pts):
        """Approximate signed distance to the cell surface (µm, < 0 inside)."""
        q = self._body_coords(pts)
        k0 = np.linalg.norm(q, axis=-1)
        k1 = np.linalg.norm(q / np.asarray(self.semi_axes_um), axis=-1)
        sd = k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)
        for p in self.protrusions:
            sd = np.minimum(sd, self._segment(p, pts)[1])
        return sd

    def extent_um(self) -> float:
        """Radius of a ball about the centre that contains the whole cell."""
        r = max(self.semi_axes_um)
        for p in self.protrusions:
            tip = np.asarray(p.base_um) + p.length_um * np.asarray(p.direction) - np.asarray(self.center_um)
            r = max(r, float(np.linalg.norm(tip)) + p.radius_um)
        return r

    # -- pattern ----------------------------------------------------------------------
    def eigenstrain_tensor(self, label, along, pts):
        """Eigenstrain (..., 3, 3) of a point by its region (not yet weighted by fraction)."""
        c = self.contraction
        eye = np.eye(3)
        out = np.zeros(label.shape + (3, 3))
        body = label == 1
        e = self.long_axis
        if self.pattern == "uniform":
            out[label > 0] = -c * eye
        elif self.pattern == "polarised":
            out[label > 0] = -c * (0.8 * np.outer(e, e) + 0.2 * eye / 3)
        else:  # tips
            if self.protrusions:
                out[body] = -0.2 * c * eye
                for k, p in enumerate(self.protrusions):
                    sel = label == 2 + k
                    d = np.asarray(p.direction)
                    out[sel] = -c * along[sel, None, None] * np.outer(d, d)
            else:  # poles of the body: uniaxial along the long axis, weight (x.e / a)^2
                s = (self._body_coords(pts[body]) [:, int(np.argmax(self.semi_axes_um))]) ** 2
                out[body] = -c * s[:, None, None] * np.outer(e, e)
        return out

    def pattern_weight(self, label, along, pts):
        """Scalar traction weight of a point (1 uniform; along the long axis: polarised;
        toward protrusion tips: tips)."""
        w = np.ones(label.shape)
        if self.pattern == "polarised":
            q = (pts - np.asarray(self.center_um)) @ self.long_axis
            w = 0.2 + 0.8 * (q / max(self.extent_um(), 1e-6)) ** 2
        elif self.pattern == "tips":
            w = np.where(label >= 2, 0.2 + along, 0.2)
            if not self.protrusions:
                q = self._body_coords(pts)[..., int(np.argmax(self.semi_axes_um))]
                w = 0.2 + q**2
        return w


def _sample_offsets(grid: Grid, supersample: int) -> np.ndarray:
    s = (np.arange(supersample) + 0.5) / supersample - 0.5
    o = np.stack(np.meshgrid(s, s, s, indexing="ij"), -1).reshape(-1, 3)
    return o * np.asarray(grid.spacing_um)


def volume_fraction(inside, grid: Grid, supersample: int = 4) -> np.ndarray:
    """Fraction of each voxel (a box of one spacing about each grid point) where
    ``inside(points (..., 3) µm) -> bool`` holds, by ``supersample**3`` sub-samples."""
    centres = grid.coordinates_um()
    frac = np.zeros(grid.shape)
    offs = _sample_offsets(grid, supersample)
    for o in offs:
        frac += inside(centres + o)
    return (frac / len(offs)).astype(np.float32)


def _box(cell: Cell, grid: Grid, pad_um: float = 0.0):
    """Index ranges of the voxels that can touch the cell (bounding box of its ball)."""
    r = cell.extent_um() + pad_um + max(grid.spacing_um)
    c = (np.asarray(cell.center_um) - np.asarray(grid.origin_um)) / np.asarray(grid.spacing_um)
    lo = np.maximum(np.floor(c - r / np.asarray(grid.spacing_um)).astype(int), 0)
    hi = np.minimum(np.ceil(c + r / np.asarray(grid.spacing_um)).astype(int) + 1, grid.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def rasterize(cell: Cell, grid: Grid, supersample: int = 3):
    """Volume fraction ``(Z, Y, X)``, eigenstrain ``(Z, Y, X, 3, 3)`` (fraction-weighted
    mean over each voxel's sub-samples) and traction weight of ``cell`` on ``grid``."""
    box = _box(cell, grid)
    sub = Grid(tuple(s.stop - s.start for s in box), grid.spacing_um,
               tuple(o + s.start * h for o, s, h in zip(grid.origin_um, box, grid.spacing_um)))
    centres = sub.coordinates_um()
    frac = np.zeros(sub.shape)
    eps = np.zeros(sub.shape + (3, 3))
    weight = np.zeros(sub.shape)
    offs = _sample_offsets(grid, supersample)
    for o in offs:
        pts = centres + o
        label, along = cell.regions(pts)
        inside = label > 0
        frac += inside
        eps += cell.eigenstrain_tensor(label, along, pts) * inside[..., None, None]
        weight += cell.pattern_weight(label, along, pts) * inside
    n = len(offs)
    full_frac = np.zeros(grid.shape, np.float32)
    full_eps = np.zeros(grid.shape + (3, 3), np.float32)
    full_w = np.zeros(grid.shape, np.float32)
    full_frac[box] = frac / n
    full_eps[box] = eps / n
    full_w[box] = np.where(frac > 0, weight / np.maximum(frac, 1), 0.0)
    return full_frac, full_eps, full_w


def surface_traction(fraction, weight, grid: Grid, traction_pa: float) -> np.ndarray:
    """Inward pull ``T w grad(phi)`` (pN/µm³) over the boundary voxels of a cell with
    volume fraction ``phi``; its net force and net torque are removed exactly (least squares
    over the six rigid-body modes on its support)."""
    from ..fields import gradient

    g = np.asarray(gradient(np.asarray(fraction, np.float64)[..., None], grid))[..., 0, :]
    f = traction_pa * np.asarray(weight, np.float64)[..., None] * g
    support = np.linalg.norm(g, axis=-1) > 0
    fs = f[support].ravel()
    q = rigid_body_modes(grid.coordinates_um()[support])  # orthonormal, on the support
    fs = (fs - q.T @ (q @ fs)).reshape(-1, 3)
    out = np.zeros(grid.shape + (3,), np.float32)
    out[support] = fs
    return out


def modulus_scale(cell: Cell, grid: Grid, fraction) -> np.ndarray:
    """Local modulus over the matrix's, ``(Z, Y, X)``: the cell's own inside (weighted by
    volume fraction), the shell's within ``shell_thickness_um`` outside, 1 elsewhere."""
    scale = np.ones(grid.shape, np.float32)
    if cell.shell_thickness_um > 0 and cell.shell_modulus_scale != 1.0:
        box = _box(cell, grid, cell.shell_thickness_um)
        pts = grid.coordinates_um()[box]
        sd = cell.signed_distance(pts)
        shell = (sd >= 0) & (sd < cell.shell_thickness_um)
        scale[box] = np.where(shell, cell.shell_modulus_scale, 1.0)
    f = np.asarray(fraction, np.float32)
    return (1 - f) * scale + f * cell.cell_modulus_scale


def _log_uniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_cell(rng: np.random.Generator, grid: Grid, config: CellConfig = CellConfig(), max_tries: int = 100) -> Cell:
    """Draw a cell that fits inside ``grid`` with the configured margin from the faces."""
    if grid.ndim != 3:
        raise ValueError(f"grid must be 3D, got shape {grid.shape}")
    ext = np.asarray(grid.extent_um)
    margin = config.margin_fraction * ext
    for _ in range(max_tries):
        r_eq = rng.uniform(*config.radius_um)
        aspect = rng.uniform(*config.aspect)
        mid = rng.uniform(1.0, aspect)  # middle axis between the short and the long
        base = np.array([aspect, mid, 1.0])
        semi = r_eq * base / np.prod(base) ** (1 / 3)
        rot = _random_rotation(rng)
        n_prot = int(rng.integers(config.protrusions[0], config.protrusions[1] + 1))
        prots = []
        for _k in range(n_prot):
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            # Start inside the body, on the ray along d, at 70 % of the body's radius there.
            q = (d @ rot) / semi
            r_surface = 1.0 / np.linalg.norm(q)
            prots.append(Protrusion(tuple(d), tuple(0.7 * r_surface * d), float(rng.uniform(*config.protrusion_length_um) + 0.3 * r_surface),
                                    float(rng.uniform(*config.protrusion_radius_um))))
        cell = Cell(center_um=(0.0, 0.0, 0.0), semi_axes_um=tuple(float(s) for s in semi), rotation=tuple(map(tuple, rot)),
                    protrusions=tuple(prots), pattern=str(rng.choice(config.patterns)), loading=str(rng.choice(config.loadings)),
                    contraction=float(rng.uniform(*config.contraction)), traction_pa=float(rng.uniform(*config.traction_pa)),
                    youngs_modulus_pa=_log_uniform(rng, *config.youngs_modulus_pa),
                    poisson_ratio=float(rng.uniform(*config.poisson_ratio)),
                    cell_modulus_scale=_log_uniform(rng, *config.cell_modulus_scale))
        if rng.random() < config.shell_probability:
            cell = dataclasses.replace(cell, shell_thickness_um=float(rng.uniform(*config.shell_thickness_um)),
                                       shell_modulus_scale=_log_uniform(rng, *config.shell_modulus_scale))
        reach = cell.extent_um() + cell.shell_thickness_um
        room = ext / 2 - margin - reach
        if np.all(room >= 0):
            centre = np.asarray(grid.center_um()) + rng.uniform(-room, room)
            shift = centre  # body was built about the origin: move body and protrusion bases
            return dataclasses.replace(cell, center_um=tuple(float(c) for c in centre), protrusions=tuple(
                dataclasses.replace(p, base_um=tuple(float(b) for b in np.asarray(p.base_um) + shift)) for p in cell.protrusions))
    raise ValueError(f"no random cell fits a box of {tuple(ext)} µm with margin {config.margin_fraction}: "
                     "use a larger grid or smaller CellConfig.radius_um / protrusion_length_um")
