"""Single-cell stiffness from bright-field images: a 2D CNN on the same JAX runtime.

Modules: :mod:`~tfm.stiffness.data` (CSV + image folder, preprocessing, group splits),
:mod:`~tfm.stiffness.model` (the residual CNN), :mod:`~tfm.stiffness.train` (training,
prediction, evaluation), :mod:`~tfm.stiffness.metrics`, :mod:`~tfm.stiffness.explain`
(Grad-CAM, SmoothGrad), :mod:`~tfm.stiffness.search` (optuna), :mod:`~tfm.stiffness.baseline`
(shape features + linear models) and :mod:`~tfm.stiffness.synth` (synthetic images). See
docs/stiffness.md.
"""
