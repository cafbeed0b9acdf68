"""The cases on which tfm's DVC meets pyALDVC (benchmarks/dvc.py --aldvc-python): identical
rendered bead volumes, each method scored against the imposed field at its own points.

* ``shift``: a uniform shift of (0.43, -1.27, 2.61) voxels, 96³ voxels of 1 µm;
* ``smooth_1.0`` / ``smooth_1.4``: the smooth sine field of benchmarks/dvc.py at 1.0 and
  1.4 voxel RMS (max strain 3.6 % and 5 %), 96³;
* ``cell``: a contracting sphere (Eshelby, radius 8 µm, max |u| ~1.05 µm) in 72 x 192 x 192
  voxels of 0.8 x 0.3 x 0.3 µm, confocal-like PSF; scored in µm outside the sphere.

Errors are RMS over the interior points (a margin of one window step from the faces),
voxels for the first three, µm for the cell; times are warm (a second call in the same
process), cold in brackets.
"""

from __future__ import annotations

import time

import numpy as np

PSF_VOXELS = (1.2, 0.8, 0.8)
SHIFT = np.array([0.43, -1.27, 2.61])
CELL = {"shape": (72, 192, 192), "spacing": (0.8, 0.3, 0.3), "radius_um": 8.0, "eigenstrain": -0.15,
        "density_per_um3": 0.02, "psf_um": (0.9, 0.35, 0.35)}
# FM-Track's bead density and voxel size, a contracting cell reaching 2 µm (the default call, cell masked)
FMTRACK_LIKE = {"shape": (150, 300, 300), "spacing": (0.8, 0.29286, 0.29286), "radius_um": 8.0, "eigenstrain": -0.30,
                "density_per_um3": 4.4e-3, "psf_um": (1.1, 0.32, 0.3)}


WAVELENGTH = 143.0
AMPLITUDE = 1.14  # voxels: field RMS 1.4 voxel, max strain 2 pi a / lambda = 5 %


def field(q, amplitude=AMPLITUDE, wavelength=WAVELENGTH):
    """The smooth sine field of the DVC benchmark's sweeps (voxels, on 1 µm voxels)."""
    k = 2 * np.pi / wavelength
    z, y, x = q[..., 0], q[..., 1], q[..., 2]
    return np.stack([amplitude * np.sin(k * x + 0.3), amplitude * np.sin(k * z + 1.1), amplitude * np.sin(k * y + 2.0)], -1)


def _sine(q, rms):
    return field(q, amplitude=rms / np.sqrt(1.5), wavelength=WAVELENGTH)


def make_case(name: str, seed: int = 0):
    """``(reference, deformed, grid, truth(points_um) -> u_um, unit)`` of a case."""
    import tfm
    from tfm.synth import beads

    rng = np.random.default_rng(seed)
    if name in ("cell", "fmtrack_like"):
        c = CELL if name == "cell" else FMTRACK_LIKE
        grid = tfm.Grid(c["shape"], c["spacing"])
        gel = tfm.LinearElastic(1000.0, 0.45)
        sphere = tfm.analytic.EshelbySphere(c["radius_um"], c["eigenstrain"], grid.center_um(), gel)
        pos = beads.random_positions(grid, c["density_per_um3"], rng, margin_um=3)
        pos = pos[np.linalg.norm(pos - np.asarray(grid.center_um()), axis=1) > c["radius_um"]]
        truth = lambda q: np.asarray(sphere.displacement(q))  # noqa: E731
        ref, dfm = beads.render_pair(grid, pos, truth, psf_sigma_um=c["psf_um"], brightness=rng.lognormal(0, 0.3, len(pos)))
        unit = "µm"
    else:
        grid = tfm.Grid((96, 96, 96), 1.0)
        pos = beads.random_positions(grid, 0.0099, rng, margin_um=6)
        truth = (lambda q: np.broadcast_to(SHIFT, q.shape)) if name == "shift" else \
            (lambda q, r=float(name.split("_")[1]): _sine(q, r))
        ref, dfm = beads.render_pair(grid, pos, truth, psf_sigma_um=PSF_VOXELS)
        unit = "voxel"
    ref, dfm = beads.add_noise(ref, rng, photons=200.0), beads.add_noise(dfm, rng, photons=200.0)
    return ref, dfm, grid, truth, unit


def _interior(points_um, grid, margin_um):
    lo = np.asarray(grid.origin_um) + margin_um
    hi = np.asarray(grid.origin_um) + (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing_um) - margin_um
    return np.all((points_um >= lo) & (points_um <= hi), axis=-1)


def score(points_um, u_um, grid, truth, name, margin_um) -> dict:
    """RMS error and gain at ``points_um`` (N, 3) with estimates ``u_um`` (N, 3)."""
    keep = _interior(points_um, grid, margin_um) & np.all(np.isfinite(u_um), axis=1)
    if name in ("cell", "fmtrack_like"):
        keep &= np.linalg.norm(points_um - np.asarray(grid.center_um()), axis=1) > CELL["radius_um"] + 1.0
    t = truth(points_um[keep])
    e = u_um[keep] - t
    scale = 1.0 if name in ("cell", "fmtrack_like") else float(grid.spacing_um[0])
    return {"rms_error": float(np.sqrt(np.mean(np.sum(e**2, -1)))) / scale, "points": int(keep.sum()),
            "gain": float(np.sum(u_um[keep] * t) / max(np.sum(t * t), 1e-30))}


def run_tfm(name, ref, dfm, grid, truth) -> dict:
    """tfm's DVC with its defaults (drift removal off: the cases have none)."""
    import tfm

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = tfm.measure_displacement(ref, dfm, grid, drift=None)
        times.append(time.perf_counter() - t0)
    pts = res.grid.coordinates_um().reshape(-1, 3)
    out = score(pts, res.displacement.reshape(-1, 3), grid, truth, name, min(res.grid.spacing_um))
    return {**out, "cold_s": times[0], "warm_s": times[1], "windows": res.info["windows_voxels"],
            "iterations": [p["iterations"] for p in res.info["passes"]]}


def fmtrack_like() -> dict:
    """The default call (cell masked) on FM-Track-like data: valid windows, error, time."""
    import tfm

    ref, dfm, grid, truth, unit = make_case("fmtrack_like")
    mask = np.linalg.norm(grid.coordinates_um() - np.asarray(grid.center_um()), axis=-1) < FMTRACK_LIKE["radius_um"]
    t0 = time.perf_counter()
    res = tfm.measure_displacement(ref, dfm, grid, mask=mask)
    elapsed = time.perf_counter() - t0
    pts = res.grid.coordinates_um().reshape(-1, 3)
    out = score(pts, res.displacement.reshape(-1, 3), grid, truth, "fmtrack_like", min(res.grid.spacing_um))
    valid = res.info["valid"][~res.info["masked"]]
    return {**out, "unit": unit, "shape": list(grid.shape), "seconds": elapsed, "valid_fraction": float(valid.mean()),
            "windows": res.info["windows_voxels"], "bead_density_per_um3": res.info["windows_auto"]["bead_density_per_um3"],
            "max_u_um": float(np.linalg.norm(truth(np.asarray(grid.center_um()) + [[0, 0, FMTRACK_LIKE["radius_um"]]]))),
            "drift_model": res.info["drift_model"]}


def run_aldvc(python, name, ref, dfm, grid, truth, subset=16, step=8) -> dict:
    """pyALDVC at subset ``subset`` / step ``step`` voxels, its own interpreter."""
    from .peers import aldvc_raw

    try:
        out = aldvc_raw(python, ref, dfm, subset, step)
    except RuntimeError as exc:
        return {"error": str(exc)[-500:]}
    h = np.asarray(grid.spacing_um)
    pts = np.asarray(grid.origin_um) + out["nodes_zyx"] * h
    res = score(pts, out["u_zyx"] * h, grid, truth, name, step * float(h.min()))
    return {**res, "cold_s": out["cold_s"], "warm_s": out["warm_s"], "subset": subset, "step": step}
