"""Where do a model's words look? The share of each clause's cross-attention mass that falls on its objects.

Fresh rendered scenes of the binding tags (two_object, color_attr; training seeds, no benchmark scene), each noised
to t and run through the U-Net once under its own prompt; for every cross-attention call (``grounding.
CrossAttentionProbe``) the share of each clause's attention (its colour and noun tokens) inside its objects' cells
(``grounding.inside_share``), averaged per level side and t. Uniform attention scores about an object's share of
the level's cells; 1.0 = every clause attends only to its own objects. This is what ``StageConfig.ground_weight``
trains (TokenCompose), so it shows how far a grounding round moved each level. ``--figure`` draws, for four
scenes, each clause's attention at the top level (t = 0.5) under every model given, one row per model.

    python benchmarks/attention_grounding.py MODEL [MODEL ...] [--variant base] [--n 256] [--out FILE.json]
        [--figure FILE.png]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dreamlite.pipeline import DreamLitePipeline
from dreamlite.train.corpus import Pool, _render_chunk, build_pool
from dreamlite.train.flow import flow_matching_loss
from dreamlite.train.grounding import MAX_GROUPS, CrossAttentionProbe, grounded_groups, inside_share

SEED = 990_000  # a training seed: scenes that no benchmark holds
TS = (0.2, 0.5, 0.8)
WEIGHTS = {"two_object": 1.0, "color_attr": 1.0}


def _pool(pipe: DreamLitePipeline, n: int, seed: int = SEED) -> Pool:
    return build_pool("t2i", n, seed, 64, pipe.vae, pipe.text_encoder, workers=1, progress=False, ground=True,
                      tag_weights=WEIGHTS)


def _maps(unet, pool: Pool, ids: torch.Tensor, t: float, g: torch.Generator) -> list[torch.Tensor]:
    """The target-half attention maps [B, H, Wt, L] of the pool's samples ``ids`` noised to t, one per call."""
    text, mask = pool.bank.gather(pool.prompt_ids[ids])
    x0 = pool.x0[ids]
    B = len(ids)
    with torch.no_grad(), CrossAttentionProbe(unet) as probe:
        flow_matching_loss(unet, x0, torch.zeros_like(x0), text, mask, torch.full((B, 2), 64.0),
                           torch.full((B,), t), torch.randn(x0.shape, generator=g))
        return probe.maps((x0.shape[-2], 2 * x0.shape[-1]))


def measure(pipe: DreamLitePipeline, n: int, batch: int = 64) -> dict[float, dict[int, float]]:
    """{t: {level side: mean inside share}} over n scenes."""
    pool = _pool(pipe, n)
    unet = pipe.unet.eval()
    g = torch.Generator().manual_seed(0)
    out: dict[float, dict[int, float]] = {}
    for t in TS:
        sums: dict[int, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for i in range(0, n, batch):
            ids = torch.arange(i, min(n, i + batch))
            tokens, masks = pool.ground_tokens[ids], pool.ground_masks[ids]
            valid = grounded_groups(tokens, masks, torch.ones(len(ids), dtype=torch.bool))
            for p in _maps(unet, pool, ids, t, g):
                sums[p.shape[1]][0] += float(inside_share(p, tokens, masks)[valid].sum())
                sums[p.shape[1]][1] += int(valid.sum())
        out[t] = {side: s / max(c, 1) for side, (s, c) in sorted(sums.items(), reverse=True)}
    return out


def figure(pipes: list[tuple[str, DreamLitePipeline]], path: Path, n: int = 4, side: int = 128) -> None:
    """Per scene: the image, then each clause's top-level attention (t = 0.5, heads and calls averaged, scaled to
    its maximum), one row per model."""
    seed = SEED + 1
    images, _, prompts, _, _ = _render_chunk("t2i", seed, 0, n, 64, WEIGHTS)  # the pools' scenes (one chunk)
    cols = 1 + MAX_GROUPS
    sheet = Image.new("RGB", (n * (cols * side + 10), len(pipes) * (side + 20) + 20), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        draw.text((i * (cols * side + 10) + 2, 4), prompts[i][:60], fill="black")
    for r, (name, pipe) in enumerate(pipes):
        pool = _pool(pipe, n, seed)
        maps = _maps(pipe.unet.eval(), pool, torch.arange(n), 0.5, torch.Generator().manual_seed(0))
        top = max(m.shape[1] for m in maps)
        p = torch.stack([m for m in maps if m.shape[1] == top]).mean(0)  # [n, H, Wt, L]
        y = 20 + r * (side + 20)
        for i in range(n):
            x = i * (cols * side + 10)
            sheet.paste(Image.fromarray(images[i]).resize((side, side), Image.NEAREST), (x, y))
            for g in range(MAX_GROUPS):
                tok = pool.ground_tokens[i, g][pool.ground_tokens[i, g] >= 0]
                if len(tok):
                    a = p[i][..., tok].sum(-1).numpy()  # [H, Wt]
                    a = (255 * a / max(float(a.max()), 1e-8)).astype(np.uint8)
                    sheet.paste(Image.fromarray(a).resize((side, side), Image.BILINEAR).convert("RGB"),
                                (x + (g + 1) * side, y))
            draw.text((x + 2, y + side + 4), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders")
    ap.add_argument("--variant", default="base")
    ap.add_argument("--n", type=int, default=256, help="scenes measured per noise level")
    ap.add_argument("--out", type=Path, help="JSON of the shares: {model: {t: {level side: share}}}")
    ap.add_argument("--figure", type=Path, help="PNG of four scenes' top-level attention under each model")
    args = ap.parse_args()
    pipes = [(m, DreamLitePipeline.from_pretrained(m, variant=args.variant)) for m in args.models]
    results = {}
    for name, pipe in pipes:
        results[name] = result = measure(pipe, args.n)
        sides = list(next(iter(result.values())))
        print(f"{name}\n| t | " + " | ".join(f"{s}x{s} per half" for s in sides) + " |")
        print("|---|" + "---:|" * len(sides))
        for t, row in result.items():
            print(f"| {t} | " + " | ".join(f"{row[s]:.2f}" for s in sides) + " |")
    if args.out:
        args.out.write_text(json.dumps({m: {str(t): {str(s): v for s, v in row.items()} for t, row in r.items()}
                                        for m, r in results.items()}, indent=1) + "\n")
    if args.figure:
        figure([(Path(m).parent.name if Path(m).name == "model" else Path(m).name, p) for m, p in pipes],
               args.figure)


if __name__ == "__main__":
    main()
