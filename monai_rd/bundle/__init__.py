"""What running a monai_rd bundle needs besides the components: typed options, the run folder, the recipe."""

from monai_rd.utils.options import (
    as_bool,
    as_float,
    as_float_list,
    as_int,
    as_int_list,
    as_optional_float,
    as_optional_float_list,
    as_optional_int,
    as_optional_str,
    epoch_length,
)
from monai_rd.bundle.model_spec import (
    as_class_names,
    model_spec,
    read_model_spec,
    segmentation_model_spec,
    write_model_spec,
)
from monai_rd.bundle.run_folder import latest_checkpoint, prepare_run_folder

__all__ = [
    "as_class_names",
    "model_spec",
    "read_model_spec",
    "segmentation_model_spec",
    "write_model_spec",
    "as_bool",
    "as_float",
    "as_float_list",
    "as_int",
    "as_int_list",
    "as_optional_float",
    "as_optional_float_list",
    "as_optional_int",
    "as_optional_str",
    "epoch_length",
    "latest_checkpoint",
    "prepare_run_folder",
]
