"""Progress of long work, reported through a small object the caller passes in.

The numerical core neither prints nor draws. A function that runs for long takes a
``progress`` argument and reports through it:

    with progress.task(total, "DVC") as bar:
        bar.update(1, note="pass 1 it 1")
    progress.message("epoch 3: val loss 0.41")

``progress`` may be a :class:`Progress`, or the shorthands ``None`` / ``False`` (silent,
the library default) and ``True`` (bars on stderr, what the ``tfm`` command uses). Bars
are drawn by tqdm; messages are written between them (``tqdm.write``), so they do not
break a bar.
"""

from __future__ import annotations

import sys


class _Silent:
    def update(self, n: int = 1, note: str = "") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Bar:
    def __init__(self, total: int, desc: str, stream):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=max(int(total), 1), desc=desc, file=stream, dynamic_ncols=True, mininterval=0.2,
                         leave=True)

    def update(self, n: int = 1, note: str = "") -> None:
        if note:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._bar.close()
        return False


class Progress:
    """Where long work reports: ``Progress()`` is silent, ``Progress(bars=True)`` draws
    tqdm bars and writes messages to ``stream`` (default stderr for bars, stdout for
    messages)."""

    def __init__(self, bars: bool = False, stream=None, messages=None):
        self.bars = bool(bars)
        self._stream = stream
        self._messages = messages

    def task(self, total: int, desc: str):
        """A context manager with ``update(n=1, note="")`` for ``total`` steps of ``desc``."""
        if not self.bars or total <= 0:
            return _Silent()
        return _Bar(total, desc, self._stream or sys.stderr)

    def message(self, text: str) -> None:
        """A line for the user (written between bars); dropped when silent."""
        if self.bars:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self._messages or sys.stdout)

    def child(self, enabled: bool) -> "Progress":
        """This progress where ``enabled``, else a silent one (e.g. on a worker process)."""
        return self if enabled else SILENT


SILENT = Progress()


def resolve(progress) -> Progress:
    """A :class:`Progress` from the ``progress`` argument of a library function."""
    if isinstance(progress, Progress):
        return progress
    if progress is None or progress is False:
        return SILENT
    if progress is True:
        return Progress(bars=True)
    raise TypeError(f"progress must be a tfm.progress.Progress, True, False or None, got {type(progress).__name__}")
