"""Flower glue: apps (:mod:`.apps`), opening and finishing a run (:mod:`.runs`), the
shared server context (:mod:`.context`), checkpoints and engines (:mod:`.simulation`).
What travels in messages is :mod:`fedpriv.records`; a node's identity, :mod:`fedpriv.node`."""
