"""``tfm stiffness synth|train|predict|evaluate|explain|search``: argument parsing, the
files the commands write, and printing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import jsonable, write_json
from . import common

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
    _add_use_parsers(ss)
    s.set_defaults(run=_help, stiffness_parser=s)


def _add_use_parsers(ss) -> None:
    """predict, evaluate, explain, search."""

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


def _help(args) -> int:
    args.stiffness_parser.print_help()
    return 2


def _synth(args) -> int:
    from ..stiffness.synth import MorphologyRules, generate

    out = generate(args.out, args.n, args.size, args.seed, MorphologyRules(overexposed_fraction=args.overexposed_fraction),
                   n_donors=args.donors, progress=common.progress(args))
    if not args.quiet:
        print(f"wrote {args.n} images and {out / 'labels.csv'}")
    return 0


def _train(args) -> int:
    import dataclasses

    from ..learn import config as configs
    from ..learn.optim import OptimConfig
    from ..stiffness.model import NetConfig
    from ..stiffness.train import StiffnessConfig, train

    if args.config:
        try:
            cfg = configs.from_dict(StiffnessConfig, json.loads(Path(args.config).read_text()))
        except json.JSONDecodeError as exc:
            raise common.UsageError(f"--config {args.config} is not JSON: {exc}") from None
        cfg = dataclasses.replace(cfg, csv=args.data or cfg.csv, epochs=args.epochs or cfg.epochs)
    else:
        if not args.data:
            raise common.UsageError("--data (a labels CSV) is required without --config")
        cfg = StiffnessConfig(csv=args.data, task=args.task, epochs=args.epochs or 30, batch_size=args.batch_size,
                              optim=OptimConfig(learning_rate=args.learning_rate, warmup_steps=50,
                                                weight_decay=args.weight_decay),
                              size=args.size, thresholds_pa=args.thresholds_pa, seed=args.seed,
                              net=NetConfig(widths=tuple(args.widths), dropout=args.dropout, seed=args.seed))
    if args.max_steps is not None and args.max_steps < 1:
        raise common.UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    summary = train(cfg, args.out, progress=common.progress(args), max_steps=args.max_steps)
    if not args.quiet:
        if summary["excluded"]:
            print(f"excluded {len(summary['excluded'])} images:")
            for row, f, why in summary["excluded"]:
                print(f"  row {row} {f}: {why}")
        print(json.dumps(jsonable({k: v for k, v in summary.items() if k != "excluded"}), indent=2))
    return 0


def _predict(args) -> int:
    from ..stiffness.train import predict, write_predictions

    common.check_output(args.output, (".csv",), (args.source,))
    pred = predict(args.model, args.source, progress=common.progress(args))
    write_predictions(args.output, pred["files"], pred)
    if not args.quiet:
        ds = pred["data"]
        for row, f, why in ds.excluded:
            print(f"excluded {f}: {why}")
        print(f"wrote {len(pred['files'])} predictions to {args.output}")
    return 0


def _evaluate(args) -> int:
    from ..stiffness.train import evaluation

    res, ds, pred = evaluation(args.run_dir, args.data, args.split, progress=common.progress(args))
    if args.out is not None:
        write_evaluation(Path(args.out), res, ds, pred)
    if not args.quiet:
        print(json.dumps(jsonable(res), indent=2))
    return 0


def write_evaluation(out: Path, res: dict, ds, pred) -> None:
    """predictions.csv, metrics.json and (classification) roc.png into ``out``."""
    from .. import viz
    from ..stiffness.train import write_predictions

    if out.exists() and not out.is_dir():
        raise common.UsageError(f"--out {out} exists and is not a folder")
    write_predictions(out / "predictions.csv", ds.files, pred, ds)
    write_json(out / "metrics.json", res)
    if "classification" in res:
        mc = ds.classes >= 0
        viz.roc_figure(ds.classes[mc], pred["proba"][mc], out / "roc.png", ds.class_names,
                       title=f"ROC, {res['split']} ({int(mc.sum())} cells)")


def _explain(args) -> int:
    import numpy as np

    from .. import viz
    from ..stiffness import data, explain
    from ..stiffness.train import load_model

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
        viz.saliency_figure(x, maps, out, title=f"{Path(f).name}: {e:.0f} Pa predicted")
        print(f"wrote {out}")
    return 0


def _search(args) -> int:
    from ..stiffness import search
    from ..stiffness.train import StiffnessConfig

    base = StiffnessConfig(csv=args.data, task=args.task, seed=args.seed)
    try:
        res = search.search(base, args.out, args.trials, args.trial_epochs, args.seed, progress=common.progress(args))
    except ImportError as exc:
        raise common.UsageError(str(exc)) from None
    if not args.quiet:
        print(json.dumps(jsonable(res), indent=2))
    return 0
