"""A small per-class subset of the demo bundle's saved split, for the bundle tests that train on real data."""

import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DATALIST = os.path.join(REPO, "bundles", "rd_demo", "configs", "datalist.json")


def write_demo_subset(path, per_class: dict[str, int]) -> dict:
    """Write the first ``per_class[split]`` items of each class of each split of the demo datalist to ``path``.

    Args:
        path: the subset datalist to write (the format of ``bundles/rd_demo/configs/datalist.json``).
        per_class: split -> items per class; splits not named are left out.

    Returns:
        The subset as written (``classes`` and ``seed`` kept from the demo's datalist).
    """
    full = json.load(open(DEMO_DATALIST))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in per_class.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    with open(path, "w") as f:
        json.dump(sub, f)
    return sub
