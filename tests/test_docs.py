"""Every code block of README.md and docs/*.md runs as pasted.

Python blocks of one document run in order in one namespace, in a folder holding the
files they name (small synthetic bead stacks with their voxel size, a displacement
field, ...) and a link to the repository's data/. Shell blocks: every ``tfm`` command is
parsed by the real parser (options and their values), every ``python SCRIPT`` and ``make
TARGET`` names something that exists; running them is the job of their own tests (the
demo, the examples, the CLI tests)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import tfm
from tfm import cli, io
from tfm.synth import beads

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(doc: Path, lang: str) -> list:
    return [m.group(2) for m in BLOCK.finditer(doc.read_text()) if m.group(1) == lang]


def _stacks(folder: Path) -> None:
    """relaxed / deformed bead stacks and a cell channel (ImageJ TIFFs with voxel size)."""
    grid = tfm.Grid((40, 96, 96), (0.8, 0.3, 0.3))
    gel = tfm.LinearElastic(1000.0, 0.45)
    cell = tfm.analytic.EshelbySphere(4.0, -0.05, grid.center_um(), gel)
    rng = np.random.default_rng(0)
    pos = beads.random_positions(grid, 0.02 / grid.voxel_volume_um3, rng, margin_um=2)
    pos = pos[np.linalg.norm(pos - np.asarray(grid.center_um()), axis=1) > 4.0]
    ref, dfm = beads.render_pair(grid, pos, lambda q: np.asarray(cell.displacement(q)), psf_sigma_um=(1.0, 0.3, 0.3))
    io.write_volume(folder / "relaxed_beads.tif", beads.camera(ref, rng, 300, 0.02, 0.05), grid)
    io.write_volume(folder / "deformed_beads.tif", beads.camera(dfm, rng, 300, 0.02, 0.05), grid)
    r = np.linalg.norm(grid.coordinates_um() - np.asarray(grid.center_um()), axis=-1)
    io.write_volume(folder / "cell.tif", (200 * (r < 4.0) + rng.integers(0, 20, grid.shape)).astype(np.uint8), grid)
    np.save(folder / "u.npy", np.asarray(cell.sample(tfm.Grid((32, 48, 48), (0.8, 0.29, 0.29))), np.float32))


def _images(folder: Path) -> None:
    """relaxed / loaded 2D bead images with their pixel size."""
    grid = tfm.Grid((1, 128, 128), (1.0, 0.2, 0.2))
    pos = beads.random_positions(grid, 0.6, np.random.default_rng(1), margin_um=1)
    pos[:, 0] = 0.0
    c = np.array([0.0, 12.8, 12.8])

    def field(q):
        d = q - c
        return -0.3 * d * np.exp(-np.sum(d**2, -1, keepdims=True) / 40.0) * np.array([0.0, 1.0, 1.0])

    ref, dfm = beads.render_pair(grid, pos, field, psf_sigma_um=(1.0, 0.3, 0.3))
    io.write_image(folder / "relaxed_beads.tif", ref[0], (0.2, 0.2))
    io.write_image(folder / "loaded_beads.tif", dfm[0], (0.2, 0.2))


FIXTURES = {"tractions2d.md": _images}


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d, "python")], ids=lambda d: d.name)
def test_python_blocks_run_as_pasted(doc, tmp_path, monkeypatch):
    FIXTURES.get(doc.name, _stacks)(tmp_path)
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(doc, "python")):
        exec(compile(code, f"{doc.name}, python block {i + 1}", "exec"), namespace)  # noqa: S102


def _commands(code: str) -> list:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _parses(words) -> bool:
    try:
        args = cli.build_parser().parse_args(words)
    except SystemExit as exc:  # argparse refuses with status 2; --help exits with 0
        return exc.code == 0
    return getattr(args, "run", None) is not None


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d, "sh")], ids=lambda d: d.name)
def test_shell_blocks_name_real_commands_and_options(doc):
    makefile = (ROOT / "Makefile").read_text()
    for code in blocks(doc, "sh"):
        for words in _commands(code):
            if words[0] == "tfm":
                assert _parses(words[1:]), f"{doc.name}: the parser refuses `{' '.join(words)}`"
            elif words[0] == "python":
                assert (ROOT / words[1]).is_file(), words
            elif words[0] == "make":
                assert re.search(rf"^{words[1]}:", makefile, re.M), words
            elif words[0] not in ("git", "cd"):
                pytest.fail(f"{doc.name}: unknown command in a shell block: {' '.join(words)}")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FILE_NAME = re.compile(r"`([\w./-]+\.(?:md|json))`")
# names of files a command writes (in a run folder such as RUN/ or OUT/), not files of the repository
WRITTEN_BY_RUNS = {"summary.json", "model.json", "MODEL_CARD.md"}


def _missing(doc: Path, text: str) -> list:
    out = []
    for target in LINK.findall(text):
        path = target.split("#")[0]
        if path and not re.match(r"[a-z]+:", path) and not (doc.parent / path).exists():
            out.append(f"{doc.name}: link {target}")
    for name in FILE_NAME.findall(text):
        if name in WRITTEN_BY_RUNS or name.split("/")[0].isupper():
            continue
        places = [ROOT / name, doc.parent / name] if "/" in name else \
            [ROOT / "benchmarks" / "results" / name, ROOT / "docs" / name, ROOT / "docs" / "figures" / name, ROOT / name]
        if not any(p.exists() for p in places):
            out.append(f"{doc.name}: `{name}`")
    return out


def test_links_and_named_reports_exist():
    """Every relative link of README.md and docs/*.md resolves, and every report or file
    they name in backticks (``benchmarks/results/adapt.md``, ``adapt_summary.md``) exists:
    no doc points at a report that was folded away."""
    assert [m for doc in DOCS for m in _missing(doc, doc.read_text())] == []
    probe = "[gone](results/nothing_here.md) and `adapt_bright_cubic.md`, not `RUN/search.json`"
    assert len(_missing(ROOT / "docs" / "x.md", probe)) == 2  # the check can fail
