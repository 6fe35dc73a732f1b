"""The check the segmentation doc-command tests share: the exported TorchScript gives the eager student's output."""

import torch


def assert_torchscript_matches_eager(
    bundle_dir: str, models_dir: str, images_dir: str, num_classes: int
) -> torch.Tensor:
    """Load ``models_dir/model.pt`` into the bundle's network and ``models_dir/model.ts`` independently of
    ``ckpt_export``, run both through the bundle's own preprocessing and inferer on the first image of ``images_dir``,
    and assert they agree within 1e-5.

    Args:
        bundle_dir: the bundle (its ``configs/inference.json`` is used).
        models_dir: folder with ``model.pt`` and the exported ``model.ts``.
        images_dir: folder of input images.
        num_classes: output channels the segmentation must have.

    Returns:
        The preprocessed input (1, C, *spatial), for further checks.
    """
    from monai_rd.export import bundle_network, preprocess_images

    eager, parser = bundle_network(bundle_dir, f"{models_dir}/model.pt")
    x, _ = preprocess_images(parser, images_dir, max_images=1, crop_to_window=False)
    inferer = parser.get_parsed_content("inferer")
    scripted = torch.jit.load(f"{models_dir}/model.ts", map_location="cpu").eval()
    with torch.no_grad():
        expected, got = inferer(x, eager), inferer(x, scripted)
    assert expected.shape == (1, num_classes, *x.shape[2:])
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), float((got - expected).abs().max())
    return x
