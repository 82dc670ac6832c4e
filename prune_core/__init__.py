"""Everything that happens inside one trial: data, models, training, measurement, methods.

Plain PyTorch: nothing here imports Ray or the analysis package.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
