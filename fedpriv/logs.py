"""fedpriv's log lines on stderr, for the front ends and the fleet commands."""

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
