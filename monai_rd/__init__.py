"""monai_rd: Reprogramming Distillation of medical foundation models into small students, as MONAI components."""

__version__ = "0.1.0"

from monai_rd import data, engines, handlers, losses, networks, transforms  # noqa: E402

__all__ = ["data", "engines", "handlers", "losses", "networks", "transforms", "__version__"]
