"""Top-level entry points: thin functions that validate, dispatch to a method and wrap
its output in a :class:`~tfm.result.Result`."""

from __future__ import annotations

from .classical.fttc import fttc_3d
from .grid import Grid
from .material import LinearElastic
from .result import Result

FORCE_METHODS = ("fttc",)


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
