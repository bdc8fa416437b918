"""Hydra config tree, importable as fedpriv.conf (see pyproject.toml)."""
