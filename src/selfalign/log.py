"""selfalign's messages go through the standard `logging` module (logger "selfalign"): progress
lines are INFO, printed as "[selfalign] message" on standard output, where the deliverables are
printed too. A program that embeds selfalign can configure the logger as it likes (level,
handlers); `logging.getLogger("selfalign").setLevel(logging.WARNING)` silences the progress lines."""

from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("selfalign")


class _Stdout(logging.StreamHandler):
    """A handler on whatever sys.stdout is when a message is written (it can be replaced, e.g. to
    capture the output), flushed at once so the lines interleave with printed results."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


if not LOG.handlers:
    _handler = _Stdout()
    _handler.setFormatter(logging.Formatter("[selfalign] %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def say(msg: str) -> None:
    """One progress line (INFO)."""
    LOG.info(msg)
