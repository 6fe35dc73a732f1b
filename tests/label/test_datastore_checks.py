"""The app's datastore and label checks in process: names instead of paths, unknown ids, label maps conformed to their
image's grid, class labels checked when saved, uploads removed when a save fails, relative paths in answers."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason='needs the label extra: pip install -e ".[label]"')
from fastapi import HTTPException  # noqa: E402
from tiny_models import DEMO, SEG2D, SEG3D, brain_slices, demo_pngs, write_classifier, write_segmenter  # noqa: E402

from demo_data.brain_segment import SEGMENT_CLASSES  # noqa: E402
from monai_rd.errors import DataCheckError  # noqa: E402
from monai_rd.label import RDLabelApp, UploadFolder, check_name, conform_label_map  # noqa: E402

pytestmark = pytest.mark.label


def _status(call, *args):
    with pytest.raises(HTTPException) as raised:
        call(*args)
    return raised.value.status_code, raised.value.detail


@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "a\\b", "/etc/passwd", "x..y", "", "a\x00b", "a\nb"])
def test_a_name_with_a_path_in_it_is_refused_with_400(bad):
    """Catches an id or tag that would leave the studies folder once joined into a path (separators, '..',
    absolute paths, NUL) being let through."""
    status, detail = _status(check_name, bad, "label tag")
    assert status == 400 and "label tag" in detail


def test_plain_names_pass():
    for good in ("final", "original", "CT_small", "ch2_L_z008", "frontal_ch2_z10 (copy)", "a.b"):
        assert check_name(good, "id") == good


def _write_json(path, content):
    path.write_text(json.dumps(content))
    return str(path)


@pytest.fixture
def app(tmp_path):
    """An app over a classification and a 2D segmentation bundle, a studies folder of PNGs and 2D slices."""
    studies = tmp_path / "studies"
    pngs = demo_pngs(studies)
    slices = brain_slices(studies, SEG2D, 2)
    write_classifier(tmp_path / "models_demo")
    write_segmenter(tmp_path / "models_seg", SEG2D)
    models = f"rd_demo={tmp_path / 'models_demo'},rd_brain_segment_2d={tmp_path / 'models_seg'}"
    application = RDLabelApp(str(tmp_path), str(studies), {"bundle": f"{DEMO},{SEG2D}", "models": models})
    return application, pngs, slices, tmp_path


def test_labels_are_checked_when_saved_and_bad_ones_refused_with_the_reason(app):
    """Catches a label naming an unknown class, or a label map with a value that is no class, off its image's grid
    or of another shape, being saved with 200 and failing only at the next training."""
    application, pngs, slices, tmp = app
    store = application.datastore()
    ok = _write_json(tmp / "ok.json", {"label": "frontal"})
    assert store.save_label(pngs[0], ok, "final", {}) == pngs[0]
    status, detail = _status(store.save_label, pngs[1], _write_json(tmp / "bad.json", {"label": "liver"}), "final", {})
    assert status == 422 and "'liver' is not one of the classes" in detail
    status, detail = _status(store.save_label, pngs[1], ok, "final", {"label": "liver"})  # params win over the file
    assert status == 422 and "liver" in detail
    status, detail = _status(store.save_label, pngs[1], _write_json(tmp / "none.json", {}), "final", {})
    assert status == 422 and "has no class" in detail
    sh = tmp / "x.sh"
    sh.write_text("echo")
    status, detail = _status(store.save_label, pngs[1], str(sh), "final", {"label": "frontal"})
    assert status == 422 and "not '.sh'" in detail

    image_id, truth = next(iter(slices.items()))
    image = nib.load(store.get_image_uri(image_id))
    good = nib.load(truth)
    # as 3D Slicer saves a 2D image's map: a one-slice volume, the segments' names in label_info
    as_volume = tmp / "slicer.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(good.dataobj)[..., None], good.affine), as_volume)
    info = {"label_info": [{"name": "cerebellum", "idx": 1}], "model": "rd_brain_segment_2d"}
    assert store.save_label(image_id, str(as_volume), "final", info) == image_id
    stored = nib.load(store.get_label_uri(image_id, "final"))
    assert stored.shape == image.shape and np.allclose(stored.affine, image.affine)
    assert np.array_equal(np.asarray(stored.dataobj), np.asarray(good.dataobj)) and stored.get_data_dtype() == np.uint8

    def saved(data, affine, label_info=None):
        path = tmp / "m.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), path)
        return _status(store.save_label, image_id, str(path), "final", {"label_info": label_info or []})

    data = np.asarray(good.dataobj)
    status, detail = saved(np.where(data > 0, 7, 0).astype(np.uint8), good.affine)
    assert status == 422 and "[7]" in detail and "not class indices" in detail
    status, detail = saved(data[:20], good.affine)
    assert status == 422 and "shape" in detail
    status, detail = saved(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    assert status == 422 and "not on its image's grid" in detail
    status, detail = saved(data, good.affine, [{"name": "liver", "idx": 1}])
    assert status == 422 and "'liver'" in detail
    # a label map on a PNG of the classification model: no segmentation model reads it
    status, detail = _status(store.save_label, pngs[2], str(as_volume), "final", {})
    assert status == 422 and "label map" in detail
    # the label stored first is still the one the datastore gives
    assert store.get_label_info(pngs[0], "final")["name"] == pngs[0] + ".json"


def test_ids_tags_and_unknown_images_are_refused_before_any_file_is_touched(app):
    """Catches LocalDatastore's unchecked joins: a tag or id with '..' or an absolute path writing or removing a
    file outside the studies folder, and an unknown id answered with a server error instead of 404."""
    application, pngs, _, tmp = app
    store = application.datastore()
    label = _write_json(tmp / "l.json", {"label": "frontal"})
    outside = tmp / "outside"
    outside.mkdir()
    for tag in ("../../outside/pwn", str(outside / "abs"), "..", "a/b"):
        assert _status(store.save_label, pngs[0], label, tag, {})[0] == 400
        assert _status(store.remove_label, pngs[0], tag)[0] == 400
        assert _status(store.get_label_uri, pngs[0], tag)[0] == 400
        assert _status(store.update_label_info, pngs[0], tag, {})[0] == 400
    for image_id in ("../outside/x", str(outside / "x"), "../" + pngs[0]):
        assert _status(store.save_label, image_id, label, "final", {})[0] == 400
        assert _status(store.get_image_uri, image_id)[0] == 400
        assert _status(store.remove_image, image_id)[0] == 400
        assert _status(store.update_image_info, image_id, {})[0] == 400
    for call, args in ((store.get_image_uri, ("nope",)), (store.remove_image, ("nope",)),
                       (store.save_label, ("nope", label, "final", {})), (store.get_image_info, ("nope",))):
        assert _status(call, *args)[0] == 404
    assert _status(store.remove_label, pngs[0], "final")[0] == 404  # no such label yet
    assert os.listdir(outside) == [] and os.path.isfile(label)


def test_a_failed_save_removes_the_upload_and_answers_carry_relative_paths(app):
    """Catches an upload left in the server's temporary folder when its save fails, and absolute server paths in
    the datastore's answers (image info, the training datalist)."""
    application, pngs, _, tmp = app
    store = application.datastore()
    uploads = application.uploads
    assert isinstance(uploads, UploadFolder)
    upload = os.path.join(uploads.path, "tmpabcdefgh.json")
    _write_json(tmp / "u.json", {"label": "liver"})
    os.replace(tmp / "u.json", upload)
    assert uploads.holds(upload) and not uploads.holds(str(tmp / "l.json")) and not uploads.holds("/etc/passwd")
    assert _status(store.save_label, pngs[0], upload, "final", {})[0] == 422
    assert not os.path.exists(upload)
    text = tmp / "tmpnotimage.png"
    text.write_text("not an image")
    os.replace(text, os.path.join(uploads.path, text.name))
    status, detail = _status(store.add_image, "new_image", os.path.join(uploads.path, text.name), {})
    assert status == 422 and "does not read as an image" in detail and uploads.path not in detail
    assert os.listdir(uploads.path) == []

    store.save_label(pngs[0], _write_json(tmp / "ok.json", {"label": "frontal"}), "final", {})
    info = store.get_image_info(pngs[0])
    assert info["path"] == pngs[0] + ".png"
    assert store.datalist() == [
        {"image": pngs[0] + ".png", "label": os.path.join("labels", "final", pngs[0] + ".json")}
    ]


def test_conform_label_map_keeps_the_values_and_takes_the_images_grid(tmp_path):
    """Catches a conformed map that loses values, keeps a float dtype or the label file's own (slightly different)
    affine instead of the image's."""
    image_id, truth = next(iter(brain_slices(tmp_path, SEG3D, 1).items()))
    image = nib.load(tmp_path / f"{image_id}.nii.gz")
    data = np.asarray(nib.load(truth).dataobj).astype(np.float32)
    nudged = image.affine.copy()
    nudged[0, 3] += 1e-5  # within the tolerance: a float round trip through a viewer
    path = tmp_path / "label.nii"
    nib.save(nib.Nifti1Image(data, nudged), path)
    out = conform_label_map(str(path), str(tmp_path / f"{image_id}.nii.gz"), SEGMENT_CLASSES)
    assert out.get_data_dtype() == np.uint8 and np.array_equal(out.affine, image.affine)
    assert np.array_equal(np.asarray(out.dataobj), data.astype(np.uint8))
    nib.save(nib.Nifti1Image(data + 0.5, image.affine), path)
    with pytest.raises(DataCheckError, match="not class indices"):
        conform_label_map(str(path), str(tmp_path / f"{image_id}.nii.gz"), SEGMENT_CLASSES)
    path.write_bytes(b"")
    with pytest.raises(DataCheckError, match="not a readable NIfTI"):
        conform_label_map(str(path), str(tmp_path / f"{image_id}.nii.gz"), SEGMENT_CLASSES)
