"""The ``tfm`` command: one module per subcommand (``add_parser(sub)`` builds its parser,
``run(args)`` parses nothing more, calls the API and prints). No numerics here.

Every failure the user can fix -- a bad argument, an unreadable, truncated or corrupt
input, an output that cannot be written -- ends with exit status 2 and one line naming
the problem, checked before any long computation where it can be.
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import adapt, batch, displacement, forces, reconstruct, series, stiffness, synth, tractions2d, train, view

COMMANDS = (forces, displacement, reconstruct, series, batch, tractions2d, synth, train, adapt, view, stiffness)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfm", description="3D cellular force microscopy: displacements and forces from bead volumes.")
    p.add_argument("--version", action="version", version=f"tfm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())  # one line


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    name = " ".join(filter(None, [args.command, getattr(args, "stiffness_command", None)]))
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"tfm {name}: interrupted (a run of tfm synth, tfm train or tfm adapt resumes when started again)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, KeyError, ImportError) as exc:  # ImportError: an optional extra missing
        print(f"tfm {name}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. the FEM did not converge: not the user's input
        print(f"tfm {name}: failed: {_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
