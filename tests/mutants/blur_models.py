"""Replace one shipped model's network output by a trivial method and check that the tests notice.

As a pytest plugin (what the runner below does for every shipped model)::

    VDIR_MUTANT=denoise-gray:blur1.0 PYTHONPATH=tests/mutants python -m pytest -p blur_models tests/core/test_shipped_models.py

makes ``denoise-gray`` return a Gaussian blur (sigma 1.0, on the input pixel grid) of its input instead of the
network's image; ``sr-x2-rgb:bicubic`` returns the bicubic upscaling of its input. Everything else of the
network (latent, estimate) is left as it is. As a script it runs the mutants one by one and exits non-zero
if any one of them passes the tests::

    python tests/mutants/blur_models.py [--models a,b] [pytest paths/options ...]

Never part of the default test run (the file name does not start with ``test_``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

KINDS = {"restore": ("blur0.75", "blur1.0"), "sr": ("bicubic",)}
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def gaussian_blur(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), reflected borders, radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(y)
    c = y.shape[1]
    out = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def replacement(kind: str, scale: int):
    if kind == "bicubic":
        return lambda y: F.interpolate(y, scale_factor=scale, mode="bicubic", align_corners=False)
    sigma = float(kind.removeprefix("blur"))
    return lambda y: gaussian_blur(y, sigma)


def pytest_configure(config):
    """Wrap ``weights.load_weights`` so the named model comes back with its image output replaced."""
    target, _, kind = os.environ["VDIR_MUTANT"].partition(":")
    from napari_vdir.core import weights

    original = weights.load_weights

    def load_weights(path, *args, **kwargs):
        model, info = original(path, *args, **kwargs)
        if info.name == target:
            fake = replacement(kind, info.scale)
            real_forward = model.forward

            def forward(y, *a, **kw):
                res = real_forward(y, *a, **kw)
                res.image = fake(y.float()).to(res.image.dtype)
                return res

            model.forward = forward
        return model, info

    weights.load_weights = load_weights


def main(argv: list[str]) -> int:
    models = None
    if argv[:1] == ["--models"]:
        models, argv = argv[1].split(","), argv[2:]
    sys.path.insert(0, str(REPO / "src"))
    from napari_vdir.core.models import shipped_models
    from napari_vdir.core.weights import read_info

    targets = argv or [str(REPO / "tests" / "core" / "test_shipped_models.py")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    survivors, rows = [], []
    for name, path in shipped_models().items():
        if models and name not in models:
            continue
        for kind in KINDS["sr" if read_info(path).task == "sr" else "restore"]:
            mutant = f"{name}:{kind}"
            proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "blur_models", "-q", "-p", "no:cacheprovider",
                                   "-o", "addopts=", "-rf", *targets], cwd=REPO, capture_output=True, text=True,
                                  env=dict(env, VDIR_MUTANT=mutant))
            failed = [line.split()[1].split("::")[-1] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
            caught = proc.returncode != 0 and bool(failed)
            rows.append(f"| `{mutant}` | {'caught' if caught else '**survived**'} | {', '.join(failed) or '-'} |")
            if not caught:
                survivors.append(mutant)
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            print(rows[-1], flush=True)
    print(f"{len(rows) - len(survivors)} of {len(rows)} mutants caught" + (f"; survived: {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
