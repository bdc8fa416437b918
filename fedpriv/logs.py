"""fedpriv's log lines on stderr, for the front ends and the fleet commands, and in
Hydra's per-run log file when Hydra runs the experiment."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    logger = logging.getLogger("fedpriv")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def log_to_hydra_files() -> None:
    """Write fedpriv's lines to the log files Hydra opened for this job (``run.log``),
    as well as to stderr. fedpriv's logger does not propagate (the root's console
    handler would print each line twice), so it takes the root's file handlers, and
    drops those of an earlier job of the same sweep."""
    setup_logging()
    logger = logging.getLogger("fedpriv")
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and handler not in files:
            logger.removeHandler(handler)
    for handler in files:
        if handler not in logger.handlers:
            logger.addHandler(handler)
