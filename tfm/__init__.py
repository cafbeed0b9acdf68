"""tfm: 3D cellular force microscopy in JAX.

Units at the API: lengths µm, moduli and stresses Pa, body-force density pN/µm³,
forces pN. Arrays: scalar volumes (Z, Y, X); vector fields (Z, Y, X, 3) with
components (u_z, u_y, u_x). Files in and out go through :mod:`tfm.io`; figures and 3D
views through :mod:`tfm.viz` (imported on use: ``from tfm import viz``).
"""

from . import analytic, fields, io, segment
from ._version import __version__
from .api import measure_displacement, reconstruct, reconstruct_forces, reconstruct_tractions
from .grid import Grid
from .material import LinearElastic, Material, NeoHookean
from .progress import Progress
from .result import Result

__all__ = [
    "Grid", "LinearElastic", "Material", "NeoHookean", "Progress", "Result", "analytic", "fields", "io",
    "measure_displacement", "reconstruct", "reconstruct_forces", "reconstruct_tractions", "segment", "__version__",
]
