"""monai_rd: Reprogramming Distillation of medical foundation models into small students, as MONAI components."""

__version__ = "0.1.0"

from monai_rd import bundle, data, datasets, engines, errors, handlers, losses, methods, networks, transforms, utils  # noqa: E402

__all__ = [
    "bundle",
    "data",
    "datasets",
    "engines",
    "errors",
    "handlers",
    "losses",
    "methods",
    "networks",
    "transforms",
    "utils",
    "__version__",
]
