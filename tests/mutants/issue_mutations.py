"""Apply, one at a time, the mutations issue 19 found surviving, and check that the tests now catch each.

    python tests/mutants/issue_mutations.py [--only ID,ID] [--keep]

Works on a private copy of the committed tree (``git archive HEAD`` into a temporary folder, run with
``PYTHONPATH=<copy>/src``), so the shared working tree is never edited. Each mutation is a text
replacement in one source file and names the tests that must fail; a replacement whose text is no longer
in the file is reported as "n/a" (the code moved on: update the entry). Exit status 1 if any mutant
survives. The blur/bicubic replacements of the shipped models are in ``blur_models.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
S = "src/napari_vdir/"

# (id, file, original text, mutated text, tests that must fail)
MUTATIONS = [
    ("cli-writes-input", S + "cli.py", "write_image(dst, result, layout)", "write_image(dst, image, layout)",
     ["tests/cli/test_cli_values.py"]),
    ("cli-no-duplicate-check", S + "cli.py", "if key in seen:", "if False:",
     ["tests/cli/test_cli_values.py::test_two_inputs_with_one_output_name_are_refused"]),
    ("cli-jpeg-saved-as-jpg", S + "cli.py",
     'extension = ".png" if src.suffix.lower() in (".jpg", ".jpeg") else src.suffix', "extension = src.suffix",
     ["tests/cli/test_cli_values.py"]),
    ("init-ignored", S + "training/trainer.py", "if r.init:", "if False:",
     ["tests/training/test_training_runs.py::test_fine_tune_starts_from_init"]),
    ("ddp-wrapper-removed", S + "training/trainer.py",
     "self.train_model = DDP(self.model, device_ids=ids, find_unused_parameters=True)",
     "self.train_model = self.model", ["tests/training/test_training_runs.py::test_ddp_ranks_end_with_identical_parameters"]),
    ("uncertainty-is-variance", S + "core/inference.py", "uncertainty = variance.sqrt_()[crop]",
     "uncertainty = variance[crop]", ["tests/core/test_restore_values.py"]),
    ("uncertainty-x10", S + "core/inference.py", "uncertainty = variance.sqrt_()[crop]",
     "uncertainty = variance.sqrt_()[crop] * 10", ["tests/core/test_restore_values.py"]),
    ("sampling-off", S + "core/inference.py", "sample=self.samples > 1, generator=generator",
     "sample=False, generator=generator", ["tests/core/test_restore_values.py"]),
    ("strength-inverted", S + "core/inference.py", "shift = (self.strength - 1.0) *", "shift = (1.0 - self.strength) *",
     ["tests/core/test_restore_values.py"]),
    ("float-output-clipped", S + "core/intensity.py", "        return v.astype(self.dtype)\n",
     "        return np.clip(v, 0, 1).astype(self.dtype)\n", ["tests/core/test_restore_values.py"]),
    ("uint8-over-256", S + "core/intensity.py", "cls(dt, 0.0, 255.0) if dt == np.uint8", "cls(dt, 0.0, 256.0) if dt == np.uint8",
     ["tests/core/test_restore_values.py"]),
    ("estimate-top-left-16", S + "core/inference.py", "estimate = estimate[:, :h, :w].mean(dim=(1, 2))",
     "estimate = estimate[:, :16, :16].mean(dim=(1, 2))",
     ["tests/core/test_shipped_models.py::test_noise_estimate_covers_the_whole_image"]),
    ("radius-ignores-res-blocks", S + "core/nets.py", "trunk = 1 + self.rir_blocks * (2 * self.res_blocks + 1) + 2",
     "trunk = 1 + self.rir_blocks * 3 + 2", ["tests/core/test_restore_values.py"]),
    ("tile-margin-halved", S + "core/inference.py", "    return _ceil_to(model.cfg.receptive_radius, model.cfg.size_multiple)",
     "    return _ceil_to(model.cfg.receptive_radius // 2, model.cfg.size_multiple)",
     ["tests/core/test_shipped_models.py::test_paper_size_super_resolver_tiled_matches_whole",
      "tests/core/test_shipped_models.py::test_large_radius_denoiser_dask_matches_whole"]),
    ("weights-nan-check-removed", S + "core/weights.py", "        if not torch.isfinite(value).all():",
     "        if False:", ["tests/core/test_weights_format.py"]),
    ("weights-version-check-removed", S + "core/weights.py", "            if version > FORMAT_VERSION:",
     "            if False:", ["tests/core/test_weights_format.py"]),
    ("ensemble-identity-only", S + "core/inference.py", "(_TRANSFORMS if self.ensemble else _TRANSFORMS[:1])",
     "(_TRANSFORMS[:1] if self.ensemble else _TRANSFORMS[:1])", ["tests/core/test_restore_values.py"]),
]


def main(argv: list[str]) -> int:
    only = set(argv[argv.index("--only") + 1].split(",")) if "--only" in argv else None
    with tempfile.TemporaryDirectory(prefix="vdir-mutants-") as tmp:
        copy = Path(tmp)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=str(copy / "src"))
        survivors, rows = [], []
        for ident, rel, old, new, tests in MUTATIONS:
            if only and ident not in only:
                continue
            path = copy / rel
            source = path.read_text()
            if source.count(old) != 1:
                rows.append(f"| `{ident}` | n/a (text not found once in {rel}) | |")
                print(rows[-1], flush=True)
                continue
            path.write_text(source.replace(old, new))
            try:
                proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                       "-o", "addopts=", "-rf", *tests], cwd=copy, env=env, capture_output=True,
                                      text=True)
            finally:
                path.write_text(source)
            failed = [line.split()[1].split("::")[-1] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
            caught = proc.returncode == 1 and bool(failed)
            if not caught:
                survivors.append(ident)
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            rows.append(f"| `{ident}` | {'caught' if caught else '**survived**'} | {', '.join(failed) or '-'} |")
            print(rows[-1], flush=True)
    print(f"{len(rows) - len(survivors)} of {len(rows)} mutants caught" + (f"; survived: {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
