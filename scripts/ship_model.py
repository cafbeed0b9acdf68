"""Copy a trained run's best model into the package as the shipped default, with its card.

    python scripts/ship_model.py RUN [--command "the tfm train command"] [--data-command "..."]
                                     [--bench benchmarks/results/dl_vs_classical.json ...]

Writes tfm/nn/weights/default/{model.json, weights/, MODEL_CARD.md}: the model card holds
the training data and command, the architecture, the per-epoch validation metrics from
RUN/metrics.jsonl, and (when --bench is given) the held-out benchmark against the
classical pipeline. Re-run it after `python benchmarks/dl_vs_classical.py` to refresh the
card's accuracy table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tfm.atomic import atomic_dir, write_text

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "tfm" / "nn" / "weights" / "default"


def card(run: Path, desc: dict, rows: list, train_cfg: dict, command: str, data_command: str, benches: list) -> str:
    best = min(rows, key=lambda r: r["val"]["loss"])
    optim = train_cfg.get("optim", train_cfg)  # runs before the house move kept these at top level
    c = desc["card"]
    L = ["# Model card: tfm default 3D force network", "",
         "Physics-informed 3D U-Net: bead volume pair -> displacement (µm) and body-force density (pN/µm³). "
         "See docs/learned.md for the method.", "",
         "## Intended use and limits", "",
         "- Bead volume pairs of a cell in a soft, homogeneous, isotropic gel (E 100 Pa - 10 kPa, ν 0.3-0.48), "
         "imaged with a confocal-like PSF elongated along z, at any voxel size: stacks are anti-aliased and resampled "
         f"to the model's working grid of {c.get('spacing_um')} µm voxels, and the output has that resolution.",
         f"- Trained on synthetic data only ({', '.join(map(str, c.get('data_spacing_um', [c.get('spacing_um')])))} µm "
         "voxels; the data recipe below). Outside that range -- other optics, bead sizes, noise -- fine-tune it on your own "
         "pairs with `tfm adapt`, and compare with the classical pipeline on a pair first (docs/learned.md shows how on "
         "the FM-Track stacks).",
         "- Drift is removed from the predicted field as the DVC removes it (`drift=\"auto\"`).", "",
         "## Training data", "",
         f"- Files: {', '.join(Path(p).name for p in c.get('data', []))} ({c.get('train_samples')} training and "
         f"{c.get('val_samples')} validation samples, seeded split).",
         f"- Generated with: `{data_command}`" if data_command else "- Generated with `tfm synth` (defaults).",
         f"- Matrix law: {c.get('law')}; voxel size {c.get('spacing_um')} µm.", "",
         "## Training", "",
         f"- Command: `{command}`" if command else "",
         f"- Architecture: widths {desc['config']['widths']}, {desc['config']['convs_per_level']} convolutions per level, "
         f"stem {desc['config'].get('stem', 1)} (2 = U-Net at half resolution, pixel-shuffle output), Lucas-Kanade windows "
         f"{desc['config'].get('lk_sigmas', [2.0, 4.0])} voxels.",
         f"- Optimiser {optim['optimizer']}, peak learning rate {optim['learning_rate']}, warm-up "
         f"{optim['warmup_steps']} steps, cosine decay, batch {train_cfg['batch_size']}, {train_cfg['epochs']} epochs; "
         f"loss weights {train_cfg['loss']}.",
         f"- Selected: epoch {best['epoch']} (step {best['step']}) of {len(rows)}, lowest validation loss "
         f"{best['val']['loss']:.4f}; validation relative L2 error (voxel level, mean over samples) u {best['val']['rel_u']:.3f}, f {best['val']['rel_f']:.3f}.",
         f"- Machine: {c.get('machine', 'the project CPU machine (2 cores)')}; {sum(r['seconds'] for r in rows) / 60:.0f} min of training.", "",
         "| epoch | train loss | val loss | val rel. err. u | val rel. err. f |", "|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['epoch']} | {r['train']['loss']:.4f} | {r['val']['loss']:.4f} | {r['val']['rel_u']:.3f} | {r['val']['rel_f']:.3f} |")
    for b in benches:
        s = b["summary"]
        L += ["", f"## Held-out benchmark (benchmarks/dl_vs_classical.py, `{b['command'].split('dl_vs_classical', 1)[-1].strip()}`)", "",
              f"Test set `{Path(b['test_set']).name}` ({s['n']} samples, unseen seed). Medians (means):", "",
              "| method | force rel. L2 (DVC grid) | contractility rel. error | displacement RMS error (µm) |", "|---|---|---|---|"]
        for m in ("dl", "classical"):
            r = s[m]
            L.append(f"| {m} | {r['force_rel_l2']:.3f} ({r['mean_force_rel_l2']:.3f}) | {r['contractility_rel_error']:.3f} "
                     f"({r['mean_contractility_rel_error']:.3f}) | {r['u_rms_error_um']:.4f} |")
    return "\n".join(line for line in L if line is not None) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a tfm train run directory")
    p.add_argument("--command", default="", help="the tfm train command that made the run")
    p.add_argument("--data-command", default="", help="the tfm synth command(s) that made its data")
    p.add_argument("--bench", nargs="*", default=[], help="reports of benchmarks/dl_vs_classical.py (.json) to include")
    p.add_argument("--machine", default="", help="where it was trained")
    p.add_argument("--card-only", action="store_true", help="only rewrite MODEL_CARD.md (weights already shipped)")
    args = p.parse_args(argv)
    run = Path(args.run)
    desc = json.loads((run / "model" / "model.json").read_text())
    if args.machine:
        desc["card"]["machine"] = args.machine
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_cfg = json.loads((run / "config.json").read_text())
    benches = [json.loads(Path(b).read_text()) for b in args.bench]
    if not args.card_only:
        desc["card"]["data"] = [Path(d).name for d in desc["card"].get("data", [])]
        with atomic_dir(DEST) as tmp:
            shutil.copytree(run / "model", tmp, dirs_exist_ok=True)
            (tmp / "model.json").write_text(json.dumps(desc, indent=2))
    write_text(DEST / "MODEL_CARD.md", card(run, desc, rows, train_cfg, args.command, args.data_command, benches))
    print(f"wrote {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
