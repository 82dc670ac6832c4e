"""Everything that happens inside one trial: data, models, training, measurement, methods.

Plain PyTorch: nothing here imports Ray or the analysis package.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_compressed"]


def __getattr__(name: str):
    # Imported on first use: `import prune_core` stays free of torch for the analysis package.
    if name == "load_compressed":
        from prune_core.compressed import load_compressed

        return load_compressed
    raise AttributeError(f"module 'prune_core' has no attribute {name!r}")
