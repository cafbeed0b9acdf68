"""``tfm stiffness synth|train|predict|evaluate|explain|search``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
data: a labels CSV (columns file, stiffness_pa and/or class, optional cell_type and
donor/group) beside its images (TIFF/PNG/JPEG). Stiffness in Pa.

example (synthetic images; they validate the machinery, not biology):
  tfm stiffness synth --n 600 -o cells
  tfm stiffness train --data cells/labels.csv --out runs/stiff --epochs 30
  tfm stiffness evaluate runs/stiff --out runs/stiff/eval
  tfm stiffness explain runs/stiff cells/images/cell_00001.tif --png cam.png
  tfm stiffness predict runs/stiff my_images/ -o predictions.csv
"""


def add_parser(sub) -> None:
    s = sub.add_parser("stiffness", help="single-cell stiffness from bright-field images (2D CNN)",
                       description="Train, apply, evaluate and explain a CNN that regresses (and classifies) "
                       "single-cell stiffness from bright-field images.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ss = s.add_subparsers(dest="stiffness_command", metavar="SUBCOMMAND")

    g = ss.add_parser("synth", help="write synthetic bright-field cell images + labels.csv")
    g.add_argument("-o", "--out", required=True, help="folder to write (images/, labels.csv, masks.npz)")
    g.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    g.add_argument("--size", type=int, default=128, help="image edge, pixels (default 128)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--donors", type=int, default=8, help="number of donors (split groups) (default 8)")
    g.add_argument("--overexposed-fraction", type=float, default=0.02, help="share of over-exposed frames (default 0.02)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(run=_synth)

    t = ss.add_parser("train", help="train the CNN (group-wise train/validation/test split)")
    t.add_argument("--data", help="labels CSV")
    t.add_argument("--out", required=True, help="run directory (resumed if it holds this run)")
    t.add_argument("--config", help="a configuration JSON (e.g. best_config.json of tfm stiffness search); "
                   "--data and --epochs override it")
    t.add_argument("--task", choices=("regression", "classification", "both"), default="both")
    t.add_argument("--epochs", type=int, help="default 30")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128], help="channels per stage (default 16 32 64 128)")
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--size", type=int, default=128, help="image window, pixels (default 128)")
    t.add_argument("--thresholds-pa", type=float, nargs="+", help="classes from stiffness bins instead of the class column")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-steps", type=int, help="stop after this many steps (a later run resumes)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=_train)

    p = ss.add_parser("predict", help="predict stiffness (and class) for images")
    p.add_argument("model", help="run or saved-model directory")
    p.add_argument("source", help="labels CSV, CSV with a file column, or a folder of images")
    p.add_argument("-o", "--output", required=True, help="predictions CSV to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_predict)

    e = ss.add_parser("evaluate", help="metrics on the run's test split (or another labelled folder)")
    e.add_argument("run_dir", help="run directory (or saved model with --data)")
    e.add_argument("--data", help="labels CSV to evaluate on instead of the run's own split")
    e.add_argument("--split", choices=("train", "validation", "test"), default="test")
    e.add_argument("--out", help="folder for metrics.json, predictions.csv and roc.png")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(run=_evaluate)

    x = ss.add_parser("explain", help="Grad-CAM and SmoothGrad maps over images")
    x.add_argument("model", help="run or saved-model directory")
    x.add_argument("images", nargs="+", help="image files")
    x.add_argument("--png", help="figure to write (one image), or a folder (several); default IMAGE_explain.png")
    x.add_argument("--target", default="stiffness", help="'stiffness' (regression head) or a class name (default stiffness)")
    x.set_defaults(run=_explain)

    h = ss.add_parser("search", help="Bayesian hyperparameter search (optuna TPE) on the validation split")
    h.add_argument("--data", required=True, help="labels CSV")
    h.add_argument("--out", required=True, help="search directory (resumed)")
    h.add_argument("--trials", type=int, default=20)
    h.add_argument("--trial-epochs", type=int, default=10)
    h.add_argument("--task", choices=("regression", "classification", "both"), default="both")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--quiet", action="store_true")
    h.set_defaults(run=_search)
    s.set_defaults(run=_help, stiffness_parser=s)


def _help(args) -> int:
    args.stiffness_parser.print_help()
    return 2


def _synth(args) -> int:
    from .synth import MorphologyRules, generate

    out = generate(args.out, args.n, args.size, args.seed, MorphologyRules(overexposed_fraction=args.overexposed_fraction),
                   n_donors=args.donors, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {args.n} images and {out / 'labels.csv'}")
    return 0


def _train(args) -> int:
    import dataclasses

    from .model import NetConfig
    from .train import StiffnessConfig, train

    if args.config:
        cfg = StiffnessConfig.from_dict(json.loads(Path(args.config).read_text()))
        cfg = dataclasses.replace(cfg, csv=args.data or cfg.csv, epochs=args.epochs or cfg.epochs)
    else:
        if not args.data:
            raise ValueError("--data (a labels CSV) is required without --config")
        cfg = StiffnessConfig(csv=args.data, task=args.task, epochs=args.epochs or 30, batch_size=args.batch_size,
                              learning_rate=args.learning_rate, weight_decay=args.weight_decay, size=args.size,
                              thresholds_pa=args.thresholds_pa, seed=args.seed,
                              net=NetConfig(widths=tuple(args.widths), dropout=args.dropout, seed=args.seed))
    summary = train(cfg, args.out, progress=not args.quiet, max_steps=args.max_steps)
    if not args.quiet:
        if summary["excluded"]:
            print(f"excluded {len(summary['excluded'])} images:")
            for row, f, why in summary["excluded"]:
                print(f"  row {row} {f}: {why}")
        print(json.dumps({k: v for k, v in summary.items() if k != "excluded"}, indent=2))
    return 0


def _predict(args) -> int:
    from .train import predict, write_predictions

    pred = predict(args.model, args.source, progress=not args.quiet)
    write_predictions(args.output, pred["files"], pred)
    if not args.quiet:
        ds = pred["data"]
        for row, f, why in ds.excluded:
            print(f"excluded {f}: {why}")
        print(f"wrote {len(pred['files'])} predictions to {args.output}")
    return 0


def _evaluate(args) -> int:
    from .train import evaluate

    res = evaluate(args.run_dir, args.data, args.split, args.out, progress=not args.quiet)
    if not args.quiet:
        print(json.dumps(res, indent=2))
    return 0


def _explain(args) -> int:
    import numpy as np

    from . import data, explain
    from .train import load_model

    model, desc = load_model(args.model)
    c = desc["card"]
    target = None
    if args.target != "stiffness":
        if args.target not in c["class_names"]:
            raise ValueError(f"--target must be 'stiffness' or one of {c['class_names']}, got {args.target!r}")
        target = c["class_names"].index(args.target)
    many = len(args.images) > 1
    if many and args.png:
        Path(args.png).mkdir(parents=True, exist_ok=True)
    for f in args.images:
        x = data.preprocess(data.read_image(f), c["size"], c.get("scale", 1.0))
        maps = {"Grad-CAM": explain.gradcam(model, x, target), "SmoothGrad": explain.smoothgrad(model, x, target)}
        pred = model(x[None, ..., None])
        e = 1000.0 * 10 ** float(np.asarray(pred["log_stiffness"])[0])
        out = (Path(args.png) / (Path(f).stem + "_explain.png") if many else Path(args.png)) if args.png else \
            Path(f).with_name(Path(f).stem + "_explain.png")
        explain.figure(x, maps, out, title=f"{Path(f).name}: {e:.0f} Pa predicted")
        print(f"wrote {out}")
    return 0


def _search(args) -> int:
    from .train import StiffnessConfig
    from . import search

    base = StiffnessConfig(csv=args.data, task=args.task, seed=args.seed)
    try:
        res = search.search(base, args.out, args.trials, args.trial_epochs, args.seed, progress=not args.quiet)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    print(json.dumps(res, indent=2))
    return 0
