"""Flower's object pulls ask again 50 ms after an object was not there yet, not 1 s.

A message's contents travel as objects: the sender registers the message, then uploads
its objects, while the receiver pulls each one and, when it is not there yet, waits
before asking again -- in Flower 1.41 1 s, doubling up to 10 s (``PULL_INITIAL_BACKOFF``,
``PULL_BACKOFF_CAP`` bound as the defaults of ``pull_objects``). A deployed exchange
can hit this three times: the SuperNode pulls the server's message while the ServerApp
still uploads it, the ClientApp pulls it from its SuperNode while the SuperNode still
downloads it (the SuperNode starts the task first), and the ServerApp pulls a reply
while the node still uploads it. Each costs up to a second for an upload of
milliseconds.

:func:`shorten_object_pulls` changes those two defaults in the calling process:
:data:`INITIAL_BACKOFF_S`, doubling up to :data:`BACKOFF_CAP_S`. The retry limits
(500 tries, 2 h) are Flower's. ``fedpriv.deployment.supernode`` calls it, and so does
the warm executor before it forks ClientApps and ServerApps.
"""

from __future__ import annotations

from types import FunctionType

from fedpriv.deployment.flower_pins import FlowerChanged, check_pins

#: The first wait before pulling an object again, doubling on each miss ...
INITIAL_BACKOFF_S = 0.05
#: ... up to this (a large upload on a slow link is then picked up within a second).
BACKOFF_CAP_S = 1.0

#: SHA-256 of the patched functions' source in flwr 1.41.0
#: (flwr/supercore/inflatable/inflatable_utils.py).
PINNED_SOURCE = {
    "pull_objects": "31bb2de46b450e6acfadb7a8bb15e3f2074bb112199826a40a5eaa648bad5b2b",
    "pull_and_inflate_object_from_tree": (
        "139811483a15e4a6c1f8523614c12f28dd3049194e5713816be0931387adb1cf"
    ),
}
#: Their backoff defaults in that version.
FLOWER_BACKOFF = {"initial_backoff": 1, "backoff_cap": 10}


def pull_functions() -> dict[str, FunctionType]:
    """The Flower functions whose defaults this patch changes."""
    from flwr.supercore.inflatable import inflatable_utils

    return {name: getattr(inflatable_utils, name) for name in PINNED_SOURCE}


def shorten_object_pulls() -> None:
    """Check the pinned source, then set the backoff defaults; idempotent."""
    functions = pull_functions()
    check_pins(
        __name__, {name: (function, PINNED_SOURCE[name]) for name, function in functions.items()}
    )
    ours = {"initial_backoff": INITIAL_BACKOFF_S, "backoff_cap": BACKOFF_CAP_S}
    for name, function in functions.items():
        defaults = function.__kwdefaults__ or {}
        current = {key: defaults.get(key) for key in FLOWER_BACKOFF}
        if current not in (FLOWER_BACKOFF, ours):
            raise FlowerChanged(
                f"{name}() has backoff defaults {current}, not Flower 1.41's {FLOWER_BACKOFF}; "
                f"update {__name__}"
            )
        defaults.update(ours)
