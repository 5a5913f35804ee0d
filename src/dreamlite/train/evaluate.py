"""Evaluation during and after training: a pipeline from the current weights, scored on both benchmarks.

``model_fns`` turns any ``DreamLitePipeline`` into the two callables the benchmarks take
(``generate_fn(prompts, seeds)``, ``edit_fn(images, instructions, seeds)``), so the CLI, the recipe and RL use
the same path. After each stage a row goes to ``<run>/scores.jsonl`` and ``<run>/stages.md`` and the curves
are redrawn to ``<run>/curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from dreamlite.pipeline import DreamLitePipeline, PipelineDefaults, VariantDefaults
from dreamlite.sampling import default_scheduler
from dreamlite.shapes.tasks import VAL_NOISE_SEED
from dreamlite.train.config import Recipe


def make_pipeline(unet, vae, encoder, recipe: Recipe, variants: dict[str, VariantDefaults] | None = None,
                  default_variant: str = "base", extra_unets=None) -> DreamLitePipeline:
    size = recipe.corpus.image_size
    variants = variants or {"base": base_variant(recipe)}
    defaults = PipelineDefaults(resolution=(size, size), default_variant=default_variant, variants=variants)
    return DreamLitePipeline(unet=unet, vae=vae, text_encoder=encoder, scheduler=default_scheduler(),
                             defaults=defaults, variant=default_variant, extra_unets=extra_unets)


def base_variant(recipe: Recipe) -> VariantDefaults:
    """How a recipe's base model is sampled, in its evaluations and in the model folder it writes."""
    e = recipe.eval
    return VariantDefaults("unet", e.steps, e.guidance_scale, e.image_guidance_scale, eta=e.eta)


def model_fns(pipe: DreamLitePipeline, batch: int = 64, **call_kwargs) -> tuple[Callable, Callable]:
    """(generate_fn, edit_fn) for the benchmarks; each image gets its own seeded CPU generator."""

    def run(prompts: list[str], seeds: list[int], images: list[Image.Image] | None) -> list[Image.Image]:
        out: list[Image.Image] = []
        for i in range(0, len(prompts), batch):
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
            imgs = None if images is None else images[i:i + batch]
            out += pipe(prompts[i:i + batch], image=imgs, generator=gens, progress=False, **call_kwargs).images
        return out

    return (lambda prompts, seeds: run(list(prompts), list(seeds), None),
            lambda images, instructions, seeds: run(list(instructions), list(seeds), list(images)))


def stratified(items: list, key: Callable, limit: int | None) -> list:
    """The first ``limit`` items taken round-robin over categories (benchmark files are grouped by category)."""
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out, i = [], 0
    while len(out) < limit:
        for g in groups.values():
            if i < len(g) and len(out) < limit:
                out.append(g[i])
        i += 1
    return out


def evaluate_pipeline(pipe: DreamLitePipeline, outdir: Path, geneval_limit: int | None, imgedit_limit: int | None,
                      samples_per_prompt: int = 1, phrasings: str = "canonical", split: str = "test",
                      **call_kwargs) -> dict[str, float]:
    """GenEval-Shapes and ImgEdit-Shapes (stratified subsets when limited); returns flat scores. ``phrasings``
    "heldout": the same GenEval rows re-worded and a second edit set, in words no training prompt uses
    (``dreamlite.bench.build.write_heldout``). ``split`` "val": rows and edits drawn again, sampled from other
    starting noise, for choosing among models without reading the benchmark (``build.write_validation``).
    Generated edit sets are written under ``outdir/imgedit_bench``."""
    from dreamlite.bench import build, geneval, imgedit

    if phrasings not in ("canonical", "heldout"):
        raise ValueError(f"phrasings must be 'canonical' or 'heldout', got {phrasings!r}")
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' (the benchmark) or 'val' (the validation split), got {split!r}")
    generate_fn, edit_fn = model_fns(pipe, **call_kwargs)
    rows = geneval.load_metadata(geneval.default_metadata_path())
    bench = imgedit.default_bench_path()
    noise_seed = 0
    if split == "val":
        rows, bench = build.write_validation(outdir / "imgedit_bench", phrasings)
        noise_seed = VAL_NOISE_SEED
    elif phrasings == "heldout":
        rows, bench = build.write_heldout(rows, outdir / "imgedit_bench")
    rows = stratified(rows, lambda r: r["tag"], geneval_limit)
    g = geneval.run(rows, outdir / "geneval", generate_fn=generate_fn, samples_per_prompt=samples_per_prompt,
                    seed=noise_seed, batch_size=64)
    items = stratified(imgedit.load_bench(bench), lambda i: i.edit_type, imgedit_limit)
    e = imgedit.run(items, outdir / "imgedit", edit_fn=edit_fn, seed=noise_seed, batch_size=64)
    return {"geneval": g.overall, **{f"geneval/{t.tag}": t.accuracy for t in g.tags},
            "imgedit_success": e.success, "imgedit_preservation": e.preservation, "imgedit_score": e.score,
            **{f"imgedit/{t.edit_type}": t.success for t in e.types}}


def evaluate_stage(run_dir: Path, stage: str, unet, vae, encoder, recipe: Recipe,
                   variants: dict[str, VariantDefaults] | None = None,
                   default_variant: str = "base") -> dict[str, float]:
    """Score ``unet`` sampled as ``default_variant`` of ``variants`` (default: the recipe's base settings)."""
    pipe = make_pipeline(unet, vae, encoder, recipe, variants, default_variant).to(vae.device)
    e = recipe.eval
    scores = evaluate_pipeline(pipe, run_dir / "eval" / stage, e.geneval_limit, e.imgedit_limit)
    with open(run_dir / "scores.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, "variant": default_variant, **scores}) + "\n")
    write_stage_table(run_dir)
    plot_curves(run_dir)
    return scores


def write_stage_table(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    timing = {}
    if (run_dir / "timing.jsonl").is_file():
        timing = {json.loads(l)["stage"]: json.loads(l) for l in (run_dir / "timing.jsonl").read_text().splitlines()}
    tags = sorted({k for r in rows for k in r if k.startswith("geneval/")})
    head = ["stage", "GenEval", *[t.split("/")[1] for t in tags], "edit success", "preservation", "edit score",
            "train s", "samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = timing.get(r["stage"], {})
        cells = [r["stage"], f"{r['geneval']:.3f}", *[f"{r.get(k, float('nan')):.2f}" for k in tags],
                 f"{r['imgedit_success']:.3f}", f"{r['imgedit_preservation']:.3f}", f"{r['imgedit_score']:.2f}",
                 str(t.get("seconds", "")), str(t.get("samples_per_s", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    (run_dir / "stages.md").write_text("\n".join(lines) + "\n")


def plot_curves(run_dir: Path) -> None:
    """Loss (left) and per-stage scores (right) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    loss_path = run_dir / "loss.jsonl"
    if loss_path.is_file():
        pts = [json.loads(l) for l in loss_path.read_text().splitlines()]
        a.plot([p["step"] for p in pts], [p["loss"] for p in pts], lw=0.8)
        for stage in dict.fromkeys(p["stage"] for p in pts):
            first = next(p["step"] for p in pts if p["stage"] == stage)
            a.axvline(first, color="grey", ls=":", lw=0.8)
            a.text(first, a.get_ylim()[1] if a.lines else 1, stage, fontsize=8, va="top")
    a.set(xlabel="step", ylabel="flow-matching loss", title="training loss", yscale="log")
    rows = [json.loads(l) for l in (run_dir / "scores.jsonl").read_text().splitlines()]
    names = [r["stage"] for r in rows]
    for key, label in [("geneval", "GenEval-Shapes"), ("imgedit_success", "edit success"),
                       ("imgedit_preservation", "edit preservation")]:
        b.plot(names, [r[key] for r in rows], marker="o", label=label)
    b.set(ylim=(0, 1), title="benchmarks after each stage", xlabel="stage")
    b.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
