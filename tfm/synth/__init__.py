"""Synthetic ground truth: random cells (:mod:`~tfm.synth.cells`), the voxel FEM that
gives their displacement and force fields (:mod:`~tfm.synth.fem`), bead volumes rendered
through those fields (:mod:`~tfm.synth.beads`) and HDF5 datasets of them
(:mod:`~tfm.synth.dataset`, ``tfm synth``)."""
