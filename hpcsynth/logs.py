"""Log files: where a worker logs, so that status can show a failed shard's last lines.

Shared by execute/ (which opens the log for the worker it starts) and generate/ (which names it in a
failed marker); it sits at the top so that neither imports the other for it.
"""

from __future__ import annotations

import logging
from pathlib import Path


def log_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("hpcsynth")
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def worker_log_path() -> str:
    """The file this worker logs to, so status can show a failed shard's last log lines."""
    for handler in logging.getLogger("hpcsynth").handlers + logging.getLogger().handlers:
        name = getattr(handler, "baseFilename", None)
        if name:
            return str(name)
    return ""
