"""Log files: where a worker logs, so that status can show a failed shard's last lines.

Shared by execute/ (which opens the log for the worker it starts) and generate/ (which names it in a
failed marker); it sits at the top so that neither imports the other for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hpcsynth.files import open_append_nofollow
from hpcsynth.redact import redact


def log_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("hpcsynth")
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        handler = _NoFollowFileHandler(path)
        handler.setFormatter(_RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def worker_log_path() -> str:
    """The file this worker logs to, so status can show a failed shard's last log lines."""
    for handler in logging.getLogger("hpcsynth").handlers + logging.getLogger().handlers:
        name = getattr(handler, "baseFilename", None)
        if name:
            return str(name)
    return ""


class _RedactingFormatter(logging.Formatter):
    """Log lines (messages and tracebacks) pass through redact(): logs are read by everyone on the run."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _NoFollowFileHandler(logging.FileHandler):
    """Appends to the log without following a symlink planted in its place (RUN/logs/NAME.log)."""

    def _open(self):  # noqa: ANN202 (logging's signature)
        return open_append_nofollow(Path(self.baseFilename), text=True)
