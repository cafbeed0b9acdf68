"""The learned reconstruction: the 3D network (:mod:`~tfm.nn.unet3d`), its constitutive
layer and losses (:mod:`~tfm.nn.physics`), its trainer (:mod:`~tfm.nn.train`, on the
shared machinery of :mod:`tfm.learn`) and tiled inference (:mod:`~tfm.nn.infer`)."""
