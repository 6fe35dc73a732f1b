import nibabel as nib
import numpy as np
import pytest

from monai_rd.errors import DataCheckError
from monai_rd.transforms import LoadVolume, LoadVolumed


def test_a_volume_loads_channel_first_with_its_affine(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "v.nii.gz")
    out = LoadVolumed(keys="image")({"image": str(tmp_path / "v.nii.gz"), "label": 3})
    assert tuple(out["image"].shape) == (1, 4, 5, 6) and out["label"] == 3
    assert np.array_equal(out["image"][0].numpy(), vol) and np.allclose(out["image"].affine.numpy(), affine)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 6, 2)])
def test_a_slice_or_a_multichannel_volume_is_refused_naming_the_file(tmp_path, shape):
    """Catches a 2D image or a 4D file reaching a 3D network as a silently wrong shape."""
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(DataCheckError, match="bad.nii.gz.*single-channel 3D"):
        LoadVolume()(str(tmp_path / "bad.nii.gz"))
