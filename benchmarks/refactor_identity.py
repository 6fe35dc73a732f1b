"""Train the demo bundle briefly with several methods and record a digest of each ``model.pt``.

Used to check that a change meant to keep results (a refactoring) gives the same deployed weights, bit for bit,
on a CPU with a fixed seed. Run it at the old commit and at the new one, from each tree's root, and compare the
two JSON files (``--compare OLD.json``)::

    python benchmarks/refactor_identity.py --json /tmp/old.json                      # in the old tree
    python benchmarks/refactor_identity.py --json new.json --compare /tmp/old.json   # in the new tree

Each run is ``python -m monai.bundle run --config_file bundles/rd_demo/configs/train.json --method <m>
--epochs <n> --seed 0`` into a scratch folder, on the CPU (``CUDA_VISIBLE_DEVICES=''``), plus the bundle options
given with ``--set key=value ...`` (e.g. ``--set num_workers=0 batch_size=16``). The digest is the SHA-256 of every
tensor of the saved state dict (names, dtypes, shapes and bytes, in key order), so it does not depend on how
``torch.save`` lays the file out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, REPO)

from monai_rd.compare.grid import parse_overrides  # noqa: E402

DEFAULT_METHODS = ("rd", "student", "kd")


def state_digest(path: str) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor saved in ``path`` (a ``model.pt``)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k in sorted(value):
                walk(f"{prefix}.{k}", value[k])
        elif isinstance(value, torch.Tensor):
            t = value.detach().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{prefix}={value!r}".encode())

    walk("", obj)
    return h.hexdigest()


def run_method(method: str, epochs: int, extra: list[str]) -> dict:
    """Train the demo with ``method`` into a scratch folder; the model digest, test-free, and the run's seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", "bundles/rd_demo/configs/train.json",
            "--method", method, "--epochs", str(epochs), "--seed", "0",
            "--ckpt_dir", os.path.join(tmp, "models"), "--output_dir", os.path.join(tmp, "eval"), *extra,
        ]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        start = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{method}: the run failed (exit {proc.returncode})")
        model = os.path.join(tmp, "models", "model.pt")
        return {"command": " ".join(cmd[1:]).replace(tmp, "<tmp>"), "model_digest": state_digest(model),
                "seconds": round(time.time() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", required=True, help="where to write the digests")
    parser.add_argument("--compare", help="a JSON written by this script at another commit: exit 1 on any difference")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="other bundle options, e.g. --set num_workers=0"
    )
    args = parser.parse_args(argv)
    extra = [arg for key, value in parse_overrides(args.set).items() for arg in (f"--{key}", value)]
    rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"commit": rev, "torch": torch.__version__, "epochs": args.epochs, "runs": {}}
    for m in args.methods:
        out["runs"][m] = run_method(m, args.epochs, extra)
        print(m, out["runs"][m]["model_digest"], f"{out['runs'][m]['seconds']} s", flush=True)
    if args.compare:
        old = json.load(open(args.compare))
        out["compared_with"] = {"commit": old["commit"], "same": {}}
        for m, r in out["runs"].items():
            if m in old["runs"]:
                out["compared_with"]["same"][m] = r["model_digest"] == old["runs"][m]["model_digest"]
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    if args.compare:
        same = out["compared_with"]["same"]
        print("identical: " + ", ".join(f"{m}={v}" for m, v in same.items()))
        return 0 if all(same.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
