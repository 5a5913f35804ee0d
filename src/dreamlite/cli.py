"""The ``dreamlite`` command line. Each command is a thin handler over a library function.

Errors a user can cause (bad paths, bad files, bad arguments) are raised as ``UserError`` (or one of the
library's ValueError subclasses) and printed as one line ``error: ...`` with exit status 2 - never a
traceback.
"""

from __future__ import annotations

import argparse
import json
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


# ------------------------------------------------------------------------------------ generate / edit
BACKENDS = ("torch", "onnx", "executorch")


def _check_backend(args: argparse.Namespace) -> None:
    """``--backend`` is checked here, not by argparse, so a wrong name is the usual one-line error."""
    backend = getattr(args, "backend", "torch")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")


def _load_pipeline(args: argparse.Namespace):
    from dreamlite.paths import default_model
    from dreamlite.pipeline import DreamLitePipeline

    _check_backend(args)
    backend = getattr(args, "backend", "torch")
    for flag, backends in (("int8", ("onnx", "executorch")), ("int4", ("onnx",))):
        if getattr(args, flag, False) and backend not in backends:
            raise UserError(f"--{flag} selects the quantised files of an exported folder; use it with --backend "
                            + " or ".join(backends))
    if backend == "onnx":
        from dreamlite.export.onnx import load_onnx_pipeline
        if not args.model:
            raise UserError("--backend onnx needs --model DIR, a folder written by `dreamlite export onnx`")
        return load_onnx_pipeline(args.model, variant=args.variant, int8=getattr(args, "int8", False),
                                  int4=getattr(args, "int4", False))
    if backend == "executorch":
        from dreamlite.export.executorch import load_executorch_pipeline
        if not args.model:
            raise UserError("--backend executorch needs --model DIR, a folder written by "
                            "`dreamlite export executorch`")
        return load_executorch_pipeline(args.model, variant=args.variant, int8=getattr(args, "int8", False))
    model = Path(args.model) if args.model else default_model()
    return DreamLitePipeline.from_pretrained(model, variant=args.variant)


def _check_sampling_args(args: argparse.Namespace) -> None:
    if not args.prompt.strip():
        raise UserError("the prompt is empty; describe the image (or the edit) in words")
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be a positive integer, got {args.steps}")
    for name in ("guidance", "image_guidance"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.guidance_max_sigma is not None and not 0 < args.guidance_max_sigma <= 1:
        raise UserError(f"--guidance-max-sigma must be in (0, 1], got {args.guidance_max_sigma}")
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UserError(f"--eta must be in [0, 1], got {args.eta}")
    out = Path(args.output)
    if not out.parent.exists():
        raise UserError(f"output folder does not exist: {out.parent}")


def _run_sampling(args: argparse.Namespace, image=None) -> None:
    import torch

    from dreamlite.imageio import save_image

    _check_sampling_args(args)
    _check_backend(args)
    if image is not None:
        from dreamlite.imageio import load_image
        image = load_image(image)  # fails early with a clear message, before any model is loaded
    pipe = _load_pipeline(args)
    result = pipe(args.prompt, image=image, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  image_guidance_scale=getattr(args, "image_guidance", None),
                  guidance_max_sigma=args.guidance_max_sigma, eta=args.eta, width=args.width,
                  height=args.height, buckets=getattr(args, "buckets", None),
                  generator=torch.Generator().manual_seed(args.seed))
    print(f"wrote {save_image(result.images[0], args.output)}")


def cmd_generate(args: argparse.Namespace) -> None:
    _run_sampling(args)


def cmd_edit(args: argparse.Namespace) -> None:
    _run_sampling(args, image=args.source)


# --------------------------------------------------------------------------------------------- train
def cmd_train_run(args: argparse.Namespace) -> None:
    from dreamlite.train.recipe import run_recipe
    from dreamlite.train.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    run_dir = Path(args.out or f"runs/{recipe.name}")
    model = run_recipe(recipe, run_dir, resume=args.resume, evaluate=not args.no_eval,
                       stop_after_steps=args.stop_after)
    print(f"run folder: {run_dir}; model: {model}")


def cmd_soup(args: argparse.Namespace) -> None:
    from dreamlite.train.soup import SOUP_FILE, make_soup

    weights = None
    if args.weights:
        try:
            weights = [float(x) for x in args.weights.split(",")]
        except ValueError:
            raise UserError(f"--weights must be comma-separated numbers such as 2,1,1, "
                            f"got {args.weights!r}") from None
    out = make_soup(args.models, args.out, weights, args.variant)
    config = json.loads((out / SOUP_FILE).read_text())
    print(f"wrote {out} ({config['variant']} U-Net averaged):")
    for folder, w in zip(config["ingredients"], config["weights"]):
        print(f"  {w:.3f}  {folder}")


def cmd_train_vae(args: argparse.Namespace) -> None:
    from dreamlite.train.vae import resolve_configs, train_vae

    cfg, vae_cfg = resolve_configs(args.out, args.resume, steps=args.steps, batch=args.batch, lr=args.lr,
                                   size=args.size, seed=args.seed)
    r = train_vae(args.out, cfg, vae_cfg, resume=args.resume)
    m = r.metrics
    print(f"wrote {r.path}: {r.steps} steps, {r.train_seconds:.0f} s ({r.images_per_second:.1f} images/s); "
          f"held-out PSNR {m.psnr:.2f} dB over {m.images} renders, object colour error {m.color_error:.2f} "
          f"(max {m.color_error_max:.2f}); scaling_factor {r.scaling_factor:.5f}, shift_factor {r.shift_factor:.5f}")


def cmd_train_real(args: argparse.Namespace) -> None:
    from dreamlite.train.recipes import get_recipe
    from dreamlite.train.streaming import run_real_recipe

    recipe = get_recipe(args.recipe)
    model = run_real_recipe(recipe, args.data, args.out, resume=args.resume, text_encoder=args.text_encoder,
                            vae=args.vae, stop_after_steps=args.stop_after)
    print(f"run folder: {args.out}; model: {model}")


# ---------------------------------------------------------------------------------------------- eval
def _model_fns(args: argparse.Namespace):
    """(generate_fn, edit_fn) of --model (default: the shipped model) for the benchmarks."""
    from dreamlite.train.evaluate import model_fns

    pipe = _load_pipeline(args)
    kwargs = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None}
    return model_fns(pipe, **kwargs)


def _check_eval_args(args: argparse.Namespace) -> None:
    _check_backend(args)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.images and not Path(args.images).is_dir():
        raise UserError(f"--images folder does not exist: {args.images}")


def cmd_eval_geneval(args: argparse.Namespace) -> None:
    from dreamlite.bench import geneval

    _check_eval_args(args)
    if args.samples_per_prompt is not None and args.samples_per_prompt < 1:
        raise UserError(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}")
    outdir = Path(args.outdir)
    metadata = Path(args.metadata) if args.metadata else None
    if args.images:
        rows = geneval.load_metadata(metadata, args.limit) if metadata else None
        summary = geneval.run(rows, outdir, images_dir=Path(args.images), samples_per_prompt=args.samples_per_prompt,
                              limit=args.limit)
    else:
        rows = geneval.load_metadata(metadata or geneval.default_metadata_path(), args.limit)
        fn = geneval.ground_truth_fn(rows, args.size) if args.ground_truth else _model_fns(args)[0]
        summary = geneval.run(rows, outdir, generate_fn=fn, samples_per_prompt=args.samples_per_prompt, seed=args.seed)
    print(f"results: {outdir / 'results.jsonl'}")
    print(summary.format())


def cmd_eval_imgedit(args: argparse.Namespace) -> None:
    from dreamlite.bench import imgedit

    _check_eval_args(args)
    outdir = Path(args.outdir)
    items = imgedit.load_bench(Path(args.bench) if args.bench else imgedit.default_bench_path(), args.limit)
    if args.ground_truth:
        imgedit.write_ground_truth(items, outdir)
        summary = imgedit.run(items, outdir, images_dir=outdir)
    elif args.images:
        summary = imgedit.run(items, outdir, images_dir=Path(args.images))
    else:
        summary = imgedit.run(items, outdir, edit_fn=_model_fns(args)[1])
    print(f"results: {outdir / 'results.jsonl'}")
    print(summary.format())


def _add_eval_source(p: argparse.ArgumentParser, what: str) -> None:
    src = p.add_mutually_exclusive_group(required=False)
    src.add_argument("--model", help="model folder to benchmark (default, when no source is given: the shipped "
                                     "model)")
    src.add_argument("--ground-truth", action="store_true", help=f"score rendered ground truth ({what})")
    src.add_argument("--images", help="score finished outputs in this folder instead of generating")
    p.add_argument("--limit", type=int, help="only the first N prompts/edits")
    p.add_argument("--variant", choices=["base", "mobile"], help="model variant (default: the model's default)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the variant's)")
    p.add_argument("--guidance", type=float, help="text guidance scale (default: the variant's)")
    p.add_argument("--backend", default="torch", help="torch (a model folder), onnx or executorch (an exported folder)")


# -------------------------------------------------------------------------------------------- export
EXPORT_BACKENDS = ("onnx", "executorch", "coreml")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers such as 1,2,3, got {text!r}") from None


def cmd_export(args: argparse.Namespace) -> None:
    if args.backend not in EXPORT_BACKENDS:
        raise UserError(f"unknown export backend {args.backend!r}; available: {', '.join(EXPORT_BACKENDS)}")
    from dreamlite.paths import default_model

    if args.backend == "coreml":
        from dreamlite.export.coreml import export_coreml as export
        if args.int8 or args.int4:
            raise UserError(f"--{'int8' if args.int8 else 'int4'} is not available for the Core ML export "
                            "(fp16 weights)")
    elif args.backend == "executorch":
        from dreamlite.export.executorch import export_executorch as export
        if args.int4:
            raise UserError("--int4 is not available for ExecuTorch (its XNNPACK programs are fp32 or, with "
                            "--int8, int8); use `export onnx --int4`")
    else:
        from dreamlite.export.onnx import export_onnx as export
    model = Path(args.model) if args.model else default_model()
    kwargs = {"onnx": {"int8": args.int8, "int4": args.int4},
              "executorch": {"int8": args.int8, "int8_batches": _int_list(args.int8_batches, "--int8-batches")},
              }.get(args.backend, {})
    r = export(model, args.out, resolution=args.resolution, variant=args.variant, **kwargs)
    print(f"wrote {r.path} in {r.seconds:.0f} s")
    for name, size in r.files.items():
        print(f"  {name:<26}{size / 1e6:10.2f} MB")


# ---------------------------------------------------------------------------------------------- data
def cmd_data_shapes(args: argparse.Namespace) -> None:
    from dreamlite.data.shapes_shards import write_shapes

    report = write_shapes(Path(args.out), args.n, args.task, args.size, args.seed, args.format)
    print(f"wrote {report.samples} samples to {args.out}: {', '.join(p.name for p in report.paths)}")


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> None:
    from dreamlite.demo import run_demo
    from dreamlite.paths import default_model

    out = Path(args.output)
    if not out.parent.exists():
        raise UserError(f"output folder does not exist: {out.parent}")
    model = Path(args.model) if args.model else default_model()
    r = run_demo(model, out, variant=args.variant, geneval_limit=args.geneval_limit, imgedit_limit=args.imgedit_limit)
    print(f"contact sheet: {r.sheet}")
    print(f"seconds per image: generate {r.seconds_per_generation:.3f}, edit {r.seconds_per_edit:.3f}")
    s = r.scores
    tags = ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in s.items() if k.startswith("geneval/"))
    print(f"GenEval-Shapes ({args.geneval_limit} prompts): overall {s['geneval']:.3f} ({tags})")
    print(f"ImgEdit-Shapes ({args.imgedit_limit} edits): success {s['imgedit_success']:.3f}, "
          f"preservation {s['imgedit_preservation']:.3f}, score {s['imgedit_score']:.2f}")


def _add_sampling_args(p: argparse.ArgumentParser, edit: bool) -> None:
    p.add_argument("-o", "--output", required=True, help="output image file (.png, .jpg, .webp)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--variant", choices=["base", "mobile"], help="U-Net variant (default: the model's default)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the variant's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="text guidance scale (1 = off)")
    p.add_argument("--guidance-max-sigma", type=float,
                   help="guide only at noise levels <= this, in (0, 1]; above it one conditional call per step "
                        "(default: the variant's)")
    p.add_argument("--eta", type=float, help="sampler stochasticity in [0, 1]: 0 = the deterministic Euler ODE, 1 = "
                                             "ancestral (DDPM) steps (default: the variant's "
                                             + ("edit_eta)" if edit else "eta)"))
    p.add_argument("--backend", default="torch", help="torch (a model folder), onnx or executorch (an exported folder)")
    p.add_argument("--int8", action="store_true",
                   help="with --backend onnx or executorch: run the int8 U-Net and text encoder")
    p.add_argument("--int4", action="store_true",
                   help="with --backend onnx: run the 4-bit U-Net and text encoder (an export made with --int4)")
    p.add_argument("--width", type=int, help="output width in px (default: the model's resolution"
                                             + (", or for edits the source's aspect bucket)" if edit else ")"))
    p.add_argument("--height", type=int, help="output height in px (default: as --width)")
    if edit:
        p.add_argument("--image-guidance", type=float, help="image guidance scale (1 = off)")
        p.add_argument("--buckets", help="edit-size buckets: square (the model's resolution), v54 or v765 (the "
                                         "paper's aspect tables, nearest to the source; default: the model's)")


def _add_train_parser(sub) -> None:
    """`dreamlite train [--recipe NAME]`, `train vae` and `train real`."""
    train = sub.add_parser("train", help="run a training recipe (`train --recipe NAME`), or `train vae`")
    train.add_argument("--recipe", default="shapes-tiny", help="recipe name or recipe .json file")
    train.add_argument("--out", help="run folder (default runs/<recipe>)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the per-stage benchmark evaluations")
    train.add_argument("--stop-after", type=int, help="stop after this many training steps (resume later)")
    train.set_defaults(func=cmd_train_run)
    train_sub = train.add_subparsers(dest="train_command", required=False, metavar="[vae|real]")
    p = train_sub.add_parser("vae", help="train the Shapes-world VAE on freshly rendered scenes")
    p.add_argument("--out", required=True, help="checkpoint folder (diffusers AutoencoderTiny + training state)")
    p.add_argument("--steps", type=int, help="total training steps (default 2000; on --resume the saved value)")
    p.add_argument("--batch", type=int, help="images per step (default 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--size", type=int, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, help="initialisation and data-stream seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.set_defaults(func=cmd_train_vae)
    p = train_sub.add_parser("real", help="train on real image-caption pairs and edit triplets (data JSON)")
    p.add_argument("--recipe", default="dreamlite-0.39b", help="recipe name or recipe .json file")
    p.add_argument("--data", required=True, help="data config JSON (sources and buckets; dreamlite.data.sources)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--text-encoder", help="local Qwen3-VL folder, a text encoder spec .json, or 'minilm' "
                                          "(default $DREAMLITE_TEXT_ENCODER, else the recipe's)")
    p.add_argument("--vae", help="AutoencoderTiny folder (default $DREAMLITE_VAE, else the recipe's vae_path)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--stop-after", type=int, help="stop after this many training steps (resume later)")
    p.set_defaults(func=cmd_train_real)


def _add_eval_parser(sub) -> None:
    """`dreamlite eval geneval|imgedit`."""
    ev = sub.add_parser("eval", help="benchmarks in GenEval's and ImgEdit's formats on the Shapes world")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    p = ev_sub.add_parser("geneval", help="text-to-image: GenEval layout, results.jsonl, per-tag summary")
    _add_eval_source(p, "a scene satisfying each prompt")
    p.add_argument("--metadata", help="GenEval metadata .jsonl (default: the shipped 600-prompt Shapes bench)")
    p.add_argument("--outdir", default="outputs/geneval_shapes", help="output folder")
    p.add_argument("--samples-per-prompt", type=int, help="images per prompt (default 4 when generating)")
    p.add_argument("--size", type=int, default=64, help="ground-truth image size")
    p.add_argument("--seed", type=int, default=0, help="first generation seed")
    p.set_defaults(func=cmd_eval_geneval)
    p = ev_sub.add_parser("imgedit", help="editing: <key>.png per edit, results.jsonl, per-type summary")
    _add_eval_source(p, "each edit's target scene")
    p.add_argument("--bench", help="basic_edit.json with targets.json and images/ beside it (default: shipped)")
    p.add_argument("--outdir", default="outputs/imgedit_shapes", help="output folder")
    p.set_defaults(func=cmd_eval_imgedit)


def _add_export_parser(sub) -> None:
    """`dreamlite export onnx|executorch|coreml`."""
    p = sub.add_parser("export", help="export a model for on-device runtimes: "
                                      "`export onnx|executorch|coreml --out DIR`")
    p.add_argument("backend", metavar="BACKEND", help="export format: onnx, executorch or coreml (U-Net only)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty; written atomically)")
    p.add_argument("--resolution", help="image size R or WxH the U-Net is exported for (default: the model's)")
    p.add_argument("--int8", action="store_true", help="also write int8 (dynamic) U-Net and text encoder")
    p.add_argument("--int4", action="store_true",
                   help="onnx: also write 4-bit (block-wise MatMulNBits) U-Net and text encoder")
    p.add_argument("--int8-batches", default="1,2,3",
                   help="executorch --int8: the fixed batch sizes of the int8 programs (default 1,2,3: the CFG rows "
                        "of one image; 1 is enough for the guidance-free mobile variant)")
    p.add_argument("--variant", choices=["base", "mobile"], help="U-Net variant (default: the model's default)")
    p.set_defaults(func=cmd_export)


def _add_data_parser(sub) -> None:
    """`dreamlite data shapes`."""
    data = sub.add_parser("data", help="write datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    p = data_sub.add_parser("shapes", help="Shapes-world training data as WebDataset shards or a plain folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="samples per task")
    p.add_argument("--task", choices=["t2i", "edit", "both"], default="both")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (8..512)")
    p.add_argument("--seed", type=int, default=0, help="training seed (below 1,000,000,000; above is benchmarks')")
    p.add_argument("--format", choices=["wds", "folder"], default="wds")
    p.set_defaults(func=cmd_data_shapes)


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

    p = sub.add_parser("generate", help="generate an image from a prompt")
    p.add_argument("prompt")
    _add_sampling_args(p, edit=False)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit an image by an instruction")
    p.add_argument("source", help="source image file")
    p.add_argument("prompt", help="edit instruction")
    _add_sampling_args(p, edit=True)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("soup", help="average the U-Nets of models fine-tuned from one start (a model soup)")
    p.add_argument("models", nargs="+", help="model folders (two or more); the first supplies everything but the "
                                             "averaged U-Net (VAE, scheduler, text encoder, other variants)")
    p.add_argument("--out", required=True, help="output model folder (must not exist or be empty)")
    p.add_argument("--weights", help="comma-separated weights, one per model (default: equal); normalised to sum 1")
    p.add_argument("--variant", choices=["base", "mobile"],
                   help="the variant whose U-Net is averaged, the same in every model (default: the first model's "
                        "default variant)")
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("demo", help="contact sheet of generations and edits, subset scores, seconds per image")
    p.add_argument("-o", "--output", default="demo.png", help="contact sheet PNG (default demo.png)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--variant", choices=["base", "mobile"], help="U-Net variant (default: the model's default)")
    p.add_argument("--geneval-limit", type=int, default=60, help="GenEval-Shapes prompts to score")
    p.add_argument("--imgedit-limit", type=int, default=40, help="ImgEdit-Shapes edits to score")
    p.set_defaults(func=cmd_demo)

    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_export_parser(sub)
    _add_data_parser(sub)
    return parser




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
