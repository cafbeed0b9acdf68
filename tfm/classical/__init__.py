"""Classical (non-learned) reconstruction methods: 3D digital volume correlation
(:mod:`~tfm.classical.dvc`), 2D PIV with the same correlator (:mod:`~tfm.classical.piv`),
Fourier force reconstruction in 3D (:mod:`~tfm.classical.fttc`) and on substrates
(:mod:`~tfm.classical.fttc2d`), and the choice of regularisation
(:mod:`~tfm.classical.regularization`)."""

from . import dvc, fttc, fttc2d, piv, regularization

__all__ = ["dvc", "fttc", "fttc2d", "piv", "regularization"]
