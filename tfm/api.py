"""Top-level entry points: thin functions that validate, dispatch to a method and wrap
its output in a :class:`~tfm.result.Result`."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

from .classical import dvc, piv
from .classical.fttc import fttc_3d
from .classical.fttc2d import fttc_2d
from .grid import Grid
from .material import LinearElastic, Material
from .result import Result

FORCE_METHODS = ("inverse", "fttc")
FORCE_GRIDS = ("auto", "dvc", "fine")
RECONSTRUCT_METHODS = ("classical", "dl")


def reconstruct_forces(displacement, grid: Grid, material, method: str = "inverse", regularization="auto",
                       mask=None, weights=None, start_um=None, **options) -> Result:
    """Body-force density (pN/µm³) that a cell applies to the matrix, from the matrix's
    displacement (µm).

    Args:
      displacement: (Z, Y, X, 3) array, components (u_z, u_y, u_x), µm.
      grid: :class:`~tfm.grid.Grid` of the displacement samples.
      material: the matrix, :class:`~tfm.material.LinearElastic`; for the inverse also
        the nonlinear laws :class:`~tfm.material.NeoHookean` and
        :class:`~tfm.material.SemiAffineFiber` (collagen), which it solves with the voxel
        FEM's operator (``operator="fem"``, the default for them; matrix-free L-BFGS on the
        same objective, forces from the law's energy by autodiff), warm-started from the
        linear inverse with the law's small-strain moduli.
      method: ``"inverse"`` (the default: the regularised inverse of
        :mod:`tfm.classical.inverse`, an L1 penalty that keeps forces where the cell is,
        noise estimated from the data, alpha by the discrepancy principle) or ``"fttc"``
        (Fourier reconstruction with a Tikhonov filter, :func:`tfm.classical.fttc.fttc_3d`).
      regularization: inverse: ``"auto"`` (discrepancy principle) or a float alpha >= 0;
        FTTC: ``"auto"`` (GCV), ``"gcv"``, ``"lcurve"`` or a float alpha >= 0.
      mask: inverse: optional (Z, Y, X) bool, True in the cell: left out of the noise
        estimate and, with ``support_um``, where (within that distance) forces may be.
      weights: inverse: optional (Z, Y, X) >= 0, the trust in each measurement (e.g. the
        DVC's ``valid`` map; 0 = not measured).
      start_um: inverse: optional (Z, Y, X, 3) µm where its solver starts (a previous
        frame's fitted field): fewer iterations to the same tolerance.
      **options: inverse: fields of :class:`~tfm.classical.inverse.InverseConfig`
        (``operator``, ``boundary``, ``penalty``, ``noise_um``, ``support_um``, ...); FTTC:
        ``pad``, ``pad_fraction``.

    Returns:
      :class:`~tfm.result.Result` with ``displacement`` (the measured one), ``force`` and
      ``info`` (for the inverse also ``info["displacement_fit"]``, the displacement the
      forces produce, and the noise, alpha and misfit).
    """
    if method not in FORCE_METHODS:
        raise ValueError(f"method must be one of {FORCE_METHODS}, got {method!r}")
    if method == "fttc":
        if mask is not None or weights is not None or start_um is not None:
            raise ValueError("mask, weights and start_um apply to method='inverse' (FTTC uses every point equally)")
        if not isinstance(material, LinearElastic):
            raise TypeError(f"material must be a tfm.LinearElastic for method='fttc', got {type(material).__name__}")
        force, info = fttc_3d(displacement, grid, material, regularization=regularization, **options)
    else:
        force, info = _inverse(displacement, grid, material, regularization, mask, weights, options, start_um)
    info = {"method": method, "youngs_modulus_pa": material.youngs_modulus_pa, "poisson_ratio": material.poisson_ratio, **info}
    return _with_equilibrium(Result(grid=grid, displacement=displacement, force=force, info=info))


def _inverse(displacement, grid, material, regularization, mask, weights, options, start_um=None):
    from .classical import inverse

    if isinstance(regularization, str):
        if regularization not in ("auto", "discrepancy"):
            raise ValueError(f"regularization for method='inverse' must be 'auto', 'discrepancy' or a number >= 0, "
                             f"got {regularization!r} (GCV and the L-curve are FTTC's rules)")
        alpha = "auto"
    elif isinstance(regularization, bool) or not isinstance(regularization, (int, float, np.floating, np.integer)):
        raise ValueError(f"regularization must be 'auto' or a number >= 0, got {regularization!r}")
    else:
        alpha = float(regularization)
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"regularization must be 'auto' or a finite number >= 0, got {regularization!r}")
    if "alpha" in options:
        raise TypeError("pass alpha as regularization=..., not as an option")
    names = {f.name for f in dataclasses.fields(inverse.InverseConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown option(s) for method='inverse': {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    nonlinear = isinstance(material, Material) and not material.is_linear()
    if nonlinear:
        options = {"operator": "fem", **options}
    config = inverse.InverseConfig(alpha=alpha, **options)
    info0 = {}
    if config.operator == "fem" and nonlinear and start_um is None:
        # The linear inverse with the law's small-strain moduli: the nonlinear solve starts there.
        linear = dataclasses.replace(config, operator="fft", boundary="free")
        with warnings.catch_warnings():  # its noise warning is the nonlinear solve's too: said once, by that
            warnings.simplefilter("ignore")
            _, start_um, lin = inverse.solve(displacement, grid, material.linearized(), weights=weights, mask=mask,
                                             config=linear)
        info0 = {"warm_start": "linear", "linear_time_s": lin["time_total_s"]}
    force, u_fit, info = inverse.solve(displacement, grid, material, weights=weights, mask=mask, config=config,
                                       start_um=start_um)
    return force, {**info, **info0, "displacement_fit": u_fit}


def measure_displacement(reference, deformed, grid, mask=None, progress=None, initial_um=None, **options) -> Result:
    """Displacement between a relaxed (``reference``) and a loaded (``deformed``) bead
    volume by digital volume correlation (:mod:`tfm.classical.dvc`), or between two 2D
    bead images by PIV with the same correlator (flat windows, :mod:`tfm.classical.piv`).

    Args:
      reference, deformed: (Z, Y, X) volumes, or (Y, X) images, of the same shape.
      grid: their :class:`~tfm.grid.Grid` (as :func:`tfm.io.read_volume` returns it), or
        the voxel size (z, y, x) / pixel size (y, x) in µm.
      mask: optional boolean (Z, Y, X), True inside the cell (excluded).
      progress: a :class:`tfm.progress.Progress`, or True for a progress bar (default silent).
      initial_um: 3D: a field on the last pass's window centres to start from (the
        previous frame of a time series; :func:`tfm.classical.dvc.correlate`).
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
        if initial_um is not None:
            raise ValueError("initial_um applies to 3D volumes (the DVC)")
        u, out, info = piv.correlate_2d(reference, deformed, grid, mask=mask, progress=progress, **options)
        return Result(grid=out, displacement=u, info={"method": "piv", **info})
    config = dvc.DVCConfig(**options)
    u, out, info = dvc.correlate(reference, deformed, grid, mask=mask, config=config, progress=progress,
                                 initial_um=initial_um)
    return Result(grid=out, displacement=u, info={"method": "dvc", **info})


def reconstruct(reference, deformed, grid, material, method: str = "classical", mask=None,
                regularization="auto", progress=None, dvc_options: dict | None = None, model=None,
                dl_options: dict | None = None, force_method: str = "inverse", force_options: dict | None = None,
                force_grid: str = "dvc", force_spacing_um: float = 1.5, warm_start: Result | None = None) -> Result:
    """Bead volume pair -> displacement and force density in one call.

    ``grid`` is the volumes' :class:`~tfm.grid.Grid` or their voxel size (z, y, x) in µm.

    ``method="classical"``: :func:`measure_displacement` (DVC), then
    :func:`reconstruct_forces` with ``force_method`` (``"inverse"``, the default, or
    ``"fttc"``) and ``force_options`` on the DVC grid; the inverse weighs each point by the
    DVC's ``valid`` map and takes the cell as the windows the ``mask`` covers. Where the
    force is solved: ``force_grid="fine"`` on a grid about ``force_spacing_um`` apart whose
    nodes include the DVC's window centres, each window entering as the mean of the
    displacement over its gel part (:mod:`tfm.classical.windows`; with a ``mask``, the
    least-squares force at the cell, early-stopped at the noise), ``"dvc"`` on the DVC grid
    itself, each window a point measurement (the default: on the FM-Track stacks the fine
    grid's force still depends on where its solver stops, docs/methods.md); ``"auto"`` is
    ``"fine"`` where a ``mask`` is given to the inverse and the DVC returns its window grid,
    else ``"dvc"`` (the fine grid without a mask is measured but slow). With
    ``"fine"`` the result is on the fine grid, its displacement the field the forces
    produce, and the DVC's own field is in ``info["dvc"]["displacement_um"]`` (on
    ``info["dvc"]["grid"]``; ``result.measured()`` gives it as a Result). ``info`` holds both steps' info (``info["dvc"]``, the force
    step's keys at top level, ``force_grid``) and the timings (``time_dvc_s``,
    ``time_forces_s``).

    ``method="dl"``: the learned path (:func:`tfm.nn.infer.predict`): a parameter-free,
    coarse-to-fine motion measurement, then the physics-informed 3D network, in one call.
    ``model`` is a saved-model or ``tfm train`` / ``tfm adapt`` run directory, or None for the
    shipped default weights; ``dl_options`` go to ``predict`` (``tile``, ``overlap``,
    ``drift``, ``levels``, ``output_grid``). The fields are on the network's grid (block
    centres of 2³ working voxels: the resolution they have; ``result.grid`` says where), or
    on the input voxels with ``dl_options={"output_grid": "input"}``. ``material`` may be
    :class:`~tfm.material.NeoHookean` too. ``mask`` is where the drift fit measures "far"
    from (the network itself sees the cell as the bead-free region).

    ``warm_start``: a classical result of a pair with the same reference and options (the
    previous frame of a time series, :func:`tfm.series.reconstruct_series`): the DVC's
    last pass starts from its measured field (the coarse passes skipped) and the inverse on
    the DVC grid from its fitted field. The iterations still run to their tolerances, so
    the answer moves only within the DVC's noise (FM-Track's Endo1 frame started from the
    Normal frame: 0.045 µm RMS against a noise estimate of 0.042 µm, contractility 7 %;
    docs/series-batch.md). Ignored by ``method="dl"``.

    Returns a :class:`~tfm.result.Result` with ``displacement`` (µm) and ``force`` (pN/µm³).
    """
    if method not in RECONSTRUCT_METHODS:
        raise ValueError(f"method must be one of {RECONSTRUCT_METHODS}, got {method!r}")
    _check_force_step(force_method, force_grid, force_spacing_um)
    if method == "dl":
        if force_options:
            raise ValueError("force_options apply to method='classical'")
        from .nn.infer import predict

        return _with_equilibrium(predict(reference, deformed, grid, material, model=model, progress=progress, mask=mask,
                                         **(dl_options or {})))
    t0 = time.perf_counter()
    initial = _initial_field(warm_start, dvc_options)
    disp = measure_displacement(reference, deformed, grid, mask=mask, progress=progress, initial_um=initial,
                                **(dvc_options or {}))
    start = warm_start.info.get("displacement_fit") if warm_start is not None and initial is not None else None
    return forces_from_measurement(disp, Grid.of(np.shape(reference), grid), material, mask=mask,
                                   regularization=regularization, force_method=force_method, force_options=force_options,
                                   force_grid=force_grid, force_spacing_um=force_spacing_um, progress=progress,
                                   start_um=start, time_dvc_s=time.perf_counter() - t0)


def _check_force_step(force_method, force_grid, force_spacing_um) -> None:
    if force_method not in FORCE_METHODS:
        raise ValueError(f"force_method must be one of {FORCE_METHODS}, got {force_method!r}")
    if force_grid not in FORCE_GRIDS:
        raise ValueError(f"force_grid must be one of {FORCE_GRIDS}, got {force_grid!r}")
    if force_grid == "fine" and force_method != "inverse":
        raise ValueError("force_grid='fine' needs force_method='inverse'")
    if not (np.isfinite(force_spacing_um) and force_spacing_um > 0):
        raise ValueError(f"force_spacing_um must be a spacing > 0 (µm), got {force_spacing_um!r}")


def _initial_field(warm_start, dvc_options):
    """The DVC's starting field from a previous classical result (None: start afresh)."""
    if warm_start is None:
        return None
    if not isinstance(warm_start, Result) or "dvc" not in warm_start.info:
        raise TypeError("warm_start must be a classical tfm.Result of tfm.reconstruct (the previous frame)")
    if (dvc_options or {}).get("output_spacing_um") is not None or "window_grid" in warm_start.info["dvc"]:
        return None  # a resampled field is not on the windows: start afresh
    return warm_start.measured().displacement


def forces_from_measurement(disp: Result, image_grid: Grid, material, mask=None, regularization="auto",
                            force_method: str = "inverse", force_options: dict | None = None, force_grid: str = "dvc",
                            force_spacing_um: float = 1.5, progress=None, start_um=None, time_dvc_s: float = 0.0) -> Result:
    """The force step of :func:`reconstruct` (same arguments) from a measured displacement
    ``disp`` (:func:`measure_displacement`'s Result, or a field accumulated from such, with
    its info's ``valid``, ``masked`` and ``passes``) of volumes on ``image_grid``.
    ``start_um``: where the inverse on the DVC grid starts (a previous fitted field)."""
    _check_force_step(force_method, force_grid, force_spacing_um)
    t0 = time.perf_counter() - time_dvc_s
    t1 = time.perf_counter()
    masked = mask is not None and disp.info["masked"].any()
    linear = not isinstance(material, Material) or material.is_linear()
    if force_grid == "fine" and not linear:
        raise ValueError("force_grid='fine' assumes a linear matrix: a nonlinear law runs on the DVC grid (force_grid='dvc')")
    if "window_grid" not in disp.info and (force_grid == "fine" or (force_grid == "auto" and masked and linear
                                                                   and force_method == "inverse")):
        return _forces_on_fine_grid(disp, image_grid, material, mask, regularization, force_options,
                                    force_spacing_um, t0, t1, progress)
    if force_grid == "fine":
        raise ValueError("force_grid='fine' needs the DVC's window grid (no output_spacing_um in dvc_options)")
    extra = {}
    if force_method == "inverse":
        extra = {"weights": disp.info["valid"].astype(np.float32), "mask": disp.info["masked"] if masked else None}
        if start_um is not None and np.shape(start_um) == disp.displacement.shape:
            extra["start_um"] = start_um
    forces = reconstruct_forces(disp.displacement, disp.grid, material, method=force_method,
                                regularization=regularization, **extra, **(force_options or {}))
    # forces.info holds its equilibrium already (reconstruct_forces: the same force on the same grid)
    info = {**forces.info, "method": "classical", "force_method": force_method, "force_grid": "dvc", "dvc": disp.info,
            "time_dvc_s": t1 - t0,
            "time_forces_s": time.perf_counter() - t1}
    return Result(grid=disp.grid, displacement=disp.displacement, force=forces.force, info=info)


def _with_equilibrium(result: Result) -> Result:
    """``result`` with ``info["equilibrium"]`` (:meth:`Result.equilibrium`: net force and
    torque, and their relative sizes), for every 3D force reconstruction."""
    if result.force is not None and result.grid.ndim == 3:
        result.info["equilibrium"] = result.equilibrium()
    return result


def _forces_on_fine_grid(disp, image_grid, material, mask, regularization, force_options, spacing_um, t0, t1,
                         progress=None) -> Result:
    """The force step of :func:`reconstruct` on a grid finer than the DVC's, the windows as
    window-mean measurements (:func:`tfm.classical.windows.solve`)."""
    from .classical import inverse, windows
    from .fields import resample

    options = dict(force_options or {})
    at_cell = mask is not None and np.any(mask)
    if at_cell and (regularization not in ("auto", "discrepancy") or "alpha" in options or "penalty" in options):
        raise ValueError("regularization / alpha / penalty: with a cell mask the fine force grid is regularised by "
                         "stopping its least-squares fit at the noise (noise_um, discrepancy, support_um apply); a fixed "
                         "alpha or another penalty needs force_grid='dvc'")
    if regularization not in ("auto", "discrepancy"):
        options["alpha"] = float(regularization)
    config = inverse.InverseConfig(**options)
    window_um = np.asarray(disp.info["passes"][-1]["window"]) * np.asarray(image_grid.spacing_um)
    fine, _, _ = windows.fine_grid(disp.grid, window_um, spacing_um)
    mask_fine = None
    if at_cell:  # the cell on the fine grid (nearest voxels' majority)
        mask_fine = resample(np.asarray(mask, np.float32), image_grid, fine) > 0.5
    force, u_fit, grid, info = windows.solve(disp.displacement, disp.grid, material, window_um,
                                             weights=disp.info["valid"].astype(np.float32), mask=mask_fine,
                                             config=config, target_um=spacing_um, progress=progress)
    dvc_info = {**disp.info, "displacement_um": np.asarray(disp.displacement, np.float32),
                "grid": {"shape": list(disp.grid.shape), "spacing_um": list(disp.grid.spacing_um),
                         "origin_um": list(disp.grid.origin_um)}}
    info = {**info, "method": "classical", "force_method": "inverse", "force_grid": "fine", "dvc": dvc_info,
            "time_dvc_s": t1 - t0, "time_forces_s": time.perf_counter() - t1}
    return _with_equilibrium(Result(grid=grid, displacement=u_fit, force=force, info=info))


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
      regularization: ``"auto"`` (the Bayesian evidence, with the noise estimated from
        the field unless ``noise_variance`` is passed), ``"bayesian"``, ``"gcv"``,
        ``"lcurve"`` or a float alpha >= 0.

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
