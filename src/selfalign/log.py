"""selfalign's messages go through the standard `logging` module (logger "selfalign"): progress
lines are INFO, printed as "[selfalign] message" on standard output, where the deliverables are
printed too; warnings (a retried request, ...) go to standard error. A program that embeds selfalign can configure the logger as it likes (level,
handlers); `logging.getLogger("selfalign").setLevel(logging.WARNING)` silences the progress lines."""

from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("selfalign")


class _Std(logging.StreamHandler):
    """A handler on whatever sys.stdout (or sys.stderr) is when a message is written (it can be
    replaced, e.g. to capture the output), flushed at once so the lines interleave with results."""

    def __init__(self, err: bool) -> None:
        self.err = err
        super().__init__()

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr if self.err else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _redact(record: logging.LogRecord) -> bool:
    """Every line selfalign prints has its secrets masked (`selfalign.redact`)."""
    from selfalign.redact import redact

    record.msg, record.args = redact(record.getMessage()), None
    return True


if not LOG.handlers:
    _out, _err = _Std(err=False), _Std(err=True)
    LOG.addFilter(_redact)
    _out.addFilter(lambda record: record.levelno < logging.WARNING)
    _err.setLevel(logging.WARNING)
    for _h in (_out, _err):
        _h.setFormatter(logging.Formatter("[selfalign] %(message)s"))
        LOG.addHandler(_h)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def say(msg: str) -> None:
    """One progress line (INFO)."""
    LOG.info(msg)


def warn(msg: str) -> None:
    """A line about something that went wrong and was handled (WARNING, on standard error)."""
    LOG.warning(msg)
