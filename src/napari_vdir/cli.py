"""Command line: ``napari-vdir restore | models | demo`` (also ``python -m napari_vdir``).

Errors a user can cause (missing, unreadable or unsupported files, an output that would
overwrite something, a model that does not fit the task, a bad option) end with a one-line
message on stderr, in the command line's words, and a non-zero exit status, never a traceback.
Outputs appear whole or not at all (written beside their name, then renamed).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from napari_vdir import __version__
from napari_vdir.core.errors import OptionProblem, Words
from napari_vdir.core.io import IMAGE_SUFFIXES, ImageFileError, list_images, read_image_file, write_image
from napari_vdir.core.tasks import TASKS

PROG = "napari-vdir"


class CliError(Exception):
    """A problem with the command line itself (inputs, outputs); reported in one line."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line  # restored on exit (catch_warnings saves it)
        return _run(args)


def _run(args) -> int:
    try:
        return args.command(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 — the CLI promises one line, not a traceback
        from napari_vdir.core.inference import RestorationCancelled
        from napari_vdir.core.weights import WeightsError

        if not isinstance(err, (CliError, ImageFileError, WeightsError, RestorationCancelled, ValueError,
                                TypeError, OSError)):
            raise
        _error(err.render(CLI_WORDS) if isinstance(err, OptionProblem) else err)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="VDIR image restoration: denoising, "
                                     "real-noise denoising, super-resolution and JPEG artifact removal.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    p = commands.add_parser("restore", help="restore image files (PNG, JPEG, BMP, TIFF) into a folder",
                            description="Restore image files. TIFF keeps its dtype (uint16 too) and multi-page "
                            "stacks (restored page by page). Outputs are OUTDIR/<name><suffix><extension>.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or folders of them")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--scale", type=int, choices=(2, 4), help="upscaling factor, for --task sr")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", type=Path, help="folder for the results")
    _add_model_options(p)
    p.add_argument("--tile-size", type=int, metavar="PX", help="tile size in pixels (default: chosen by memory)")
    p.add_argument("--ensemble", action="store_true", help="average the 8 flips/rotations (8x slower)")
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="average N draws of the latent (default 1: deterministic)")
    p.add_argument("--strength", type=float, default=1.0, metavar="X",
                   help="1: the plain result (default); >1 restores harder, <1 more gently")
    p.add_argument("--suffix", help="added to each output name (default: _<task>); files in an input folder "
                   "that already end in it are earlier outputs and are skipped")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    p.set_defaults(command=cmd_restore)

    p = commands.add_parser("models", help="list the shipped and user models")
    p.set_defaults(command=cmd_models)

    p = commands.add_parser("demo", help="denoise a generated noisy sample and report what it did",
                            description="Crops skimage.data.astronaut(), adds Gaussian noise with a fixed seed, "
                            "restores it and prints PSNR before/after, the estimated noise level and the time.")
    p.add_argument("--sigma", type=float, default=25.0, help="noise std on the 0-255 scale (default 25)")
    p.add_argument("--size", type=int, default=256, help="crop size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="also save clean, noisy and restored PNGs")
    _add_model_options(p)
    p.set_defaults(command=cmd_demo)

    p = commands.add_parser("export", help="export a model for other tools (bioimage.io package or ONNX file)",
                            description="Write MODEL as a bioimage.io model package (a folder, or a zip when OUT "
                            "ends in .zip) for Fiji/deepImageJ, QuPath, ilastik or bioimageio.core, or as one ONNX file.")
    p.add_argument("model", metavar="MODEL", help="shipped or user model name (see `napari-vdir models`) or "
                   ".safetensors file")
    p.add_argument("--format", required=True, choices=("bioimageio", "onnx"), dest="fmt")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="package folder/.zip or .onnx file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT: a file, or a package folder "
                   "this command wrote earlier (never another folder, a weights file or the model itself)")
    p.set_defaults(command=cmd_export)
    return parser


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME|PATH", help="shipped or user model name, or a .safetensors file "
                   "(default: the task's shipped model; see `napari-vdir models`); a name always means the model, "
                   "write ./NAME for a file without the .safetensors suffix")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bf16/AMP where the device supports it; float32: exact")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="auto: ONNX Runtime (exact, fastest float32 path) where the CPU would run float32, else torch")


# ----------------------------------------------------------------------------- restore

def cmd_restore(args) -> int:
    from napari_vdir.core.request import RestoreOptions, prepare

    options = RestoreOptions(args.task, scale=args.scale, model=args.model, device=args.device,
                             tile_size=args.tile_size, ensemble=args.ensemble, samples=args.samples,
                             strength=args.strength, precision=args.precision, backend=args.backend)
    check_model_file(args)
    suffix = f"_{args.task}" if args.suffix is None else args.suffix
    inputs = collect_inputs(args.inputs, skip_suffix=suffix)
    jobs = plan_outputs(inputs, args.output, suffix, args.overwrite)
    created = make_folder(args.output)
    failed = 0
    try:
        for src, dst in jobs:
            try:
                image, layout = read_image_file(src)
            except ImageFileError as err:  # one bad file does not stop the others
                _error(err)
                failed += 1
                continue
            start = time.perf_counter()
            with TileProgress(src.name) as progress:
                result = prepare(image, options.replace(channel_axis=layout.channel_axis, alpha=layout.alpha,
                                                        progress=progress)).run()
            write_image(dst, result, layout)
            print(f"{src} -> {dst}  {_shape(image)} -> {_shape(result)} {result.dtype}, "
                  f"{time.perf_counter() - start:.1f} s")
    finally:
        remove_if_empty(created)  # a run that wrote nothing leaves no empty folder behind
    if failed and len(jobs) > 1:
        _error(f"{failed} of {len(jobs)} files could not be read")
    return 1 if failed else 0


# restore()'s keywords as this command line's flags: the core's option messages are shown in these words
CLI_WORDS = Words(flags={"task": "--task", "scale": "--scale", "model": "--model", "device": "--device",
                         "tile_size": "--tile-size", "ensemble": "--ensemble", "samples": "--samples",
                         "strength": "--strength", "precision": "--precision", "backend": "--backend"},
                  quote_choices=False)


def check_model_file(args) -> None:
    """A training checkpoint given as ``--model`` gets its own message (the core would call it unreadable)."""
    from napari_vdir.core.models import looks_like_path

    if args.model is not None and looks_like_path(args.model) and Path(args.model).is_file():
        check_not_checkpoint(Path(args.model))


def check_not_checkpoint(path: Path) -> None:
    """A training checkpoint (torch.save: a zip or pickle) passed as weights gets its own message."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt") and head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        return
    exported = sorted(path.parent.glob("*.safetensors"))
    use = (f"use the weights training exported beside it, {exported[0]}" if len(exported) == 1 else
           "use the <name>.safetensors file that training exports beside it")
    raise CliError(f"{path}: this is a training checkpoint (for --resume), not a weights file; {use}")


def collect_inputs(names: list[str], skip_suffix: str = "") -> list[Path]:
    """Files as given, folders expanded to their image files; missing or unsupported -> CliError.

    Files in a folder whose name ends in ``skip_suffix`` are this command's earlier outputs
    (``restore folder -o folder`` run again); they are skipped, with a note. Named files never are.
    """
    inputs: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise CliError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            outputs = [p for p in found if skip_suffix and p.stem.endswith(skip_suffix)]
            if outputs:
                if len(outputs) == len(found):
                    raise CliError(f"{path}: only earlier outputs (names ending in {skip_suffix!r}) in this "
                                   "folder; name files to restore them again")
                _note(f"{path}: skipped {len(outputs)} file{'s' * (len(outputs) > 1)} ending in {skip_suffix!r} "
                      "(earlier outputs; name them to restore them again)")
            inputs.extend(p for p in found if p not in outputs)
        elif not path.exists():
            raise CliError(f"{path}: no such file")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            raise CliError(f"{path}: unsupported file type {path.suffix or '(none)'!r} "
                           f"(use {', '.join(IMAGE_SUFFIXES)})")
        else:
            inputs.append(path)
    return inputs


def plan_outputs(inputs: list[Path], outdir: Path, suffix: str, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) pairs; refuses to overwrite an input (the same file by inode, so hard and
    symbolic links count), to write one output twice, or to replace an existing file without
    ``overwrite`` — all checked before any work starts."""
    if outdir.exists() and not outdir.is_dir():
        raise CliError(f"{outdir}: exists and is not a folder; -o takes a folder")
    sources = {}
    for p in inputs:
        st = p.stat()
        sources[(st.st_dev, st.st_ino)] = p
    jobs, seen = [], set()
    for src in inputs:
        # a restored JPEG is saved losslessly: re-encoding it would bring artifacts back
        extension = ".png" if src.suffix.lower() in (".jpg", ".jpeg") else src.suffix
        dst = outdir / f"{src.stem}{suffix}{extension}"
        key = dst.resolve()
        if dst.exists():
            st = dst.stat()
            same = sources.get((st.st_dev, st.st_ino))
            if same is not None:
                link = "" if same.resolve() == key else f" (it is the same file as {same})"
                raise CliError(f"{dst}: output would overwrite an input file{link}; "
                               "choose another -o folder or --suffix")
        if key in seen:
            raise CliError(f"{dst}: two inputs would be written to this same output; restore them separately")
        if dst.exists() and not overwrite:
            raise CliError(f"{dst}: already exists; pass --overwrite to replace it")
        seen.add(key)
        jobs.append((src, dst))
    return jobs


def make_folder(folder: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, innermost first."""
    created = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        created.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_if_empty(folders: list[Path]) -> None:
    for p in folders:
        try:
            p.rmdir()  # only succeeds on an empty folder
        except OSError:
            return


class TileProgress:
    """A tqdm bar over tiles for one file, fed by restore()'s ``progress(done, total)``."""

    def __init__(self, name: str):
        from tqdm import tqdm

        self.bar = tqdm(desc=name, unit="tile", leave=False, file=sys.stderr, disable=None)  # off when not a terminal

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def _shape(a) -> str:
    return "x".join(str(n) for n in a.shape)


# ----------------------------------------------------------------------------- models

def cmd_models(args) -> int:
    from napari_vdir.core.models import list_models, shipped_dirs

    infos = list_models()
    if not infos:
        raise CliError("no shipped models found (looked in: "
                       + (", ".join(str(d) for d in shipped_dirs()) or "no models folder") + ")")
    rows = [("name", "task", "channels", "scale", "params", "trained steps", "quality")]
    rows += [(i.name, i.task, str(i.channels), f"x{i.scale}", f"{_param_count(i.arch) / 1e6:.2f} M",
              str(i.trained_steps), _quality(i.quality)) for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _param_count(arch) -> int:
    from napari_vdir.core.nets import VDIR

    return sum(p.numel() for p in VDIR(arch).parameters())


def _quality(quality: dict) -> str:
    if not quality:
        return "-"
    return ", ".join(f"{k.replace('_psnr', ' PSNR')} {v:.2f} dB" if k.endswith("psnr") and isinstance(v, float)
                     else f"{k} {v}" for k, v in quality.items())


# ----------------------------------------------------------------------------- export

def cmd_export(args) -> int:
    from napari_vdir.export.package import export_model

    out = export_model(args.model, args.fmt, args.output, overwrite=args.overwrite)
    print(f"{args.model} -> {out} ({args.fmt})")
    return 0


# ----------------------------------------------------------------------------- demo

DEMO_CROP_ORIGIN = (16, 144)  # the astronaut's face and helmet in skimage.data.astronaut()


def demo_images(size: int = 256, sigma: float = 25.0, seed: int = 0):
    """(clean, noisy) uint8 RGB: a crop of skimage.data.astronaut() with Gaussian noise of std
    ``sigma`` (0-255 scale) from a fixed seed, clipped and quantised like a saved photo."""
    from skimage import data

    from napari_vdir.core.degradations import noisy_u8

    if not 16 <= size <= 512:
        raise CliError(f"--size must be between 16 and 512, got {size}")
    full = data.astronaut()
    top, left = (min(o, full.shape[k] - size) for k, o in enumerate(DEMO_CROP_ORIGIN))
    clean = full[top:top + size, left:left + size]
    return clean, noisy_u8(clean, sigma, seed)


def cmd_demo(args) -> int:
    from skimage.metrics import peak_signal_noise_ratio as psnr

    from napari_vdir.core.request import RestoreOptions, prepare

    options = RestoreOptions("denoise", model=args.model, device=args.device, precision=args.precision,
                             details=True, backend=args.backend)
    check_model_file(args)
    clean, noisy = demo_images(args.size, args.sigma, args.seed)
    start = time.perf_counter()
    res = prepare(noisy, options).run()
    elapsed = time.perf_counter() - start
    before, after = psnr(clean, noisy), psnr(clean, res.image)
    print(f"{PROG} demo: blind denoising of a generated sample (nothing downloaded)")
    print(f"  clean     skimage.data.astronaut(), {args.size}x{args.size} RGB crop")
    print(f"  degraded  Gaussian noise sigma {args.sigma:g} (0-255 scale), seed {args.seed}, saved as uint8")
    print(f"  model     {res.model.name} ({res.model.trained_steps} training steps) on {res.device}, "
          f"precision {args.precision}")
    print(f"  PSNR      {before:.2f} dB noisy -> {after:.2f} dB restored ({after - before:+.2f} dB)")
    sigma = res.estimate.get("noise_sigma")
    print("  noise     " + (f"estimated sigma {sigma:.1f} (true {args.sigma:g})" if sigma is not None
                            else "this model has no noise estimator"))
    print(f"  time      {elapsed:.2f} s ({clean.shape[0] * clean.shape[1] / 1e6 / elapsed:.2f} MP/s)")
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        names = []
        for name, image in (("clean", clean), ("noisy", noisy), ("restored", res.image)):
            names.append(str(write_image(args.output / f"demo_{name}.png", image)))
        print(f"  saved     {', '.join(names)}")
    return 0


def _error(message) -> None:
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"{PROG}: error: {text}", file=sys.stderr)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a skipped user model, a float image out of range) as one line, without source lines."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
