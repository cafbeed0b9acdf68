"""tfm: 3D cellular force microscopy in JAX.

Units at the API: lengths µm, moduli and stresses Pa, body-force density pN/µm³,
forces pN. Arrays: scalar volumes (Z, Y, X); vector fields (Z, Y, X, 3) with
components (u_z, u_y, u_x). Files in and out go through :mod:`tfm.io`; figures and 3D
views through :mod:`tfm.viz` (imported on use: ``from tfm import viz``).
"""

from . import jaxcache

jaxcache.enable()  # a persistent compilation cache: a second process starts warm (TFM_JAX_CACHE=off disables it)

from . import analytic, fields, io, segment  # noqa: E402
from ._version import __version__  # noqa: E402
from .api import measure_displacement, reconstruct, reconstruct_forces, reconstruct_tractions  # noqa: E402
from .grid import Grid  # noqa: E402
from .material import LinearElastic, Material, NeoHookean, SemiAffineFiber  # noqa: E402
from .progress import Progress  # noqa: E402
from .result import Result  # noqa: E402
from .series import reconstruct_series  # noqa: E402

__all__ = [
    "Grid", "LinearElastic", "Material", "NeoHookean", "Progress", "Result", "SemiAffineFiber", "analytic", "fields", "io",
    "measure_displacement", "reconstruct", "reconstruct_forces", "reconstruct_series", "reconstruct_tractions", "segment",
    "__version__",
]
