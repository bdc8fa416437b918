"""The installed fedpriv's version; pyproject.toml's [project] version says the same (Flower
reads it there; tests/unit/test_flwr_run_config.py checks the two agree)."""

__version__ = "0.1.0"
