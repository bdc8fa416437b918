"""A run's progress bar: round k/R, the last accuracy and ε so far.

Shown on a terminal and in a Jupyter notebook (``tqdm.auto``: a widget where ipywidgets
is installed, ``pip install 'fedpriv[notebook]'``). In CI (``CI`` set) or when stderr is
a file or pipe it stays silent, and the per-round log lines say the same thing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("CI")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a notebook or JupyterLab), where stderr is no
    terminal but a bar is still what the user watches."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False  # not a kernel; and IPython is loaded wherever one runs
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


class Progress:
    """One bar per run; fedpriv's log lines print above it while it is shown."""

    def __init__(
        self, rounds: int, done: int = 0, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        stream = sys.stderr if stream is None else stream
        self.enabled = (on_terminal(stream) or in_notebook()) if enabled is None else enabled
        self.bar = tqdm(
            total=rounds,
            initial=done,
            unit="round",
            desc="rounds",
            file=stream,
            disable=not self.enabled,
            dynamic_ncols=True,
        )
        self._redirect = contextlib.ExitStack()
        if self.enabled:
            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger("fedpriv")]))

    def update(self, record: Mapping[str, Any]) -> None:
        """Advance one round; show its accuracy and the ε spent so far, when known."""
        shown = {}
        if record.get("accuracy") is not None:
            shown["acc"] = f"{record['accuracy']:.4f}"
        privacy = record.get("privacy") or {}
        epsilon = privacy.get("epsilon_max", privacy.get("user_level_epsilon"))
        if epsilon is not None:
            shown["ε"] = f"{epsilon:.3g}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        self._redirect.close()
