"""Assemble docs/benchmarks.md from the tables the benchmark scripts wrote.

    python -m benchmarks.make_docs [--results benchmarks/results] [--out docs/benchmarks.md]
"""

import argparse
from pathlib import Path

SECTIONS = [("dl_vs_classical.md", "python -m benchmarks.dl_vs_classical"), ("dvc.md", "python -m benchmarks.dvc"), ("fttc.md", "python -m benchmarks.fttc"),
            ("inverse.md", "python -m benchmarks.inverse"),
            ("synth.md", "python -m benchmarks.synth"), ("stiffness.md", "python -m benchmarks.stiffness"),
            ("adapt.md", "python -m benchmarks.adapt"),
            ("adapt_seed781.md", "python -m benchmarks.adapt --seed 781 --no-fmtrack --report adapt_seed781"),
            ("adapt_bright.md", "python -m benchmarks.adapt --condition bright --no-fmtrack --report adapt_bright"),
            ("adapt_blurry.md", "python -m benchmarks.adapt --condition blurry --no-fmtrack --report adapt_blurry"),
            ("adapt_headroom.md", "python -m benchmarks.adapt --headroom"),
            ("adapt_blurry_headroom.md", "python -m benchmarks.adapt --condition blurry --headroom --report adapt_blurry_headroom"),
            ("flow_profile.md", "python -m benchmarks.flow_profile"),
            ("dl_ablation.md", "python -m benchmarks.dl_vs_classical --ablation NAME=RUN ... --sizes '' --no-fmtrack "
                               "--report dl_ablation")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--out", default="docs/benchmarks.md")
    args = p.parse_args(argv)
    parts = ["# Benchmarks", "",
             "Generated from the scripts in `benchmarks/` on the project's 2-core CPU machine by "
             "`python -m benchmarks.make_docs`; each section names the command that measured it. "
             "Re-run everything with `make bench`.", ""]
    for name, script in SECTIONS:
        path = Path(args.results) / name
        if not path.is_file():
            parts += [f"## {script}", "", f"(no results yet: run `{script}`)", ""]
            continue
        text = path.read_text().splitlines()
        parts.append(f"## {text[0].lstrip('# ')} (`{script}`)")
        parts += [("#" + line) if line.startswith("## ") else line for line in text[1:]]
        notes = Path(args.results) / name.replace(".md", ".notes.md")
        if notes.is_file():
            parts += ["", notes.read_text().rstrip()]
        parts.append("")
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
