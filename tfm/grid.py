"""Regular grids: shape, voxel spacing, origin, coordinates and FFT wavevectors.

A :class:`Grid` is the single place that knows where samples lie in space. Point
``(k, j, i)`` of a 3D grid lies at ``origin_um + (k, j, i) * spacing_um``, axes in
``(z, y, x)`` order. 2D grids (for cells on substrates) use ``(y, x)``.

Wavevectors are angular: **radians per µm**, ``k = 2 * pi * fftfreq(n, d=spacing_um)``,
so that the derivative of ``exp(i k x)`` is ``i k exp(i k x)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


def _as_tuple(value, ndim: int, name: str, cast=float) -> tuple:
    if value is None:
        raise ValueError(f"{name} is required: {ndim} values in µm, {_axes(ndim)} order, or one for all axes")
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers (µm, {_axes(ndim)} order), got {value!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise ValueError(f"{name} must have {ndim} entries (one per axis, {_axes(ndim)} order), got {arr.size}")
    return tuple(cast(v) for v in arr)


def _axes(ndim: int) -> str:
    return "(z, y, x)" if ndim == 3 else "(y, x)"


SPACING_RANGE_UM = (1e-6, 1e6)  # voxel sizes tfm accepts: 1 pm to 1 m


def check_spacing(spacing_um, ndim: int = 3, name: str = "spacing_um") -> tuple:
    """``spacing_um`` as ``ndim`` finite positive floats (a scalar means isotropic), or a
    ValueError naming ``name``. Every voxel size tfm accepts is checked here."""
    out = _as_tuple(spacing_um, ndim, name)
    if not all(math.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"{name} must be finite and > 0 along every axis (µm, {_axes(ndim)} order), got {spacing_um!r}")
    if not all(SPACING_RANGE_UM[0] <= s <= SPACING_RANGE_UM[1] for s in out):
        raise ValueError(f"{name} {spacing_um!r} lies outside {SPACING_RANGE_UM} µm (1 pm to 1 m): a units mistake? "
                         "tfm's lengths are in µm")
    return out


def _check_shape(shape) -> tuple:
    try:
        arr = np.asarray(shape).ravel()
        ints = tuple(int(s) for s in arr)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be whole numbers of points per axis, got {shape!r}") from None
    if not all(float(a) == i for a, i in zip(arr, ints)):
        raise ValueError(f"shape must be whole numbers of points per axis, got {shape!r}")
    if len(ints) not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 entries, got {ints}")
    if any(s < 1 for s in ints):
        raise ValueError(f"shape must be positive along every axis, got {ints}")
    return ints


@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular 2D or 3D grid with physical spacing.

    Args:
      shape: number of points per axis, ``(Z, Y, X)`` (or ``(Y, X)`` in 2D).
      spacing_um: distance between neighbouring points along each axis, µm; a scalar
        means isotropic voxels.
      origin_um: position of point ``(0, 0, 0)``, µm.

    Example:
      >>> g = Grid((64, 64, 64), spacing_um=(0.8, 0.3, 0.3))
      >>> g.extent_um
      (51.2, 19.2, 19.2)

    The class is hashable and immutable, so it can be a static argument of ``jax.jit``.
    """

    shape: tuple
    spacing_um: tuple
    origin_um: tuple = None

    def __post_init__(self):
        shape = _check_shape(self.shape)
        nd = len(shape)
        spacing = check_spacing(self.spacing_um, nd)
        origin = (0.0,) * nd if self.origin_um is None else _as_tuple(self.origin_um, nd, "origin_um")
        if not all(math.isfinite(o) for o in origin):
            raise ValueError(f"origin_um must be finite, got {origin}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_um", spacing)
        object.__setattr__(self, "origin_um", origin)

    @classmethod
    def of(cls, shape, grid_or_spacing, name: str = "spacing_um") -> "Grid":
        """The grid of an array of ``shape``: ``grid_or_spacing`` is a :class:`Grid` (its
        shape must match) or a voxel size in µm (origin 0), as every pair-level function
        of tfm accepts."""
        shape = tuple(int(n) for n in shape)
        if isinstance(grid_or_spacing, Grid):
            if grid_or_spacing.shape != shape:
                raise ValueError(f"{name}: the grid's shape {grid_or_spacing.shape} does not match the data's {shape}")
            return grid_or_spacing
        return cls(shape, check_spacing(grid_or_spacing, len(shape), name))

    # -- geometry -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def voxel_volume_um3(self) -> float:
        """Volume (3D, µm³) or area (2D, µm²) of one cell of the grid."""
        return float(np.prod(self.spacing_um))

    @property
    def extent_um(self) -> tuple:
        """Length of the sampled box along each axis, ``shape * spacing_um``."""
        return tuple(round(n * d, 12) for n, d in zip(self.shape, self.spacing_um))

    def axes_um(self) -> tuple:
        """1D coordinates of the points along each axis, µm (numpy arrays)."""
        return tuple(o + d * np.arange(n) for n, d, o in zip(self.shape, self.spacing_um, self.origin_um))

    def coordinates_um(self) -> np.ndarray:
        """Positions of all points, shape ``(*shape, ndim)``, last axis in ``(z, y, x)`` order."""
        return np.stack(np.meshgrid(*self.axes_um(), indexing="ij"), axis=-1)

    def center_um(self) -> tuple:
        """Geometric centre of the sampled points."""
        return tuple(o + d * (n - 1) / 2 for n, d, o in zip(self.shape, self.spacing_um, self.origin_um))

    # -- Fourier space --------------------------------------------------------------
    def wavevector_axes(self, rfft: bool = False) -> tuple:
        """1D angular wavenumbers per axis in **radians per µm**.

        With ``rfft=True`` the last axis holds the non-negative half used by ``rfftn``.
        """
        ks = []
        for ax, (n, d) in enumerate(zip(self.shape, self.spacing_um)):
            if rfft and ax == self.ndim - 1:
                ks.append(2 * np.pi * np.fft.rfftfreq(n, d=d))
            else:
                ks.append(2 * np.pi * np.fft.fftfreq(n, d=d))
        return tuple(ks)

    def wavevectors(self, rfft: bool = False) -> np.ndarray:
        """Wavevectors of every Fourier mode, shape ``(*fourier_shape, ndim)``, radians per µm."""
        return np.stack(np.meshgrid(*self.wavevector_axes(rfft), indexing="ij"), axis=-1)

    # -- derived grids --------------------------------------------------------------
    def with_shape(self, shape: Sequence[int]) -> "Grid":
        """Same spacing and origin, another shape (e.g. a zero-padded box)."""
        return Grid(tuple(shape), self.spacing_um, self.origin_um)

    def nearest_indices(self, other: "Grid") -> tuple:
        """Per axis, the indices of this grid's points nearest to ``other``'s points, for
        comparing a field on ``other`` (e.g. DVC window centres) with one on this grid:
        ``field[np.ix_(*grid.nearest_indices(coarse))]``. Raises ValueError if ``other``
        reaches outside this grid."""
        idx = tuple(np.rint((np.asarray(ax) - o) / h).astype(int) for ax, o, h in
                    zip(other.axes_um(), self.origin_um, self.spacing_um))
        if any(i.min() < 0 or i.max() >= n for i, n in zip(idx, self.shape)):
            raise ValueError(f"other grid {other} reaches outside {self}")
        return idx

    def check_field(self, array, name: str, components: int | None = None) -> None:
        """Raise ValueError unless ``array`` is sampled on this grid.

        ``components=None`` means a scalar field of shape ``shape``; an integer means a
        vector field of shape ``(*shape, components)``.
        """
        want = self.shape if components is None else (*self.shape, components)
        got = tuple(np.shape(array))
        if got != want:
            raise ValueError(f"{name} must have shape {want} to match the grid, got {got}")
