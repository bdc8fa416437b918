"""MkDocs hook: ``reference/capabilities.md``, the compatibility table of
:mod:`fedpriv.compatibility` as ``fedpriv capabilities`` prints it, made on every build
so that it cannot drift from the code that checks configs."""

from __future__ import annotations

from typing import Any

PAGE = "reference/capabilities.md"

INTRO = """# What combines with what

!!! note
    Generated when the site is built (`docs/hooks/capabilities.py`), from the same table
    config validation checks (`fedpriv/compatibility.py`). `fedpriv capabilities` prints it.

Each row is a family and one of its strategies; each column a feature a run can ask
for: `privacy=dp_sgd`, `privacy=central`, `crypto=ckks`, an `adversary`, a fleet
(`engine=deployment`), and resuming from a checkpoint. A config that asks for a "no" is
refused before anything runs, with the reason below and what to use instead.
(`family=vertical` with `crypto=ckks` also needs `strategy.merge=sum` or `mean`;
`family=swarm strategy=leader` encrypts with `crypto=ckks_secagg` only, with
`strategy.merge=mean` or `weighted_mean` and `swarm.consensus=false`.)

```text
"""


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    from fedpriv.compatibility import render, table
    from fedpriv.families import FAMILIES

    page = INTRO + render(list(table(FAMILIES))) + "\n```\n"
    files.append(File.generated(config, PAGE, content=page))
    return files
