"""Classical (non-learned) reconstruction methods."""

from . import fttc, regularization

__all__ = ["fttc", "regularization"]
