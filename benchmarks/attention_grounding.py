"""Where do a model's words look? The share of each clause's cross-attention mass that falls on its objects.

Fresh rendered scenes of the binding tags (two_object, color_attr; training seeds, no benchmark scene), each noised
to t and run through the U-Net once under its own prompt; for every cross-attention call (``grounding.
CrossAttentionProbe``) the share of each clause's attention (its colour and noun tokens) inside its objects' cells
(``grounding.inside_share``), averaged per level side and t. Uniform attention scores about an object's share of
the level's cells; 1.0 = every clause attends only to its own objects. This is what ``StageConfig.ground_weight``
trains (TokenCompose), so it shows how far a grounding round moved each level.

    python benchmarks/attention_grounding.py MODEL [--variant base] [--n 256] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from dreamlite.pipeline import DreamLitePipeline
from dreamlite.train.corpus import build_pool
from dreamlite.train.flow import flow_matching_loss
from dreamlite.train.grounding import CrossAttentionProbe, grounded_groups, inside_share

SEED = 990_000  # a training seed: scenes that no benchmark holds
TS = (0.2, 0.5, 0.8)


def measure(pipe: DreamLitePipeline, n: int, batch: int = 64) -> dict[float, dict[int, float]]:
    """{t: {level side: mean inside share}} over n scenes."""
    pool = build_pool("t2i", n, SEED, 64, pipe.vae, pipe.text_encoder, workers=1, progress=False, ground=True,
                      tag_weights={"two_object": 1.0, "color_attr": 1.0})
    unet = pipe.unet.eval()
    g = torch.Generator().manual_seed(0)
    out: dict[float, dict[int, float]] = {}
    for t in TS:
        sums: dict[int, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for i in range(0, n, batch):
            ids = torch.arange(i, min(n, i + batch))
            text, mask = pool.bank.gather(pool.prompt_ids[ids])
            x0 = pool.x0[ids]
            B = len(ids)
            with torch.no_grad(), CrossAttentionProbe(unet) as probe:
                flow_matching_loss(unet, x0, torch.zeros_like(x0), text, mask, torch.full((B, 2), 64.0),
                                   torch.full((B,), t), torch.randn(x0.shape, generator=g))
            tokens, masks = pool.ground_tokens[ids], pool.ground_masks[ids]
            valid = grounded_groups(tokens, masks, torch.ones(B, dtype=torch.bool))
            for p in probe.maps((x0.shape[-2], 2 * x0.shape[-1])):
                share = inside_share(p, tokens, masks)[valid]
                sums[p.shape[1]][0] += float(share.sum())
                sums[p.shape[1]][1] += int(valid.sum())
        out[t] = {side: s / max(c, 1) for side, (s, c) in sorted(sums.items(), reverse=True)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--variant", default="base")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    pipe = DreamLitePipeline.from_pretrained(args.model, variant=args.variant)
    result = measure(pipe, args.n)
    sides = list(next(iter(result.values())))
    print("| t | " + " | ".join(f"{s}x{s} per half" for s in sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for t, row in result.items():
        print(f"| {t} | " + " | ".join(f"{row[s]:.2f}" for s in sides) + " |")
    if args.out:
        args.out.write_text(json.dumps({str(t): {str(s): v for s, v in row.items()} for t, row in result.items()},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
