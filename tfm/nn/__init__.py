"""The learned reconstruction: the parameter-free motion front end (:mod:`~tfm.nn.flow`),
the 3D network (:mod:`~tfm.nn.unet3d`), its constitutive layer and losses
(:mod:`~tfm.nn.physics`), the feature cache it trains on (:mod:`~tfm.nn.features`), its
trainer (:mod:`~tfm.nn.train`, on the shared machinery of :mod:`tfm.learn`), inference
(:mod:`~tfm.nn.infer`) and self-supervised adaptation (:mod:`~tfm.nn.adapt`)."""
