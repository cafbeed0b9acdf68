"""Machinery shared by every tfm network (the 3D force network, the stiffness CNN):

* :mod:`~tfm.learn.optim`: :class:`~tfm.learn.optim.OptimConfig`, the learning-rate
  schedule and the optax optimiser built from it;
* :mod:`~tfm.learn.loop`: the epoch loop (prefetch, metrics, best-model export,
  checkpoints, exact resume, divergence stop);
* :mod:`~tfm.learn.store`: saved-model directories and orbax training checkpoints;
* :mod:`~tfm.learn.init`: parameter initialisers drawn from NumPy generators;
* :mod:`~tfm.learn.config`: one (de)serialiser for the frozen configuration dataclasses.
"""
