"""Single-cell stiffness from bright-field images, end to end, on synthetic cells.

    python examples/stiffness_cnn.py --out stiffness_output [--n 600] [--epochs 20]

1. `tfm.stiffness.synth.generate`: N synthetic bright-field cells whose morphology depends
   on stiffness through stated rules (docs/stiffness.md), from 10 donors, with a few
   over-exposed frames, as a folder of 16-bit TIFFs + labels.csv (what
   `tfm stiffness synth` writes).
2. `tfm.stiffness.train.train`: the residual CNN with a regression head (log10 E) and a
   soft/stiff classification head, donor-wise train/validation/test split, AdamW,
   checkpoints (resumable), best model by validation loss (what `tfm stiffness train` runs).
3. `tfm.stiffness.train.evaluation` on the held-out donors: MAPE, R², Spearman, AUC, F1,
   sensitivity, specificity, PPV, NPV, confusion matrix, ROC figure; the shape-feature
   baseline beside it.
4. Grad-CAM and SmoothGrad maps of four test cells, with the fraction of each map's mass
   that falls on the cell.

The images are synthetic: this shows the machinery working, not a biological result.
Writes OUT/summary.json, OUT/eval/{metrics.json, predictions.csv, roc.png} and
OUT/explain_*.png. A few minutes on a 2-core CPU with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tfm import viz
from tfm.atomic import write_json
from tfm.cli.stiffness import write_evaluation
from tfm.stiffness import baseline, data, explain, metrics, synth, train
from tfm.stiffness.model import NetConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="stiffness_output")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    cells = out / "cells"
    if not (cells / "labels.csv").exists():
        synth.generate(cells, args.n, args.size, seed=5, n_donors=10,
                       rules=synth.MorphologyRules(overexposed_fraction=0.02), progress=not args.quiet)
    cfg = train.StiffnessConfig(csv=str(cells / "labels.csv"), size=args.size, epochs=args.epochs, batch_size=32,
                                net=NetConfig(widths=tuple(args.widths)))
    ds = train.load_data(cfg, progress=False)
    print(f"{len(ds)} images, {len(ds.excluded)} excluded as over-exposed; classes {ds.class_names}")
    run = out / "run"
    summary = train.train(cfg, run, progress=not args.quiet, data=ds)
    res, test_set, pred = train.evaluation(run, split="test")
    write_evaluation(out / "eval", res, test_set, pred)

    splits = json.loads((run / "splits.json").read_text())
    fit = np.flatnonzero(np.isin(ds.files, splits["train"]))
    test = np.flatnonzero(np.isin(ds.files, splits["test"]))
    base = baseline.ShapeBaseline(n_classes=len(ds.class_names)).fit(ds.images[fit], ds.log_stiffness[fit], ds.classes[fit])
    bp = base.predict(ds.images[test])
    res_base = {"regression": metrics.regression_metrics(1000 * 10.0 ** ds.log_stiffness[test], bp["stiffness_pa"]),
                "classification": metrics.classification_metrics(ds.classes[test], bp["proba"], ds.class_names)}

    model, _ = train.load_model(run)
    masks = synth.load_masks(cells)
    looks = []
    for f in splits["test"][:4]:
        img = data.read_image(f)
        x = data.preprocess(img, args.size)
        cy, cx = data.locate_cell(data.normalise(img))
        h = args.size // 2
        y0, x0 = int(round(cy - h)), int(round(cx - h))
        m = np.pad(masks[Path(f).name], args.size)[y0 + args.size : y0 + 2 * args.size, x0 + args.size : x0 + 2 * args.size]
        maps = {"Grad-CAM": explain.gradcam(model, x), "SmoothGrad": explain.smoothgrad(model, x)}
        e_pred = float(train.predict_arrays(model, x[None, ..., None])["stiffness_pa"][0])
        viz.saliency_figure(x, maps, out / f"explain_{Path(f).stem}.png", title=f"{Path(f).name}: {e_pred:.0f} Pa predicted")
        looks.append({"file": Path(f).name, "cell_area_fraction": float(m.mean()),
                      **{f"{k}_mass_on_cell": explain.mask_fraction(v, m)[0] for k, v in maps.items()}})
    rep = {"images": len(ds), "excluded": len(ds.excluded), "train": summary, "cnn_test": res, "shape_baseline_test": res_base,
           "saliency": looks}
    rep["train"].pop("excluded", None)
    write_json(out / "summary.json", rep)
    r, c = res["regression"], res["classification"]
    print(f"CNN, held-out donors: MAPE {r['mape_percent']:.0f} %, R² {r['r2_log10']:.2f}, Spearman {r['spearman']:.2f}, "
          f"AUC {c['auc']:.3f}, F1 {c['f1']:.3f}")
    rb, cb = res_base["regression"], res_base["classification"]
    print(f"shape baseline:         MAPE {rb['mape_percent']:.0f} %, R² {rb['r2_log10']:.2f}, Spearman {rb['spearman']:.2f}, "
          f"AUC {cb['auc']:.3f}, F1 {cb['f1']:.3f}")
    print("Grad-CAM mass on the cell:", ", ".join(f"{v['Grad-CAM_mass_on_cell']:.2f} (cell covers {v['cell_area_fraction']:.2f})"
                                                for v in looks))
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
