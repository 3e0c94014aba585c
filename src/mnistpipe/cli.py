"""The `mnistpipe` command: predict digits in your own images, export models, show info."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import experiments, paths, pr_report, sweep
from .errors import UserError, exit_on_user_error

DEFAULT_MODEL = str(paths.MODEL)


def model_file(path: str) -> Path:
    """The --model file; the default is relative to the project root, so a missing one gets a hint."""
    if not Path(path).exists():
        raise UserError(f"{path}: model checkpoint not found; run mnistpipe from the project's root "
                        f"after `dvc repro` (which trains {DEFAULT_MODEL}), or pass --model PATH")
    return Path(path)


def package_version() -> str:
    try:
        return version("mnistpipe")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def escape_what_cannot_print() -> None:
    """Names the terminal cannot show (non-UTF-8 bytes, an ASCII locale) come out escaped, not as
    a UnicodeEncodeError halfway through the output."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .models import count_parameters, describe

    escape_what_cannot_print()
    path = model_file(args.model)
    model, info = load_model(path)
    print(f"model: {args.model}")
    print(f"architecture: {describe(info.spec)}")
    print(f"parameters: {count_parameters(model):,}")
    print(f"normalization: mean {info.mean:.4f}, std {info.std:.4f}")
    print(f"calibration temperature: {info.temperature:.4f} (probabilities from logits / T)")
    print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}")
    warn_stale_exports(path)
    return 0


def warn_stale_exports(model_path) -> None:
    """An export made before the last retraining must not pass for the current model."""
    from .export import SUFFIXES, stale_exports

    for path in stale_exports(model_path):
        print(f"warning: {path} was exported from other weights than {model_path}; "
              f"rerun `mnistpipe export{' --format pt2' if path.suffix == SUFFIXES['pt2'] else ''}`",
              file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_files, print_results

    escape_what_cannot_print()
    model = model_file(args.model)
    code = print_results(predict_files(args.paths, model, top=args.top), as_json=args.json)
    warn_stale_exports(model)
    return code


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    result = export_model(model_file(args.model), args.format, args.output)
    check = ("not verified (install onnxruntime to check it)" if result.max_diff is None
             else f"verified against PyTorch: max |logit diff| {result.max_diff:.2e}")
    print(f"wrote {result.path} ({result.format}, {result.size:,} bytes); {check}")
    print("input: float32 [batch, 1, H, W] normalized as (pixels/255 - mean)/std; "
          "mean, std and the spec are stored in the file's metadata")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from .compare import compare, format_markdown, format_table, load_run

    result = compare(load_run(args.a), load_run(args.b), args.alpha)
    text = format_markdown(result) if args.md else format_table(result)
    print(json.dumps(dataclasses.asdict(result), indent=2) if args.json else text)
    return 1 if args.fail_if_worse and result.b_worse else 0


def add_info(sub) -> None:
    info = sub.add_parser("info", help="describe a trained model")
    info.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (default: %(default)s)")
    info.set_defaults(func=cmd_info)


def add_predict(sub) -> None:
    predict = sub.add_parser("predict", help="read the digit in your own image files")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="image files (.png .jpg .jpeg .bmp .gif .webp) or directories of them")
    predict.add_argument("--model", default=DEFAULT_MODEL,
                         help="checkpoint (default: %(default)s)")
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.add_argument("--top", type=int, default=3, metavar="K",
                         help="show the K most likely digits (default: %(default)s)")
    predict.set_defaults(func=cmd_predict)


def add_export(sub) -> None:
    export = sub.add_parser("export", help="export a trained model to ONNX or a torch.export archive")
    export.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (default: %(default)s)")
    export.add_argument("--format", choices=list(paths.EXPORT_SUFFIXES), default="onnx",
                        help="onnx (any ONNX runtime) or pt2 (torch.export archive) (default: %(default)s)")
    export.add_argument("--output", metavar="PATH",
                        help="where to write (default: the checkpoint's path with .onnx or .pt2)")
    export.set_defaults(func=cmd_export)


def add_compare(sub) -> None:
    comp = sub.add_parser("compare", help="is run B better or worse than run A, beyond noise?")
    comp.add_argument("a", nargs="?", default="HEAD", help="git revision, branch or dvc exp name (default: HEAD)")
    comp.add_argument("b", nargs="?", default=None, help="the same, or the workspace if omitted")
    form = comp.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print one JSON document")
    form.add_argument("--md", action="store_true", help="print markdown: the verdict first, then the table")
    comp.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    comp.add_argument("--fail-if-worse", action="store_true",
                      help="exit 1 when B is significantly worse than A (a CI gate)")
    comp.set_defaults(func=cmd_compare)


# Each subcommand: a function that adds its parser (and sets `func`, which runs it).
SUBCOMMANDS = [add_info, add_predict, add_export, add_compare, pr_report.add_parser,
               experiments.add_parser, sweep.add_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnistpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
