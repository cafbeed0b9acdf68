"""What the network trains on: each synthetic sample through the motion front end, cached.

The network sees the output of :func:`tfm.nn.infer.prepare` (the working volumes, the
coarse-to-fine motion measurement) on the LK grid, never the raw volumes. That front end
has no parameters, so it runs once per sample, before training: :func:`ensure` writes,
beside each dataset ``NAME.h5``, a file ``NAME.h5.features-KEY.h5`` (``KEY`` a hash of the
front end's settings and the model's working voxel) holding per sample

=================  ================  ====================================================
dataset            shape             meaning
=================  ================  ====================================================
motion             (N, z, y, x, 3)   measured displacement, units of ``h``
context            (N, z, y, x, 8)   :func:`tfm.nn.unet3d.context_channels`
u, g               (N, z, y, x, 3)   the truth: ``u / h`` and ``g = f h / E`` on the LK grid
cell               (N, z, y, x)      the cell's volume fraction on the LK grid
nu, law, h         (N,)              Poisson ratio, law (0 linear, 1 neo-Hookean), h (µm)
rel                (N, 3)            the LK grid's voxel size over ``h``
shape              (N, 3)            the LK grid's size without the padding
done               (N,)              written completely
=================  ================  ====================================================

exactly as :func:`tfm.nn.infer.predict` prepares a user's stacks (the grid is padded to the
network's multiple; ``shape`` says how much of it is the sample). It is written sample by
sample with ``done`` set last, so a killed run resumes; the file is renamed into place when
complete. The measured motion has the stacks' drift removed as ``predict`` removes it
(``drift="auto"``: rigid, affine or slicewise by BIC, no cell mask), so the truth is the
FEM's own displacement, sampled at the LK grid's points, and its force density
anti-aliased to the LK grid's voxels.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import fsync_path
from ..fields import resample
from ..learn import config as configs
from ..progress import resolve
from . import infer
from .unet3d import UNet3D

FEATURES_VERSION = 6  # 6: integer binning to the working grid (infer.working_grid)
# LK voxels at the volume's faces left out of the loss: there the beads move in and out of
# the field of view and half of every window is missing, so the measurement says little (on
# acquisition-like data the outermost LK voxel held 30 % of the measured motion's squared
# error in 16 % of the voxels); a DVC keeps half a window inside for the same reason.
FACE_MARGIN = 1
FIELDS = ("motion", "context", "u", "g", "cell")


def cache_key(model: UNet3D) -> str:
    """Hash of everything the cached features depend on."""
    parts = {"flow": configs.to_dict(model.config.flow), "spacing_um": model.config.spacing_um,
             "multiple": infer.lk_multiple(model, 1), "version": FEATURES_VERSION}
    if model.config.drift_fit != "alone":  # (the key of every cache made before the choice existed stays)
        parts["drift_fit"] = model.config.drift_fit
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(data_path, model: UNet3D) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(f"{data_path.name}.features-{cache_key(model)}.h5")


def sample_features(s: dict, grid, model: UNet3D, law: str) -> dict:
    """One synthetic sample (a :class:`~tfm.synth.dataset.SyntheticDataset` item on ``grid``)
    -> its network inputs and truth on the (padded) LK grid."""
    from ..grid import Grid

    nu = float(s["poisson_ratio"])
    prep = infer.prepare(s["reference"], s["deformed"], grid, model)
    motion, context, rel, h = infer.network_inputs(prep, nu, law)
    lk = prep["lk"]
    shape = tuple(max(1, n // 2) for n in prep["work"].shape)
    inner = Grid(shape, lk.spacing_um, lk.origin_um)
    e = float(s["youngs_modulus_pa"])
    # the network gives the displacement less the measured translation (infer.translation), added back after it
    t = prep["translation"] * (np.asarray(lk.spacing_um, np.float32) / 2) / np.float32(h)
    u = resample(np.asarray(s["displacement"], np.float32), grid, inner) / np.float32(h) - t
    g = resample(np.asarray(s["force"], np.float32), grid, inner, antialias=True) * np.float32(h / e)
    cell = resample(np.asarray(s["cell"], np.float32), grid, inner, antialias=True)
    pad = [(0, a - b) for a, b in zip(lk.shape, shape)]
    return {"motion": motion, "context": context, "u": np.pad(u, pad + [(0, 0)]), "g": np.pad(g, pad + [(0, 0)]),
            "cell": np.pad(cell, pad), "nu": nu, "law": 1.0 if law == "neo-hookean" else 0.0, "h": h, "rel": rel,
            "shape": np.asarray(shape)}


def ensure(data_path, model: UNet3D, progress=None) -> Path:
    """The feature cache of dataset ``data_path`` for ``model``'s front end (computed now if
    missing; resumed if a run was killed)."""
    import h5py

    from ..synth.dataset import SyntheticDataset

    path = cache_path(data_path, model)
    if path.exists():
        return path
    partial = path.with_name(path.name + ".partial")
    with SyntheticDataset(data_path) as ds:
        n, grid, law = len(ds), ds.grid, ds.material
        first = None
        if not partial.exists():
            first = sample_features(ds[0], grid, model, law)
            with h5py.File(partial, "w") as h5:
                h5.attrs.update({"format": "tfm-features", "key": cache_key(model), "data": str(data_path),
                                 "spacing_um": ds.grid.spacing_um})
                for name in FIELDS:
                    v = first[name]
                    h5.create_dataset(name, (n, *v.shape), "f4", chunks=(1, *v.shape), compression="gzip",
                                      compression_opts=1, shuffle=True)
                for name in ("nu", "law", "h"):
                    h5.create_dataset(name, (n,), "f8")
                h5.create_dataset("rel", (n, 3), "f8")
                h5.create_dataset("shape", (n, 3), "i8")
                h5.create_dataset("done", (n,), bool)
        with h5py.File(partial, "r+") as h5:
            done = h5["done"][:]
            with resolve(progress).task(n, f"features {Path(data_path).name}") as bar:
                bar.update(int(done.sum()))
                for i in np.flatnonzero(~done):
                    f = first if (i == 0 and first is not None) else sample_features(ds[int(i)], grid, model, law)
                    for name in FIELDS + ("nu", "law", "h", "rel", "shape"):
                        h5[name][i] = f[name]
                    h5.flush()
                    h5["done"][i] = True
                    h5.flush()
                    bar.update(1)
    fsync_path(partial)
    os.replace(partial, path)
    return path


class FeatureSet:
    """Every cached sample of several datasets in memory, cropped and augmented on demand."""

    def __init__(self, paths):
        import h5py

        self.items = []
        for p in paths:
            with h5py.File(p, "r") as h5:
                arrays = {k: h5[k][:] for k in FIELDS + ("nu", "law", "h", "rel", "shape")}
            for i in range(len(arrays["nu"])):
                self.items.append({k: v[i] for k, v in arrays.items()})

    def __len__(self) -> int:
        return len(self.items)

    def load(self, indices, crop, rng: np.random.Generator | None, augment: bool) -> dict:
        """A batch: each sample cropped to ``crop`` (z, y, x) LK voxels (random offsets with
        ``rng``, else centred; samples smaller than the crop are padded with zeros and masked
        out of the loss, as is ``FACE_MARGIN`` at the volume's faces), flipped and
        y/x-swapped by ``rng`` when ``augment``."""
        out = {k: [] for k in ("motion", "context", "u", "g", "cell", "mask", "nu", "law", "rel")}
        for i in indices:
            it = self.items[int(i)]
            shape = tuple(int(v) for v in it["shape"])
            fields = {k: it[k] for k in ("motion", "context", "u", "g")}
            fields["cell"] = it["cell"][..., None]
            mask = np.zeros(it["motion"].shape[:3], np.float32)
            mask[tuple(slice(FACE_MARGIN, n - FACE_MARGIN) for n in shape)] = 1.0
            sl, pad = [], []
            for n, c in zip(shape, crop):
                if n >= c:
                    o = int(rng.integers(0, n - c + 1)) if rng is not None else (n - c) // 2
                    sl.append(slice(o, o + c))
                    pad.append((0, 0))
                else:
                    sl.append(slice(0, n))
                    pad.append((0, c - n))
            sl = tuple(sl)
            fields = {k: np.pad(v[sl], pad + [(0, 0)]) for k, v in fields.items()}
            mask = np.pad(mask[sl], pad)
            rel = np.asarray(it["rel"], np.float32).copy()
            if augment and rng is not None:
                fields, mask, rel = augment_sample(rng, fields, mask, rel)
            for k in ("motion", "context", "u", "g"):
                out[k].append(np.ascontiguousarray(fields[k], np.float32))
            out["cell"].append(np.ascontiguousarray(fields["cell"][..., 0], np.float32))
            out["mask"].append(mask)
            out["nu"].append(np.float32(it["nu"]))
            out["law"].append(np.float32(it["law"]))
            out["rel"].append(rel)
        return {k: np.stack(v) for k, v in out.items()}


VECTORS = ("motion", "u", "g")


def augment_sample(rng: np.random.Generator, fields: dict, mask, rel):
    """Random flips of any axis (that vector component of motion, u and g negated) and a
    lateral y/x swap (components, voxel sizes and the aspect channels swapped); z is never
    exchanged with y or x: the PSF is elongated along the optical axis."""
    fields = {k: v.copy() for k, v in fields.items()}
    for ax in range(3):
        if rng.random() < 0.5:
            fields = {k: np.flip(v, ax) for k, v in fields.items()}
            mask = np.flip(mask, ax)
            for k in VECTORS:
                fields[k][..., ax] *= -1
    if rng.random() < 0.5:
        fields = {k: np.swapaxes(v, 1, 2) for k, v in fields.items()}
        for k in VECTORS:
            fields[k] = fields[k][..., [0, 2, 1]]
        ctx = fields["context"].copy()
        ctx[..., 6] = -(ctx[..., 5] + ctx[..., 6])  # log(h_x / h) = -(log(h_z / h) + log(h_y / h))
        fields["context"] = ctx
        mask = np.swapaxes(mask, 1, 2)
        rel = rel[[0, 2, 1]]
    return fields, mask, rel
