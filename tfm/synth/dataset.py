"""Synthetic datasets: generate (cell -> FEM -> beads), store in HDF5, stream minibatches.

One sample = a random cell (:mod:`tfm.synth.cells`) in a random matrix, its equilibrium
by the voxel FEM (:mod:`tfm.synth.fem`), and the bead volume pair rendered by forward
mapping through the FEM's own trilinear field (:mod:`tfm.synth.beads`), with camera noise.

File layout (``format = "tfm-synthetic"``, version 1), N samples on a (Z, Y, X) grid:

=====================  ==================  =========  =========================================
dataset                shape               dtype      meaning
=====================  ==================  =========  =========================================
reference, deformed    (N, Z, Y, X)        uint16     bead volumes, camera counts
displacement           (N, Z, Y, X, 3)     float32    u, µm, components (z, y, x)
force                  (N, Z, Y, X, 3)     float32    body-force density, pN/µm³
cell                   (N, Z, Y, X)        float32    cell volume fraction (0-1)
modulus_scale          (N, Z, Y, X)        float32    local modulus / youngs_modulus_pa
youngs_modulus_pa, poisson_ratio, photons, ...  (N,)  float      per-sample scalars
params                 (N,)                str        JSON: cell, beads, FEM info
done                   (N,)                bool       written completely
=====================  ==================  =========  =========================================

Attributes: ``spacing_um``, ``origin_um``, ``shape``, ``material`` (law), ``seed``,
``config`` (JSON of every setting), ``tfm_version``. Volumes are chunked one sample per
chunk and compressed (gzip + shuffle), so a reader touches only the samples it needs.

Generation is resumable and atomic: it writes ``NAME.h5.partial`` sample by sample
(flushed, ``done`` set last) and renames it to ``NAME.h5`` when complete. Sample ``i``
draws from ``numpy.random.default_rng([seed, i])``, so a resumed run writes exactly what
an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ..grid import Grid
from ..material import make_law
from ..atomic import fsync_path
from ..progress import resolve
from . import beads, cells, fem

FORMAT = "tfm-synthetic"
FORMAT_VERSION = 1
VOLUME_FIELDS = ("reference", "deformed", "displacement", "force", "cell", "modulus_scale")
SCALAR_FIELDS = ("youngs_modulus_pa", "poisson_ratio", "contraction", "traction_pa", "photons", "bleaching",
                 "n_beads", "fem_seconds", "fem_iterations")
MATERIALS = ("neo-hookean", "linear", "fiber")  # tfm.material.LAW_NAMES, the default first


@dataclasses.dataclass(frozen=True)
class BeadConfig:
    """Bead rendering and camera, drawn per sample from these ranges."""

    density_per_um3: tuple = (0.015, 0.04)  # beads per µm³
    psf_sigma_um: tuple = (1.0, 0.45, 0.45)  # Gaussian PSF (z, y, x), µm
    brightness_cv: float = 0.3  # coefficient of variation of bead brightness (log-normal)
    photons: tuple = (60.0, 600.0)  # counts at a bead's peak, log-uniform
    background: tuple = (0.02, 0.1)  # relative to a bead's peak
    read_noise: float = 0.02  # relative to a bead's peak
    bleaching: tuple = (0.0, 0.15)  # mean fractional brightness loss in the deformed volume
    # The PSF from the optics instead of psf_sigma_um (Gaussian approximation of a widefield
    # PSF, Zhang, Zerubia & Olivo-Marin, Appl. Opt. 2007): sigma_xy = 0.21 lambda / NA,
    # sigma_z = 0.66 lambda n / NA², elongated along z; the bead's own size is added in
    # quadrature (a solid sphere of radius r has variance r²/5 along each axis).
    numerical_aperture: float | None = None
    wavelength_um: float = 0.52  # emission wavelength
    refractive_index: float = 1.33  # immersion / sample medium
    bead_radius_um: float = 0.0

    def __post_init__(self):
        if not all(v > 0 for v in self.density_per_um3) or self.density_per_um3[0] > self.density_per_um3[1]:
            raise ValueError(f"BeadConfig.density_per_um3 must be a (low, high) range > 0, got {self.density_per_um3}")
        if not (0 <= self.bleaching[0] <= self.bleaching[1] < 1):
            raise ValueError(f"BeadConfig.bleaching must lie in [0, 1), got {self.bleaching}")
        if self.numerical_aperture is not None and not 0 < self.numerical_aperture <= self.refractive_index:
            raise ValueError(f"BeadConfig.numerical_aperture must lie in (0, refractive_index={self.refractive_index}], "
                             f"got {self.numerical_aperture}")
        if not (self.wavelength_um > 0 and self.refractive_index >= 1 and self.bead_radius_um >= 0):
            raise ValueError("BeadConfig: wavelength_um must be > 0, refractive_index >= 1 and bead_radius_um >= 0, got "
                             f"{self.wavelength_um}, {self.refractive_index}, {self.bead_radius_um}")

    @property
    def psf(self) -> tuple:
        """The apparent bead's Gaussian sigma (z, y, x), µm."""
        if self.numerical_aperture is None:
            sig = np.asarray(self.psf_sigma_um, float)
        else:
            lam, na, n = self.wavelength_um, self.numerical_aperture, self.refractive_index
            sig = np.asarray([0.66 * lam * n / na**2, 0.21 * lam / na, 0.21 * lam / na])
        return tuple(float(v) for v in np.sqrt(sig**2 + self.bead_radius_um**2 / 5.0))


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a dataset (stored in the file; a resumed run must match)."""

    size: int | tuple = 48  # voxels per axis (or (Z, Y, X))
    spacing_um: float | tuple = 1.0  # voxel size, µm
    material: str = "neo-hookean"  # "neo-hookean", "linear" or "fiber" (collagen: saenopy's values, k = 6 E)
    boundary: str = "fixed"  # box faces: "fixed" or "free" (traction-free)
    cell: cells.CellConfig = cells.CellConfig()
    beads: BeadConfig = BeadConfig()
    fem: fem.FEMConfig = fem.FEMConfig()
    # The FEM's mesh, µm (None: the image grid). A coarser mesh over the same box keeps
    # large, finely sampled volumes cheap: beads are rendered at the image's voxels with u
    # interpolated at each bead; the labels are the FEM fields interpolated to the voxels.
    fem_spacing_um: float | tuple | None = None
    # What differs between the two acquisitions besides the cell, per sample: a rigid shift
    # of the deformed stack (magnitude in µm, uniform in this range, random direction) and
    # an axial scaling about the box centre (refractive-index mismatch). Not in the labels.
    drift_um: tuple = (0.0, 0.0)
    axial_scale: tuple = (1.0, 1.0)

    def __post_init__(self):
        shape = (self.size,) * 3 if np.isscalar(self.size) else tuple(self.size)
        if len(shape) != 3 or any(int(n) < 16 for n in shape):
            raise ValueError(f"size must be >= 16 voxels per axis, got {self.size}")
        if self.boundary not in fem.BOUNDARIES:
            raise ValueError(f"boundary must be one of {fem.BOUNDARIES}, got {self.boundary!r}")
        if self.material not in MATERIALS:
            raise ValueError(f"material must be one of {MATERIALS}, got {self.material!r}")
        if not (len(self.drift_um) == 2 and 0 <= self.drift_um[0] <= self.drift_um[1]):
            raise ValueError(f"drift_um must be a (low, high) range >= 0, got {self.drift_um}")
        if not (len(self.axial_scale) == 2 and 0.5 < self.axial_scale[0] <= self.axial_scale[1] < 2):
            raise ValueError(f"axial_scale must be a (low, high) range within (0.5, 2), got {self.axial_scale}")
        self.grid  # noqa: B018 - validates size and spacing_um now, before any file is written
        self.fem_grid  # noqa: B018

    @property
    def grid(self) -> Grid:
        shape = (int(self.size),) * 3 if np.isscalar(self.size) else tuple(int(n) for n in self.size)
        return Grid(shape, self.spacing_um)

    @property
    def fem_grid(self) -> Grid:
        """The FEM's nodes: the image grid, or a grid of about ``fem_spacing_um`` spanning the
        same box (first to last voxel centre) with at least 8 nodes per axis."""
        grid = self.grid
        if self.fem_spacing_um is None:
            return grid
        want = np.broadcast_to(np.asarray(self.fem_spacing_um, float), (3,))
        if not np.all(want > 0):
            raise ValueError(f"fem_spacing_um must be > 0, got {self.fem_spacing_um}")
        span = (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing_um)
        nodes = np.maximum(8, np.round(span / want).astype(int) + 1)
        return Grid(tuple(int(n) for n in nodes), tuple(float(v) for v in span / (nodes - 1)), grid.origin_um)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def acquisition_motion(points_um, u_um, drift_um, axial_scale: float, zc_um: float) -> np.ndarray:
    """Where the deformed stack shows what sits at ``points_um`` (..., 3) in the reference,
    relative to those points (µm): the cell's displacement ``u_um`` there, then the stage's
    rigid ``drift_um`` and the axial scaling ``axial_scale`` about the plane ``z = zc_um``
    (a refractive-index mismatch) -- the acquisition's own differences a dataset renders."""
    moved = np.asarray(points_um, np.float64) + u_um + np.asarray(drift_um, np.float64)
    moved[..., 0] = zc_um + axial_scale * (moved[..., 0] - zc_um)
    return moved - points_um


def generate_sample(config: SynthConfig, seed: int, index: int) -> dict:
    """One sample: arrays keyed like the file's datasets, plus ``params`` (a dict)."""
    import time

    from ..fields import resample

    rng = np.random.default_rng([seed, index])
    grid, mesh = config.grid, config.fem_grid
    for attempt in range(5):
        cell = cells.random_cell(rng, mesh, config.cell)
        frac, eps, weight = cells.rasterize(cell, mesh)
        scale = cells.modulus_scale(cell, mesh, frac)
        mat = make_law(config.material, cell.youngs_modulus_pa, cell.poisson_ratio)
        if cell.loading == "eigenstrain":
            load = {"eigenstrain": eps}
        else:  # traction scales with the matrix: T = traction_pa x E / 1 kPa
            load = {"body_force": cells.surface_traction(frac, weight, mesh, cell.traction_pa * cell.youngs_modulus_pa / 1000.0)}
        try:
            sol = fem.solve(mesh, mat, modulus_scale=scale, boundary=config.boundary, config=config.fem, **load)
            break
        except fem.ConvergenceError:  # a cell too strong for its matrix: draw another
            continue
    else:
        raise fem.ConvergenceError(f"sample {index}: no FEM solution after 5 random cells")
    t0 = time.perf_counter()
    u = sol.displacement
    b = config.beads
    psf = b.psf
    density = rng.uniform(*b.density_per_um3)
    # the acquisition's own differences: a rigid drift and an axial scaling of the deformed
    # stack, from a stream of their own (the other draws stay those of earlier versions)
    acq = np.random.default_rng([seed, index, 1])
    direction = acq.standard_normal(3)
    drift = acq.uniform(*config.drift_um) * direction / np.linalg.norm(direction)
    axial = acq.uniform(*config.axial_scale)
    zc = grid.center_um()[0]
    margin = float(np.abs(u).max()) + float(np.linalg.norm(drift)) + abs(axial - 1) * grid.extent_um[0] + 3 * max(psf)
    pos = beads.random_positions(grid, density, rng, margin_um=margin)
    pos = pos[np.asarray(fem.interpolate(frac, mesh, pos)) < 0.5]  # no beads inside the cell
    sd = np.sqrt(np.log1p(b.brightness_cv**2))
    bright = rng.lognormal(-0.5 * sd**2, sd, len(pos))
    bleach = rng.uniform(*b.bleaching)
    bright_def = bright * np.clip(1 - bleach * rng.uniform(0.5, 1.5, len(pos)), 0, 1)

    def acquired(p):  # where the deformed stack shows the bead at p
        d = np.asarray(fem.interpolate(u, mesh, p), np.float64)
        if axial == 1.0 and not np.any(drift):
            return d
        return acquisition_motion(p, d, drift, axial, zc)

    ref, dfm = beads.render_pair(grid, pos, acquired, psf, bright, bright_def)
    photons = float(np.exp(rng.uniform(*np.log(b.photons))))
    background = rng.uniform(*b.background)
    ref = beads.camera(ref, rng, photons, b.read_noise, background)
    dfm = beads.camera(dfm, rng, photons, b.read_noise, background)
    force = sol.force_density
    if mesh != grid:  # the labels on the image's voxels
        frac = cells.rasterize(cell, grid)[0]
        scale = cells.modulus_scale(cell, grid, frac)
        u, force = resample(np.asarray(u, np.float32), mesh, grid), resample(np.asarray(force, np.float32), mesh, grid)
    params = {"cell": cell.to_dict(), "fem": sol.info,
              "fem_grid": {"shape": list(mesh.shape), "spacing_um": list(mesh.spacing_um)},
              "beads": {"density_per_um3": density, "n": len(pos), "photons": photons, "background": background,
                        "bleaching": bleach, "psf_sigma_um": list(psf)},
              "acquisition": {"drift_um": drift.tolist(), "axial_scale": axial}, "render_seconds": time.perf_counter() - t0,
              "attempt": attempt, "seed": [seed, index]}
    return {
        "reference": ref, "deformed": dfm, "displacement": np.asarray(u, np.float32), "force": np.asarray(force, np.float32),
        "cell": frac.astype(np.float32), "modulus_scale": scale.astype(np.float32),
        "youngs_modulus_pa": cell.youngs_modulus_pa, "poisson_ratio": cell.poisson_ratio, "contraction": cell.contraction,
        "traction_pa": cell.traction_pa, "photons": photons, "bleaching": bleach, "n_beads": len(pos),
        "fem_seconds": sol.info["seconds"], "fem_iterations": sol.info["cg_iterations"], "params": params,
    }


def _create(h5, n: int, config: SynthConfig, seed: int) -> None:
    import h5py

    from .._version import __version__

    grid = config.grid
    shape = grid.shape
    h5.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "n_samples": n, "seed": seed,
                     "shape": shape, "spacing_um": grid.spacing_um, "origin_um": grid.origin_um,
                     "material": config.material, "config": config.to_json(), "tfm_version": __version__})
    comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    for name, dtype, extra in (("reference", "u2", ()), ("deformed", "u2", ()), ("displacement", "f4", (3,)),
                               ("force", "f4", (3,)), ("cell", "f4", ()), ("modulus_scale", "f4", ())):
        h5.create_dataset(name, (n, *shape, *extra), dtype=dtype, chunks=(1, *shape, *extra), **comp)
    for name in SCALAR_FIELDS:
        h5.create_dataset(name, (n,), dtype="f8", fillvalue=np.nan)
    h5.create_dataset("params", (n,), dtype=h5py.string_dtype())
    h5.create_dataset("done", (n,), dtype=bool)
    h5["displacement"].attrs["units"] = "µm"
    h5["force"].attrs["units"] = "pN/µm³"
    h5["youngs_modulus_pa"].attrs["units"] = "Pa"


def generate(path, n: int, seed: int = 0, config: SynthConfig = SynthConfig(), progress=None) -> Path:
    """Write ``n`` samples to ``path`` (HDF5), resuming a ``.partial`` file left by a killed
    run with the same settings. Returns the final path."""
    import h5py

    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; delete it or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        try:
            with h5py.File(partial, "r") as h5:
                same = (h5.attrs.get("config") == config.to_json() and int(h5.attrs.get("n_samples", -1)) == n
                        and int(h5.attrs.get("seed", -1)) == seed)
        except OSError as exc:
            raise ValueError(f"{partial} (an interrupted run) is damaged and cannot be resumed ({exc}); "
                             "delete it to start afresh") from None
        if not same:
            raise ValueError(f"{partial} holds an interrupted run with other settings (n, seed or config); "
                             "delete it to start afresh")
    else:
        with h5py.File(partial, "w") as h5:
            _create(h5, n, config, seed)
    with h5py.File(partial, "r+") as h5:
        done = h5["done"][:]
        todo = np.flatnonzero(~done)
        with resolve(progress).task(n, f"synth {path.name}") as bar:
            bar.update(int(done.sum()))
            for i in todo:
                s = generate_sample(config, seed, int(i))
                for name in VOLUME_FIELDS:
                    h5[name][i] = s[name]
                for name in SCALAR_FIELDS:
                    h5[name][i] = s[name]
                h5["params"][i] = json.dumps(s["params"], default=float)
                h5.flush()
                h5["done"][i] = True
                h5.flush()
                bar.update(1, f"FEM {s['fem_seconds']:.1f}s")
    fsync_path(partial)
    os.replace(partial, path)
    fsync_path(path.parent)
    return path


class SyntheticDataset:
    """Read a dataset written by :func:`generate` without loading it whole.

    ``ds[i]`` returns one sample (a dict); :meth:`batches` streams shuffled minibatches;
    :meth:`split` gives disjoint train/validation/test index sets."""

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"dataset not found: {self.path}")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"cannot open {self.path} as a tfm synthetic dataset (HDF5): {exc}") from None
        if self._h5.attrs.get("format") != FORMAT:
            self._h5.close()
            raise ValueError(f"{self.path} is not a tfm synthetic dataset (format attribute missing)")
        a = self._h5.attrs
        self.grid = Grid(tuple(int(v) for v in a["shape"]), tuple(float(v) for v in a["spacing_um"]),
                         tuple(float(v) for v in a["origin_um"]))
        self.material = str(a["material"])
        self.config = json.loads(a["config"])
        done = self._h5["done"][:]
        if not done.all():
            raise ValueError(f"{self.path}: {int((~done).sum())} samples were never written")

    def __len__(self) -> int:
        return int(self._h5["done"].shape[0])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        out = {name: self._h5[name][i] for name in VOLUME_FIELDS + SCALAR_FIELDS}
        out["params"] = json.loads(self._h5["params"][i])
        return out

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple:
        """Disjoint index arrays (sorted) in the given proportions, by a seeded permutation."""
        f = np.asarray(fractions, dtype=float)
        if np.any(f < 0) or not np.isclose(f.sum(), 1.0):
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
        perm = np.random.default_rng(seed).permutation(len(self))
        cuts = np.round(np.cumsum(f)[:-1] * len(self)).astype(int)
        return tuple(np.sort(p) for p in np.split(perm, cuts))

    def batches(self, batch_size: int, indices=None, shuffle: bool = True, seed: int = 0, epochs: int = 1,
                fields=("reference", "deformed", "displacement", "force", "youngs_modulus_pa", "poisson_ratio"),
                drop_last: bool = False):
        """Yield dicts of stacked arrays, ``batch_size`` samples each, reading only those."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bad = [f for f in fields if f not in VOLUME_FIELDS + SCALAR_FIELDS]
        if bad:
            raise ValueError(f"unknown fields {bad}; available: {VOLUME_FIELDS + SCALAR_FIELDS}")
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=int)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(idx) if shuffle else idx
            stop = len(order) - (len(order) % batch_size if drop_last else 0)
            for s in range(0, stop, batch_size):
                sel = order[s : s + batch_size]
                yield {f: np.stack([self._h5[f][int(i)] for i in sel]) for f in fields}

    def close(self) -> None:
        self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
