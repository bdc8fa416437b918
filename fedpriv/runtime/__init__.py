"""Flower glue: apps (:mod:`.apps`), opening and finishing a run (:mod:`.runs`), the
shared server context (:mod:`.context`, made of :mod:`.exchange`, :mod:`.client_reports`,
:mod:`.clock` and :mod:`.rounds`), checkpoints (:mod:`.checkpoint`, :mod:`.resume`) and
engines (:mod:`.simulation`, kept warm by :mod:`.warm_ray` and woken by
:mod:`.flower_wakeup`; :mod:`.inprocess`). What travels in messages is
:mod:`fedpriv.records`; a node's identity, :mod:`fedpriv.node`."""
