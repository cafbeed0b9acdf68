"""Train the physics-informed 3D network on your own synthetic data, then use it.

    python examples/train_dl.py --out dl_output [--n 24] [--size 32] [--epochs 6] [--widths 8 16 32]

1. `tfm.synth.dataset.generate`: N random cells in a neo-Hookean matrix, FEM ground truth,
   bead volume pairs (what `tfm synth` writes), into OUT/train.h5 (resumable).
2. `tfm.nn.train.train`: each sample once through the motion front end (cached beside the
   data), then minibatch AdamW on the supervised displacement and force losses, the
   constitutive consistency loss and the force-moment loss (what `tfm train` runs);
   checkpoints in OUT/run/checkpoints, the best model in OUT/run/model, one JSON line per
   epoch in OUT/run/metrics.jsonl. Kill it and run it again: it resumes where it stopped.
3. The trained model and the shipped default model reconstruct a sample of the shipped,
   never-trained-on dataset (data/synthetic/sample48.h5) through
   `tfm.reconstruct(..., method="dl", model=...)` -- a 48³ volume, larger than the
   training volumes: the network is fully convolutional -- and both are scored against
   the FEM truth, beside the classical pipeline.

A few minutes on a 2-core CPU with the defaults; this small model does not reach the
shipped one (trained longer on more data, see tfm/nn/weights/default/MODEL_CARD.md).
Writes OUT/summary.json and OUT/loss.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfm
from tfm.atomic import write_json
from tfm.learn.optim import OptimConfig
from tfm.nn import train
from tfm.nn.unet3d import ModelConfig
from tfm.synth import dataset

ROOT = Path(__file__).resolve().parents[1]


def score(res, s, grid) -> dict:
    from tfm.fields import resample

    truth = tfm.Result(grid, displacement=s["displacement"], force=s["force"])
    centre = np.asarray(s["params"]["cell"]["center_um"])
    u_true = resample(s["displacement"], grid, res.grid)  # the network's grid (DL) or the DVC window centres
    u = res.displacement
    return {"displacement_correlation": float(np.sum(u * u_true) / np.sqrt(np.sum(u**2) * np.sum(u_true**2))),
            "displacement_rms_error_um": float(np.sqrt(np.mean(np.sum((u - u_true) ** 2, -1)))),
            "contractility_pn": float(res.contractility(center_um=centre)),
            "contractility_truth_pn": float(truth.contractility(center_um=centre))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dl_output")
    p.add_argument("--n", type=int, default=24, help="training samples to generate")
    p.add_argument("--size", type=int, default=32, help="training volume edge, voxels (1 µm)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = out / "train.h5"
    t0 = time.perf_counter()
    if not data.exists():
        dataset.generate(data, args.n, seed=args.seed, config=dataset.SynthConfig(size=args.size), progress=not args.quiet)
    t_gen = time.perf_counter() - t0

    lk = -(-args.size // 2)  # the network's grid: half the (1 µm) voxels
    crop = max(8, lk // 8 * 8)
    cfg = train.TrainConfig(data=(str(data),), model=ModelConfig(widths=tuple(args.widths)), epochs=args.epochs,
                            batch_size=2, crop=(crop, crop, crop), optim=OptimConfig(learning_rate=1e-3, warmup_steps=10),
                            val_fraction=0.2, checkpoint_every=50)
    t0 = time.perf_counter()
    summary = train.train(cfg, out / "run", progress=not args.quiet)
    t_train = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]

    with dataset.SyntheticDataset(ROOT / "data" / "synthetic" / "sample48.h5") as ds:
        s, grid = ds[7], ds.grid
    mat = tfm.NeoHookean(float(s["youngs_modulus_pa"]), float(s["poisson_ratio"]))
    ref, dfm = s["reference"].astype(np.float32), s["deformed"].astype(np.float32)
    results = {}
    for name, kw in (("trained here", {"method": "dl", "model": out / "run"}), ("shipped model", {"method": "dl"}),
                     ("classical", {"method": "classical"})):
        material = mat if kw["method"] == "dl" else mat.linearized()
        t0 = time.perf_counter()
        res = tfm.reconstruct(ref, dfm, grid.spacing_um, material, progress=False, **kw)
        results[name] = {**score(res, s, grid), "seconds": time.perf_counter() - t0}
    report = {"generate_seconds": t_gen, "train_seconds": t_train, "train": summary,
              "epochs": [{"epoch": r["epoch"], "train_loss": r["train"]["loss"], "val_loss": r["val"]["loss"],
                          "val_rel_u": r["val"]["rel_u"], "val_rel_f": r["val"]["rel_f"]} for r in rows],
              "sample48_7": results}
    write_json(out / "summary.json", report)
    _figure(out / "loss.png", rows)
    if not args.quiet:
        print(json.dumps(results, indent=2))
        print(f"wrote {out / 'summary.json'} and {out / 'loss.png'}")
    return 0


def _figure(path, rows) -> None:
    from tfm import viz

    plt = viz.pyplot()

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [r["epoch"] for r in rows]
    ax[0].plot(ep, [r["train"]["loss"] for r in rows], "o-", label="train")
    ax[0].plot(ep, [r["val"]["loss"] for r in rows], "s-", label="validation")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].legend()
    ax[1].plot(ep, [r["val"]["rel_u"] for r in rows], "o-", label="displacement")
    ax[1].plot(ep, [r["val"]["rel_f"] for r in rows], "s-", label="force")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation relative L2 error")
    ax[1].legend()
    fig.tight_layout()
    viz.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
