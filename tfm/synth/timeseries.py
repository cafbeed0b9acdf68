"""Synthetic time series: one cell whose load changes from frame to frame, the same beads
imaged in every frame (fresh camera noise each time), with the true contractility per
frame -- ground truth for :func:`tfm.series.reconstruct_series`.

* :func:`contracting_sphere` -- Eshelby's contracting sphere (closed form,
  :class:`tfm.analytic.EshelbySphere`), one eigenstrain per frame.
* :func:`fem_cell` -- a FEM cell (:mod:`tfm.synth.cells`, :mod:`tfm.synth.fem`) in a
  linear gel, solved once; frame ``t`` is that field times ``scales[t]`` (linear
  elasticity: displacement and force scale with the load).
"""

from __future__ import annotations

import numpy as np

from ..grid import Grid
from ..material import LinearElastic
from ..result import Result
from . import beads

PSF_UM = (1.0, 0.5, 0.5)


def render_series(grid: Grid, positions_um, displacements, rng: np.random.Generator, psf_sigma_um=PSF_UM,
                  photons: float = 300.0):
    """``(reference, frames)``: the beads at ``positions_um`` and, per frame, moved by
    ``displacements[t]`` (a function of positions (N, 3) µm -> (N, 3) µm), as uint16
    camera counts (:func:`tfm.synth.beads.camera`, fresh noise per volume)."""
    pos = np.asarray(positions_um, np.float64)
    ref = beads.camera(beads.render(grid, pos, psf_sigma_um), rng, photons, 0.02, 0.05)
    frames = [beads.camera(beads.render(grid, pos + np.asarray(u(pos), np.float64), psf_sigma_um), rng, photons, 0.02, 0.05)
              for u in displacements]
    return ref, np.stack(frames)


def _positions(grid: Grid, inside, rng, density_per_um3: float):
    pos = beads.random_positions(grid, density_per_um3, rng, margin_um=2.0)
    idx = np.clip(np.round((pos - np.asarray(grid.origin_um)) / np.asarray(grid.spacing_um)).astype(int), 0,
                  np.asarray(grid.shape) - 1)
    return pos[~inside[tuple(idx.T)]]  # no beads inside the cell


def contracting_sphere(grid: Grid, radius_um: float, eigenstrains, material: LinearElastic, seed: int = 0,
                       density_per_um3: float = 0.02) -> dict:
    """A sphere at the grid's centre contracting by ``eigenstrains[t]`` in frame ``t``:
    ``{"reference", "frames" (T, Z, Y, X), "mask", "truth_pn"}``, ``truth_pn[t]`` the
    sphere's total inward force (its contractility)."""
    from ..analytic import EshelbySphere

    if len(eigenstrains) == 0:
        raise ValueError("eigenstrains is empty: give one per frame")
    c = np.asarray(grid.center_um())
    mask = np.linalg.norm(grid.coordinates_um() - c, axis=-1) <= radius_um
    rng = np.random.default_rng(seed)
    cells = [EshelbySphere(radius_um, float(e), tuple(c), material) for e in eigenstrains]
    ref, frames = render_series(grid, _positions(grid, mask, rng, density_per_um3),
                                [lambda q, s=s: np.asarray(s.displacement(q)) for s in cells], rng)
    return {"reference": ref, "frames": frames, "mask": mask,
            "truth_pn": np.array([s.total_radial_force_pn for s in cells])}


def fem_cell(grid: Grid, cell, material: LinearElastic, scales, seed: int = 0, density_per_um3: float = 0.02) -> dict:
    """The FEM field of ``cell`` (:class:`tfm.synth.cells.Cell`) in a linear gel, scaled
    by ``scales[t]`` in frame ``t``: ``{"reference", "frames", "mask", "truth_pn",
    "center_um", "displacement", "force"}`` (the last two at scale 1, on ``grid``);
    ``truth_pn[t]``: the contractility of the true force about the cell's centre."""
    from ..fields import trilinear
    from . import cells as cells_mod
    from . import fem

    if not isinstance(material, LinearElastic):
        raise TypeError("fem_cell scales one solution: it needs a tfm.LinearElastic gel")
    frac, eps, _ = cells_mod.rasterize(cell, grid)
    sol = fem.solve(grid, material, eigenstrain=eps, boundary="fixed")
    u, f = np.asarray(sol.displacement), np.asarray(sol.force_density)
    mask = frac > 0.5
    center = np.asarray(cell.center_um, float)
    c1 = Result(grid, u, f).contractility(center_um=center)
    rng = np.random.default_rng(seed)

    def moved(q, s):
        return s * np.asarray(trilinear(u, (q - np.asarray(grid.origin_um)) / np.asarray(grid.spacing_um)))

    ref, frames = render_series(grid, _positions(grid, mask, rng, density_per_um3),
                                [lambda q, s=float(s): moved(q, s) for s in scales], rng)
    return {"reference": ref, "frames": frames, "mask": mask, "truth_pn": c1 * np.asarray(scales, float),
            "center_um": center, "displacement": u, "force": f}
