"""A run that is SIGKILLed, with its whole process group (Ray included), right after it
writes the checkpoint of round ``KILL_AFTER`` (an environment variable): a real kill
at a known point. Arguments are ``python -m experiments.run`` overrides."""

from __future__ import annotations

import os
import signal
import sys

from fedpriv.runtime.checkpoint import Checkpoint

kill_after = int(os.environ["KILL_AFTER"])
save = Checkpoint.save


def save_then_die(self: Checkpoint, run_dir):  # type: ignore[no-untyped-def]
    save(self, run_dir)
    if self.round == kill_after:
        os.killpg(os.getpgrp(), signal.SIGKILL)


Checkpoint.save = save_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    from experiments.run import main

    sys.argv = ["killed_run", *sys.argv[1:]]
    main()
