"""Hydra entry points: ``python -m experiments.run [overrides]``."""
