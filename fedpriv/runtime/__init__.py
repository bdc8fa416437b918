"""Flower glue: apps (:mod:`.apps`), records (:mod:`.records`), node state
(:mod:`.node`), the shared server context (:mod:`.context`) and engines (:mod:`.simulation`)."""
