"""Export a bundle's deployed student to ONNX, TorchScript or ``torch.export``, checked against the eager model.

Usage::

    python -m monai_rd.export --bundle bundles/<name> [--ckpt <ckpt_dir>/model.pt] \\
        --format onnx|torchscript|torch_export --out <file> [--images <folder of real images>] [--<key> <value> ...]

The student is built from the bundle's ``configs/inference.json`` (``network_def``, with any ``--key value``
overrides, as ``monai.bundle run`` takes them, e.g. ``--student mobilenetv2``), and ``model.pt`` is loaded
**strictly**: a missing or unexpected weight stops the export, naming it. A few real images (``--images``, default
the config's ``input_dir``), listed by the bundle's own ``datalist`` (image files; for segmentation NIfTI volumes and
DICOM series folders), go through the bundle's own ``preprocessing`` (segmentation: to the sliding window's
``roi_size``); the exported file is loaded back (ONNX through ONNX Runtime) and must give the eager model's logits
within ``--atol`` (1e-4) on them, in a batch and one by one, before it is moved to ``--out``, so a file at ``--out``
has passed the check. The batch dimension is dynamic in every format. The exported model returns logits (per voxel
for segmentation, on windows of ``roi_size``: run it through a sliding window as ``inference.json`` does); apply
softmax (sigmoid for multi-label bundles) as the bundle's ``postprocessing`` does.

Beside the file, ``<out>.metadata.json`` describes the trained model (MONAI's metadata, with the model's own input
channels and size and classes from its ``model_meta.json``, and the check's result). A check image that cannot be read
or is not finite is named, and the export stops; a model whose logits are not finite is refused as such. A model of a
teacher baseline (``--method probe``, ...) deploys the teacher, not a student: it is refused.

- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter; weights inside the file).
- ``torch_export``: ``torch.export.export`` saved with ``torch.export.save`` (``.pt2``; load with
  ``torch.export.load(path).module()``).
- ``torchscript``: ``torch.jit.trace`` saved with ``torch.jit.save``; ``torch.jit`` is deprecated in recent torch
  (it warns), prefer the two others.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.transforms import ResizeWithPadOrCrop
from monai.utils import convert_to_tensor

from monai_rd.bundle.command_line import check_overrides
from monai_rd.data.checks import describe_error
from monai_rd.errors import CheckpointMismatchError, DataCheckError, MonaiRDError, NonFiniteError, OptionError
from monai_rd.utils.files import write_json_atomic

__all__ = [
    "FORMATS",
    "bundle_network",
    "export_model",
    "export_to_file",
    "load_exported",
    "main",
    "preprocess_images",
    "write_export_metadata",
]

logger = logging.getLogger("monai_rd.export")  # not "__main__" under `python -m`

FORMATS = ("onnx", "torchscript", "torch_export")


def _parser(bundle: str, overrides: Mapping[str, Any]) -> ConfigParser:
    config = os.path.join(bundle, "configs", "inference.json")
    if not os.path.isfile(config):
        raise OptionError(f"--bundle {bundle}: {config} does not exist; pass a bundle folder (e.g. bundles/rd_demo).")
    check_overrides(overrides, config, source="the export command line")
    parser = ConfigParser()
    parser.read_config(config)
    parser.update({"bundle_root": bundle, **overrides})
    return parser


def bundle_network(
    bundle: str, ckpt: str | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[nn.Module, ConfigParser]:
    """The bundle's deployed student (``network_def`` of ``inference.json``), ``ckpt`` loaded strictly, in eval mode.

    Args:
        bundle: the bundle folder (``bundles/<name>``).
        ckpt: the weights (a state dict, or ``{"model": state dict}``); default ``<ckpt_dir>/model.pt`` of the config.
            Its folder becomes the config's ``ckpt_dir`` (where e.g. ``rd_classify`` finds its classes).
        overrides: config ids -> values, as ``--key value`` on ``monai.bundle run``.

    Returns:
        ``(network on CPU, the parsed inference config)``.

    Raises:
        OptionError: the bundle has no ``configs/inference.json``.
        FileNotFoundError: ``ckpt`` does not exist.
        CheckpointMismatchError: the weights do not fit the network (names the missing/unexpected/mis-shaped keys).
    """
    overrides = dict(overrides or {})
    if ckpt is not None:
        overrides.setdefault("ckpt_dir", os.path.dirname(os.path.abspath(ckpt)))
        overrides.setdefault("model_file", os.path.abspath(ckpt))
    parser = _parser(bundle, overrides)
    ckpt = ckpt or parser.get_parsed_content("model_file")
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist; train the bundle first, or pass --ckpt <model.pt>.")
    net = parser.get_parsed_content("network_def", instantiate=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and set(state) == {"model"} and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(
            f"{ckpt} does not fit the network of {bundle}/configs/inference.json: {e}\nPass the options the model was "
            "trained with (e.g. --student, --in_channels, --class_names), or the right --ckpt."
        ) from e
    return net.eval(), parser


def preprocess_images(
    parser: ConfigParser, images: str | None = None, max_images: int = 8, crop_to_window: bool = True
) -> tuple[torch.Tensor, list[str]]:
    """Up to ``max_images`` real images of a folder, listed by the bundle's own ``datalist`` (PNG/DICOM files for
    classification, NIfTI files and DICOM series folders for segmentation), through its ``preprocessing``, as one
    batch. For a bundle that infers with a sliding window, each image is by default centre-cropped or padded to the
    window's ``roi_size``: the input the deployed network sees.

    Args:
        parser: the parsed inference config (its ``datalist``, ``preprocessing``, optional sliding-window
            ``inferer`` and, by default, its ``input_dir``); its ``input_dir`` is set to ``images``.
        images: a folder of images; default the config's ``input_dir``.
        max_images: how many images (the first, by path).
        crop_to_window: bring each image to the sliding window's ``roi_size`` (when the bundle has one); ``False``
            keeps whole preprocessed images, for the bundle's inferer.

    Returns:
        ``(batch (N, C, *spatial) float32, the image paths)``.

    Raises:
        DataCheckError: the folder does not exist or holds no image, or its images differ in size and the bundle
            has no sliding window to bring them to one.
    """
    folder = images if images is not None else parser.get_parsed_content("input_dir")
    parser["input_dir"] = folder
    try:
        items = parser.get_parsed_content("datalist", lazy=False)[:max_images]
    except Exception as e:
        reason = _user_error(e)
        if not isinstance(reason, FileNotFoundError):
            raise
        raise DataCheckError(
            f"{reason} The export is checked on real images: pass --images <folder of a few images>."
        ) from e
    transform = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer") if crop_to_window and "inferer" in parser else None
    window = ResizeWithPadOrCrop(inferer.roi_size) if isinstance(inferer, SlidingWindowInferer) else None
    tensors, bad = [], []
    for it in items:
        try:
            image = transform(dict(it))["image"]
        except Exception as e:  # a check image that cannot be read is the user's to replace: name it
            bad.append(f"{it['image']}: not read ({describe_error(e)})")
            continue
        image = convert_to_tensor(window(image) if window else image, track_meta=False).float()
        if not torch.isfinite(image).all():
            bad.append(f"{it['image']}: NaN or infinite values after the bundle's preprocessing")
            continue
        tensors.append(image)
    if bad:
        raise DataCheckError(
            f"{len(bad)} of the check images under {folder!r} cannot be used: " + "; ".join(bad) + ". Remove them, "
            "or pass --images <a folder of a few good images>."
        )
    shapes = sorted({tuple(t.shape) for t in tensors})
    if len(shapes) > 1:
        raise DataCheckError(
            f"the images under {folder!r} come out of the bundle's preprocessing in {len(shapes)} shapes {shapes}; "
            "pass --images <folder of images of one size>."
        )
    return torch.stack(tensors), [it["image"] for it in items]


def export_to_file(net: nn.Module, example: torch.Tensor, fmt: str, path: str) -> None:
    """Write ``net`` to ``path`` in ``fmt`` with a dynamic batch dimension, unchecked (see :func:`export_model`).

    Args:
        net: the network, in eval mode.
        example: an example input ``(N, C, H, W)`` with N >= 2 (the exporters specialise a batch of 1).
        fmt: one of :data:`FORMATS`.
        path: the file to write.
    """
    batch = torch.export.Dim("batch", min=1, max=65536)
    if fmt == "onnx":
        torch.onnx.export(
            net, (example,), path, dynamo=True, external_data=False, verbose=False,
            input_names=["image"], output_names=["logits"], dynamic_shapes=({0: batch},),
        )
    elif fmt == "torch_export":
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), path)
    else:
        torch.jit.save(torch.jit.trace(net, example), path)


def load_exported(path: str, fmt: str) -> Any:
    """A callable ``(N, C, H, W) float32 tensor -> logits tensor`` running an exported file.

    Args:
        path: the exported file.
        fmt: its format, one of :data:`FORMATS` (``onnx`` runs on ONNX Runtime's CPU provider).

    Returns:
        The callable.
    """
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torch_export":
        return torch.export.load(path).module()
    return torch.jit.load(path, map_location="cpu")


def export_model(
    bundle: str,
    out: str,
    fmt: str = "onnx",
    ckpt: str | None = None,
    images: str | None = None,
    atol: float = 1e-4,
    max_images: int = 8,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the bundle's student to ``out`` after checking the exported file against the eager model.

    Args:
        bundle: the bundle folder.
        out: the file to write (only once it passed the check).
        fmt: one of :data:`FORMATS`.
        ckpt: the weights; default the config's ``<ckpt_dir>/model.pt``.
        images: folder of real images for the check; default the config's ``input_dir``.
        atol: the largest allowed absolute difference of any logit.
        max_images: images used for the check.
        overrides: config ids -> values for ``inference.json``.

    Returns:
        ``{"format", "out", "checkpoint", "images", "batch_max_abs_diff", "single_max_abs_diff"}``.

    Raises:
        OptionError: unknown ``fmt``, or no bundle config.
        CheckpointMismatchError: the weights do not fit the network.
        DataCheckError: no image to check with.
        RuntimeError: the exported model's logits differ from the eager model's by more than ``atol`` (nothing is
            written to ``out``).
    """
    if fmt not in FORMATS:
        raise OptionError(f"--format must be one of {list(FORMATS)}, got {fmt!r}.")
    net, parser = bundle_network(bundle, ckpt, overrides)
    x, paths = preprocess_images(parser, images, max_images)
    # at least 2 images in the example, so the exporters do not specialise the batch dimension to 1
    example = x if len(x) > 1 else x.repeat(2, *[1] * (x.dim() - 1))  # 2D (B, C, H, W) or 3D (B, C, D, H, W)
    with torch.no_grad():
        expected = net(x)
    if not torch.isfinite(expected).all():
        raise NonFiniteError(
            f"the model {parser.get_parsed_content('model_file')} gives NaN or infinite logits on the (finite) check "
            f"images {paths}: its weights are not finite (a diverged run?). Export a model from a run that trained "
            "normally."
        )
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(out)}.{secrets.token_hex(4)}.tmp")
    try:
        with torch.no_grad():
            export_to_file(net, example, fmt, tmp)
        run = load_exported(tmp, fmt)
        with torch.no_grad():
            batch_diff = float((run(x) - expected).abs().max())
            single_diff = max(float((run(x[i : i + 1]) - expected[i : i + 1]).abs().max()) for i in range(len(x)))
        if not max(batch_diff, single_diff) <= atol:  # also catches NaN (the eager logits are finite here)
            raise RuntimeError(
                f"the {fmt} export of {bundle} gives logits up to {max(batch_diff, single_diff):.3g} away from the "
                f"eager model on {len(paths)} images (allowed {atol}); it was not written. Report this with the bundle "
                "and torch version."
            )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    report = {
        "format": fmt,
        "out": os.path.abspath(out),
        "checkpoint": parser.get_parsed_content("model_file"),
        "images": paths,
        "batch_max_abs_diff": batch_diff,
        "single_max_abs_diff": single_diff,
    }
    report["metadata"] = write_export_metadata(bundle, parser.get_parsed_content("model_spec"), report)
    logger.info(
        f"{fmt} export written to {report['out']}: logits within {max(batch_diff, single_diff):.2g} of the eager model "
        f"on {len(paths)} real images (batch and one by one)."
    )
    return report


def write_export_metadata(bundle: str, spec: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """Write ``<out>.metadata.json`` beside an export: the bundle's MONAI metadata with the trained model's own
    ``network_data_format`` (input channels and size, classes), the model's spec, and the export's check.

    Args:
        bundle: the bundle folder (its ``configs/metadata.json`` is the base, when it has one).
        spec: the trained model's spec (``model_meta.json``).
        report: the export's report (format, file, checkpoint, check images and differences).

    Returns:
        The path written.
    """
    base = os.path.join(bundle, "configs", "metadata.json")
    meta = dict(ConfigParser.load_config_file(base)) if os.path.isfile(base) else {}
    meta["network_data_format"] = spec["network_data_format"]
    meta["monai_rd_model"] = dict(spec)
    checked = ("format", "checkpoint", "batch_max_abs_diff", "single_max_abs_diff")
    meta["monai_rd_export"] = {k: report[k] for k in checked}
    path = f"{report['out']}.metadata.json"
    write_json_atomic(meta, path)
    return path


def _parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``--key value`` pairs -> config overrides, values read as Python literals when they are (as python-fire does)."""
    out: dict[str, Any] = {}
    it = iter(extra)
    for token in it:
        if not token.startswith("--") or len(token) == 2:
            raise OptionError(f"unexpected argument {token!r}: config overrides are --key value pairs.")
        key, _, value = token[2:].partition("=")
        if not _:
            value = next(it, None)
            if value is None:
                raise OptionError(f"--{key} needs a value.")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of :func:`export_model`; returns the exit status (1 with the reason on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_rd.export",
        description="Export a bundle's deployed student (ONNX, TorchScript, torch.export), checked on real images.",
        epilog="Any other --key value is a config override of inference.json, as for `python -m monai.bundle run`.",
    )
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/rd_demo")
    parser.add_argument("--ckpt", help="weights (default: <ckpt_dir>/model.pt of the bundle config)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="file to write (.onnx, .ts, .pt2)")
    parser.add_argument("--images", help="folder of real images for the check (default: the config's input_dir)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed logit difference to the eager model")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    try:
        overrides = _parse_overrides(extra)
        export_model(args.bundle, args.out, args.format, args.ckpt, args.images, args.atol, overrides=overrides)
    except Exception as e:
        reason = _user_error(e)
        if reason is None:  # not something the user can fix: keep the traceback
            raise
        print(f"monai_rd.export: {type(reason).__name__}: {reason}", file=sys.stderr)
        return 1
    return 0


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The innermost error a user can fix (a ``MonaiRDError`` or a missing file) in ``exc``'s chain: MONAI's config
    parser wraps what a config expression raises in ``RuntimeError("Failed to evaluate ...")``."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (MonaiRDError, FileNotFoundError)):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


if __name__ == "__main__":
    sys.exit(main())
