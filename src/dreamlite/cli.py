"""The ``dreamlite`` command line. Each command is a thin handler over a library function.

Errors a user can cause (bad paths, bad files, bad arguments) are raised as ``UserError`` (or one of the
library's ValueError subclasses) and printed as one line ``error: ...`` with exit status 2 - never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input; printed without a traceback."""


# --------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from dreamlite.models.unet import MobileUNet
    from dreamlite.presets import PRESETS
    from dreamlite.profile import count_params, unet_gflops

    print(f"{'preset':<18}{'params':>14}{'GFLOPs/step @ canvas':>34}")
    for name in PRESETS:
        with torch.device("meta"):  # counting needs shapes only; skips initialising 0.39B weights
            model = MobileUNet.from_preset(name)
        canvases = [(32, 64), (64, 128), (128, 256)] if name == "dreamlite-0.39b" else [(8, 16), (16, 32)]
        flops = ", ".join(f"{unet_gflops(model, h, w):.2f} @ {h}x{w}" for h, w in canvases)
        print(f"{name:<18}{count_params(model):>14,}   {flops}")
        del model


# ---------------------------------------------------------------------------------- convert-official
def cmd_convert_official(args: argparse.Namespace) -> None:
    from dreamlite.models.official import convert_official

    model = convert_official(args.src, args.dst, config=args.config)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst} ({n:,} parameters, float32 safetensors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamlite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="list the network presets with parameter counts and GFLOPs per step")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert-official", help="convert an official DreamLite U-Net to dreamlite's format")
    p.add_argument("src", help="official folder (config.json + diffusion_pytorch_model.safetensors) or a "
                               ".safetensors file")
    p.add_argument("dst", help="output folder (must not exist or be empty)")
    p.add_argument("--config", help="official config.json, when SRC is a bare weights file elsewhere")
    p.set_defaults(func=cmd_convert_official)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, PermissionError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
