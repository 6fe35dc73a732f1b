"""What running a monai_rd bundle needs besides the components: typed options, the run folder, the model's spec,
and the recipes the bundles' configs are generated from."""

from monai_rd.bundle.command_line import check_command_line, check_overrides
from monai_rd.bundle.model_spec import (
    as_class_names,
    check_export_metadata,
    model_spec,
    read_model_spec,
    segmentation_model_spec,
    write_model_spec,
)
from monai_rd.bundle.options import ClassificationOptions, SegmentationOptions, TrainOptions
from monai_rd.bundle.run_folder import latest_checkpoint, prepare_run_folder

__all__ = [
    "ClassificationOptions",
    "SegmentationOptions",
    "TrainOptions",
    "as_class_names",
    "check_command_line",
    "check_export_metadata",
    "check_overrides",
    "latest_checkpoint",
    "model_spec",
    "prepare_run_folder",
    "read_model_spec",
    "segmentation_model_spec",
    "write_model_spec",
]
