"""Hydra entry points: ``python -m fedpriv.experiments.run [overrides]``."""
