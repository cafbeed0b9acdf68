"""Synthetic ground truth: bead rendering (and, later, FEM and random cells)."""
