"""monai_rd: Reprogramming Distillation of medical foundation models into small students, as MONAI components."""

__version__ = "0.1.0"

from monai_rd import bundle, data, engines, errors, handlers, losses, networks, transforms  # noqa: E402

__all__ = ["bundle", "data", "engines", "errors", "handlers", "losses", "networks", "transforms", "__version__"]
