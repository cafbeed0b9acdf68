"""Classical (non-learned) reconstruction methods."""

from . import dvc, fttc, regularization

__all__ = ["dvc", "fttc", "regularization"]
