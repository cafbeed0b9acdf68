"""Top-level entry points: thin functions that validate, dispatch to a method and wrap
its output in a :class:`~tfm.result.Result`."""

from __future__ import annotations

import time

import numpy as np

from .classical import dvc, piv
from .classical.fttc import fttc_3d
from .classical.fttc2d import fttc_2d
from .grid import Grid
from .material import LinearElastic
from .result import Result

FORCE_METHODS = ("fttc",)
RECONSTRUCT_METHODS = ("classical", "dl")


def reconstruct_forces(displacement, grid: Grid, material: LinearElastic, method: str = "fttc", regularization="auto", **options) -> Result:
    """Body-force density (pN/µm³) that a cell applies to the matrix, from the matrix's
    displacement (µm).

    Args:
      displacement: (Z, Y, X, 3) array, components (u_z, u_y, u_x), µm.
      grid: :class:`~tfm.grid.Grid` of the displacement samples.
      material: the matrix, :class:`~tfm.material.LinearElastic`.
      method: ``"fttc"`` (Fourier reconstruction in an infinite matrix,
        :func:`tfm.classical.fttc.fttc_3d`).
      regularization: ``"auto"`` (GCV), ``"gcv"``, ``"lcurve"`` or a float alpha >= 0.
      **options: passed to the method (``pad``, ``pad_fraction`` for FTTC).

    Returns:
      :class:`~tfm.result.Result` with ``displacement``, ``force`` and ``info``.
    """
    if method not in FORCE_METHODS:
        raise ValueError(f"method must be one of {FORCE_METHODS}, got {method!r}")
    force, info = fttc_3d(displacement, grid, material, regularization=regularization, **options)
    info = {"method": method, "youngs_modulus_pa": material.youngs_modulus_pa, "poisson_ratio": material.poisson_ratio, **info}
    return Result(grid=grid, displacement=displacement, force=force, info=info)


def measure_displacement(reference, deformed, grid, mask=None, progress=None, **options) -> Result:
    """Displacement between a relaxed (``reference``) and a loaded (``deformed``) bead
    volume by digital volume correlation (:mod:`tfm.classical.dvc`), or between two 2D
    bead images by PIV with the same correlator (flat windows, :mod:`tfm.classical.piv`).

    Args:
      reference, deformed: (Z, Y, X) volumes, or (Y, X) images, of the same shape.
      grid: their :class:`~tfm.grid.Grid` (as :func:`tfm.io.read_volume` returns it), or
        the voxel size (z, y, x) / pixel size (y, x) in µm.
      mask: optional boolean (Z, Y, X), True inside the cell (excluded).
      progress: a :class:`tfm.progress.Progress`, or True for a progress bar (default silent).
      **options: fields of :class:`~tfm.classical.dvc.DVCConfig` (``windows``,
        ``overlap``, ``iterations``, ``drift``, ``min_quality``, ...); for images,
        ``windows`` are 2D sizes (an int or ``(wy, wx)`` per pass).

    Returns:
      :class:`~tfm.result.Result` with ``displacement`` (µm) on the grid of window
      centres (in the input grid's coordinates), ``force=None``, and ``info`` holding the
      window sizes, the passes, a per-window ``quality`` (correlation peak) and ``valid``
      map, and the drift removed.
    """
    if np.ndim(reference) == 2:
        u, out, info = piv.correlate_2d(reference, deformed, grid, mask=mask, progress=progress, **options)
        return Result(grid=out, displacement=u, info={"method": "piv", **info})
    config = dvc.DVCConfig(**options)
    u, out, info = dvc.correlate(reference, deformed, grid, mask=mask, config=config, progress=progress)
    return Result(grid=out, displacement=u, info={"method": "dvc", **info})


def reconstruct(reference, deformed, grid, material: LinearElastic, method: str = "classical", mask=None,
                regularization="auto", progress=None, dvc_options: dict | None = None, model=None,
                dl_options: dict | None = None) -> Result:
    """Bead volume pair -> displacement and force density in one call.

    ``grid`` is the volumes' :class:`~tfm.grid.Grid` or their voxel size (z, y, x) in µm.

    ``method="classical"``: :func:`measure_displacement` (DVC), then
    :func:`reconstruct_forces` (3D FTTC) on the DVC grid. Returns the fields on the grid
    of DVC window centres; ``info`` holds both steps' info (``info["dvc"]``, the FTTC keys
    at top level) and the timings.

    ``method="dl"``: the physics-informed 3D network (:func:`tfm.nn.infer.predict`) in
    one pass, on the input voxel grid. ``model`` is a saved-model or ``tfm train`` run
    directory, or None for the shipped default weights; ``dl_options`` go to ``predict``
    (``tile``, ``overlap``). ``material`` may be :class:`~tfm.material.NeoHookean` too.
    ``mask`` is not used by the network (it sees the cell as the bead-free region).

    Returns a :class:`~tfm.result.Result` with ``displacement`` (µm) and ``force`` (pN/µm³).
    """
    if method not in RECONSTRUCT_METHODS:
        raise ValueError(f"method must be one of {RECONSTRUCT_METHODS}, got {method!r}")
    if method == "dl":
        from .nn.infer import predict

        return predict(reference, deformed, grid, material, model=model, progress=progress, **(dl_options or {}))
    t0 = time.perf_counter()
    disp = measure_displacement(reference, deformed, grid, mask=mask, progress=progress, **(dvc_options or {}))
    t1 = time.perf_counter()
    forces = reconstruct_forces(disp.displacement, disp.grid, material, regularization=regularization)
    info = {**forces.info, "method": method, "dvc": disp.info, "time_dvc_s": t1 - t0, "time_fttc_s": time.perf_counter() - t1}
    return Result(grid=disp.grid, displacement=disp.displacement, force=forces.force, info=info)


def reconstruct_tractions(displacement, grid: Grid, material: LinearElastic, thickness_um: float | None = None,
                          method: str = "fttc", regularization="auto", **options) -> Result:
    """Tractions (Pa) that a cell on a gel applies to its surface, from the surface displacement.

    Args:
      displacement: (Y, X, 2) in-plane displacement (u_y, u_x) in µm -> 2D FTTC, or
        (Y, X, 3) with the normal component last (u_y, u_x, u_z) -> 2.5D FTTC.
      grid: 2D :class:`~tfm.grid.Grid` (Y, X).
      material: the gel, :class:`~tfm.material.LinearElastic`.
      thickness_um: gel thickness (on a rigid coverslip), µm; None for a half-space.
      method: ``"fttc"``.
      regularization: ``"auto"`` (GCV), ``"gcv"``, ``"lcurve"`` or a float alpha >= 0.

    Returns:
      :class:`~tfm.result.Result` whose ``force`` is the traction (Pa); ``net_force()``,
      ``contractility()`` and ``total_force()`` in pN, ``strain_energy()`` in pN µm.
    """
    if method != "fttc":
        raise ValueError(f"method must be 'fttc', got {method!r}")
    u = np.asarray(displacement)
    if getattr(grid, "ndim", None) != 2:
        raise ValueError("grid must be a 2D tfm.Grid (Y, X) for tractions on a substrate")
    if u.ndim != 3 or u.shape[-1] not in (2, 3):
        raise ValueError(f"displacement must have shape (Y, X, 2) or (Y, X, 3), got {tuple(u.shape)}")
    mode = "2d" if u.shape[-1] == 2 else "2.5d"
    traction, info = fttc_2d(u, grid, material, thickness_um=thickness_um, mode=mode, regularization=regularization, **options)
    info = {"method": method, "youngs_modulus_pa": material.youngs_modulus_pa, "poisson_ratio": material.poisson_ratio, **info}
    return Result(grid=grid, displacement=u, force=traction, info=info)
