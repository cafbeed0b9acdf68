"""Assemble docs/benchmarks.md from the tables the benchmark scripts wrote.

    python -m benchmarks.make_docs [--results benchmarks/results] [--out docs/benchmarks.md]

One section per benchmark: its headline report (methods side by side) first, then the
reports of its sweeps and variants; each names the command that measured it.
"""

import argparse
from pathlib import Path

# (section, [(report, command)]): the first report heads the section, the rest follow it.
SECTIONS = [
    ("learned", [("dl_vs_classical.md", "python -m benchmarks.dl_vs_classical"),
                 ("dl_ablation.md", "python -m benchmarks.dl_vs_classical --ablation NAME=RUN ... --sizes '' --no-fmtrack "
                                    "--report dl_ablation"),
                 ("flow_profile.md", "python -m benchmarks.flow_profile")]),
    ("dvc", [("dvc.md", "python -m benchmarks.dvc")]),
    ("inverse", [("inverse.md", "python -m benchmarks.inverse")]),
    ("nonlinear", [("nonlinear.md", "python -m benchmarks.nonlinear")]),
    ("fttc", [("fttc.md", "python -m benchmarks.fttc")]),
    ("synth", [("synth.md", "python -m benchmarks.synth")]),
    ("stiffness", [("stiffness.md", "python -m benchmarks.stiffness")]),
    ("adapt", [("adapt_summary.md", "python -m benchmarks.adapt --summary")]),
    ("series", [("series.md", "python -m benchmarks.series")]),
]
# Reports the docs link to without inlining them.
LINKED = {"adapt": [("adapt.md", "python -m benchmarks.adapt",
                     "the default run pair by pair (dim set) and on the FM-Track pair, where 200 steps lower the photometric "
                     "loss 4.9 % and move the field's axial slope on the DVC's from 0.82 to 0.97"),
                    ("adapt_headroom.md", "python -m benchmarks.adapt --headroom",
                     "what oracle corrections of the base field with the truth would gain, and which field the images prefer "
                     "on noise they have not seen (the reasoning: docs/learned.md section 8)")]}

READ_FIRST = """What to read first:

- **Learned against classical** (the first section): displacement, force and contractility errors of the two paths on
  24 held-out synthetic pairs, their time per pair, and the real FM-Track pair.
- **DVC against pyALDVC** and **the force inverse against FTTC and saenopy**: the classical pipeline's two halves
  beside their peers, on identical inputs.
- The rest: 3D FTTC, the synthetic-data generator, the stiffness CNN, self-supervised adaptation (one table of
  every condition and variant measured), and time series and batches (a contractility ramp, reuse between frames,
  Dask workers).

Ratios are stated as method / reference; medians over pairs unless a table says otherwise."""


def _report(path: Path, script: str, level: int) -> list:
    text = path.read_text().splitlines()
    hashes = "#" * level
    out = [f"{hashes} {text[0].lstrip('# ')} (`{script}`)"]
    out += [("#" * (level - 1) + line) if line.startswith("## ") else line for line in text[1:]]
    notes = path.with_name(path.name.replace(".md", ".notes.md"))
    if notes.is_file():
        out += ["", notes.read_text().rstrip()]
    return out + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--out", default="docs/benchmarks.md")
    args = p.parse_args(argv)
    parts = ["# Benchmarks", "",
             "Generated from the scripts in `benchmarks/` on the project's 2-core CPU machine by "
             "`python -m benchmarks.make_docs`; each section names the command that measured it. "
             "Re-run everything with `make bench`.", "", READ_FIRST, ""]
    results = Path(args.results)
    for key, reports in SECTIONS:
        for i, (name, script) in enumerate(reports):
            path = results / name
            if not path.is_file():
                parts += [f"{'##' if i == 0 else '###'} {script}", "", f"(no results yet: run `{script}`)", ""]
                continue
            parts += _report(path, script, 2 if i == 0 else 3)
        for name, script, what in LINKED.get(key, []):
            if (results / name).is_file():
                parts += [f"Also: [`{name}`](../benchmarks/results/{name}) (`{script}`): {what}.", ""]
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
