"""The package version (bottom floor: any module may import it)."""

__version__ = "0.1.0"
