"""tfm: 3D cellular force microscopy in JAX.

Units at the API: lengths µm, moduli and stresses Pa, body-force density pN/µm³,
forces pN. Arrays: scalar volumes (Z, Y, X); vector fields (Z, Y, X, 3) with
components (u_z, u_y, u_x).
"""

from . import analytic, fields, segment
from .api import measure_displacement, reconstruct, reconstruct_forces, reconstruct_tractions
from .grid import Grid
from .material import LinearElastic, Material, NeoHookean
from .result import Result

__version__ = "0.1.0"

__all__ = [
    "Grid", "LinearElastic", "Material", "NeoHookean", "Result", "analytic", "fields", "measure_displacement", "reconstruct",
    "reconstruct_forces", "reconstruct_tractions", "segment", "__version__",
]
