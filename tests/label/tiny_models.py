"""Tiny deployed students (model.pt + model_meta.json, as the bundles' training writes them) and images for the label
tests: a 32 px ResNet18 classifier for rd_demo-like bundles and small UNets for the segmentation bundles, with a
chosen head bias or all-zero weights where a test needs a known prediction."""

import os
import shutil

import torch

from demo_data.brain_segment import SEGMENT_CLASSES
from monai_rd.bundle import model_spec, segmentation_model_spec, write_model_spec
from monai_rd.networks import SegmentationStudent, StudentClassifier

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "bundles", "rd_demo")
SEG2D = os.path.join(REPO, "bundles", "rd_brain_segment_2d")
SEG3D = os.path.join(REPO, "bundles", "rd_brain_segment")
DEMO_CLASSES = ["cerebellum", "frontal", "occipital", "parietal", "temporal"]
# train.json's reading defaults (what rd_demo's training writes into model_meta.json)
READING = dict(frame=None, window="file", slice_axis=-1, slice_index=None, projection=None)
TINY_UNET = dict(student="unet", student_channels=[4, 8], student_strides=[2], student_res_units=1)
ROI = {SEG2D: [40, 96], SEG3D: [40, 96, 16]}


def write_classifier(folder, bundle=DEMO, classes=DEMO_CLASSES, favour=None, seed=0):
    """A 32 px ResNet18 student of `bundle`; `favour`: the class its head's bias makes it predict for every image."""
    os.makedirs(folder, exist_ok=True)
    write_model_spec(model_spec(list(classes), 32, 1, False, "resnet18", bundle, reading=READING), str(folder))
    torch.manual_seed(seed)
    net = StudentClassifier("resnet18", num_classes=len(classes), in_channels=1)
    if favour is not None:
        with torch.no_grad():
            net.head.bias.copy_(torch.tensor([50.0 if c == favour else 0.0 for c in classes]))
    torch.save(net.state_dict(), os.path.join(folder, "model.pt"))


def seg_student_options(bundle):
    """The model_meta.json fields of a tiny UNet student of a brain segmentation bundle (2D or 3D)."""
    return dict(class_names=list(SEGMENT_CLASSES), spatial_dims=len(ROI[bundle]), in_channels=1, roi_size=ROI[bundle],
                intensity_range=[0.0, 255.0], axcodes=None, pixdim=None, **TINY_UNET)


def write_segmenter(folder, bundle, uniform=False, seed=0):
    """A tiny UNet student of a brain segmentation bundle; `uniform`: all-zero weights (every voxel 1/6 per class)."""
    os.makedirs(folder, exist_ok=True)
    fields = seg_student_options(bundle)
    write_model_spec(segmentation_model_spec(bundle, **fields), str(folder))
    torch.manual_seed(seed)
    net = SegmentationStudent("unet", num_classes=len(SEGMENT_CLASSES), spatial_dims=fields["spatial_dims"],
                              in_channels=1, channels=TINY_UNET["student_channels"],
                              strides=TINY_UNET["student_strides"], num_res_units=1)
    if uniform:
        with torch.no_grad():
            for p in net.head.parameters():
                p.zero_()
    torch.save(net.state_dict(), os.path.join(folder, "model.pt"))


def demo_pngs(folder, per_class=1, classes=DEMO_CLASSES):
    """Copies of rd_demo's PNGs, `<class>_<file>`; returns the image ids (file names without .png)."""
    os.makedirs(folder, exist_ok=True)
    ids = []
    for c in classes:
        source = os.path.join(DEMO, "data", c)
        for name in sorted(os.listdir(source))[:per_class]:
            shutil.copy(os.path.join(source, name), os.path.join(folder, f"{c}_{name}"))
            ids.append(f"{c}_{name[:-4]}")
    return ids


def brain_slices(folder, bundle, count, prefix=""):
    """Copies of a brain segmentation bundle's images; returns {image id: its label map in the bundle}."""
    os.makedirs(folder, exist_ok=True)
    images = os.path.join(bundle, "data", "images")
    out = {}
    for name in sorted(os.listdir(images))[:count]:
        shutil.copy(os.path.join(images, name), os.path.join(folder, prefix + name))
        out[prefix + name[: -len(".nii.gz")]] = os.path.join(bundle, "data", "labels", name)
    return out


def copy_bundle_configs(bundle, dest):
    """A bundle folder holding only the bundle's configs (training then writes into dest, never the repository)."""
    shutil.copytree(os.path.join(bundle, "configs"), os.path.join(dest, "configs"))
    return str(dest)
