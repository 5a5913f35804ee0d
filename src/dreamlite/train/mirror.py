"""Mirror pairs: teach the words, not the starting noise, to decide which shape takes which side (ours).

Why (BENCHMARKS.md, "Noise or words" and "Mirror pairs"): under "A left of B" and "B left of A" the shipped model
draws the same layout from the same starting noise z; the noise picks the sides and the words only the axis.
Flow matching with independent noise barely pays for the side: at high noise, where the sampler commits to the
layout, the mean image of a prompt and that of its mirror differ only by two blurred outlines. Reflow (Liu et al.
2022, rectified flow) trains on the model's own coupling z -> x instead, where the target given z is one sharp
image. A mirror pair is two reflow samples from one rollout of a position prompt P = "A rel B": (z, P) -> the
rollout with A on the asked side (the rollout itself, or its mirror when A landed on the wrong side) and
(z, P') -> the other one, P' = "B rel A" its role-swapped twin. The two targets differ by a whole mirrored
image, so the loss pays for reading the word order from the same noise, at every t.

A mirror is the canvas flipped along the relation's axis with each shape flipped back in place (a triangle stays
upright). Pairs are built once per stage from the stage's starting model (``build_mirror_set``), checked with the
Shapes detector (both images must hold exactly the two shapes, on the asked sides), saved in the run's corpus
folder, and drawn beside the stage's batches (``loop.BatchSampler``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from dreamlite.shapes.detect import detect
from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.language import role_swap

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def mirror_shapes(image: np.ndarray, boxes: list[tuple[float, float, float, float]], vertical: bool) -> np.ndarray:
    """``image`` [H, W, 3] flipped along one axis with each shape in ``boxes`` (x0, y0, x1, y1, pixels, before
    the flip) flipped back in place: the shapes trade places and keep their orientation."""
    axis = 0 if vertical else 1
    out = np.flip(image, axis=axis).copy()  # [H, W, 3]
    H, W = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        if vertical:
            y0, y1 = H - y1, H - y0
        else:
            x0, x1 = W - x1, W - x0
        xa, xb = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 1, W)  # one pixel of margin: anti-aliasing
        ya, yb = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 1, H)
        out[ya:yb, xa:xb] = np.flip(out[ya:yb, xa:xb], axis=axis)
    return out


def _two_shapes(image: np.ndarray, subject: str, reference: str) -> dict[str, np.ndarray] | None:
    """The boxes of ``subject`` and ``reference`` when the image holds exactly those two shapes, else None."""
    found = detect(np.asarray(image))
    boxes = {d.cls: np.asarray(d.box, dtype=float) for d in found}
    if len(found) != 2 or set(boxes) != {subject, reference}:
        return None
    return boxes


def position_clause(meta: Mapping[str, Any]) -> tuple[str, str, str]:
    """(subject, reference, relation) of a position prompt's GenEval metadata row."""
    include = meta["include"]
    return include[1]["class"], include[0]["class"], include[1]["position"][0]


def side_corrected(image: np.ndarray, meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(image for the prompt, image for its twin) from a rollout of a position prompt with GenEval metadata
    ``meta``, or None when the rollout does not hold exactly the two shapes on the asked axis, or a mirror fails
    the detector's check (shapes touching the border, overlapping boxes)."""
    subject, reference, relation = position_clause(meta)
    boxes = _two_shapes(image, subject, reference)
    if subject == reference or boxes is None:
        return None
    found = relative_position(boxes[subject], boxes[reference])
    if relation not in found and OPPOSITE[relation] not in found:
        return None  # off the asked axis (or too close to tell): neither image would teach the side
    mirrored = mirror_shapes(np.asarray(image), [tuple(boxes[subject]), tuple(boxes[reference])],
                             vertical=relation in ("above", "below"))
    own, twin = (np.asarray(image), mirrored) if relation in found else (mirrored, np.asarray(image))
    return (own, twin) if pair_holds(own, twin, meta) else None


def pair_holds(own: np.ndarray, twin: np.ndarray, meta: Mapping[str, Any]) -> bool:
    """Whether ``own`` holds exactly the prompt's two shapes on the asked sides and ``twin`` on the other sides."""
    subject, reference, relation = position_clause(meta)
    for picture, wanted in ((own, relation), (twin, OPPOSITE[relation])):
        b = _two_shapes(picture, subject, reference)
        if b is None or wanted not in relative_position(b[subject], b[reference]):
            return False
    return True


@dataclass
class MirrorSet:
    """N mirror pairs: the starting noise of each rollout, its side-corrected target and the twin's target
    (latents), and the prompts (bank rows 0..N-1) and twins (rows N..2N-1) as cached text states."""

    noise: Tensor  # [N, C, h, w]
    x0: Tensor  # [N, C, h, w]: the target for the prompt
    x0_twin: Tensor  # [N, C, h, w]: the target for the twin, from the same noise
    bank: Any  # corpus.TextBank with 2N rows
    stats: dict[str, int] = field(default_factory=dict)  # rollouts, kept, mirrored

    def __len__(self) -> int:
        return self.noise.shape[0]

    def gather(self, idx: Tensor) -> dict[str, Tensor]:
        """Rows for rollouts ``idx`` [k]: the k prompts, then the k twins (2k samples, the same noise twice)."""
        text, mask = self.bank.gather(torch.cat([idx, idx + len(self)]))
        return dict(x0=torch.cat([self.x0[idx], self.x0_twin[idx]]), noise=torch.cat([self.noise[idx]] * 2),
                    text=text, mask=mask)


def save_mirror_set(mirror: MirrorSet, path: Path) -> None:
    """Atomic safetensors (+ the build's statistics as metadata)."""
    tensors = {"noise": mirror.noise, "x0": mirror.x0, "x0_twin": mirror.x0_twin, **mirror.bank.tensors()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"stats": json.dumps(mirror.stats)})
    os.replace(tmp, path)


def load_mirror_set(path: Path) -> MirrorSet:
    from safetensors import safe_open

    from dreamlite.train.corpus import TextBank

    with safe_open(str(path), "pt") as f:
        stats = json.loads((f.metadata() or {}).get("stats", "{}"))
    t = load_file(str(path))
    missing = {"noise", "x0", "x0_twin", "bank.states"} - set(t)
    if missing:
        raise ValueError(f"{path}: not a mirror set (missing {sorted(missing)})")
    n = t["noise"].shape[0]
    if t["x0"].shape != t["noise"].shape or t["x0_twin"].shape != t["noise"].shape or len(t["bank.offsets"]) != 2 * n:
        raise ValueError(f"{path}: mirror set tensors disagree in size (noise {tuple(t['noise'].shape)}, x0 "
                         f"{tuple(t['x0'].shape)}, x0_twin {tuple(t['x0_twin'].shape)}, {len(t['bank.offsets'])} "
                         f"prompts for {n} pairs)")
    return MirrorSet(t["noise"], t["x0"], t["x0_twin"], TextBank.from_tensors(t), stats)


@torch.no_grad()
def build_mirror_set(ctx, rollouts: int, seed: int, sample_steps: int, guidance, chunk: int = 64,
                     progress: bool = True) -> MirrorSet:
    """Roll out ``rollouts`` position prompts (the RL prompt pool: never benchmark texts) with the stage's current
    model (EMA weights are not used: the coupling is the one being trained) and keep the side-corrected pairs.

    ``ctx``: the recipe's ``loop.StageContext``; ``guidance``: ``sampling.Guidance`` of the rollouts (the model's
    base settings, so the targets are the images it makes as shipped)."""
    from dreamlite.sampling import make_sigmas, sample
    from dreamlite.train.corpus import TextBank, encode_latents
    from dreamlite.train.rl import rl_rng, rl_t2i_prompts
    from dreamlite.train.rl_stage import conditions, decoder, latent_shape

    model = ctx.accelerator.unwrap_model(ctx.unet)
    was_training = model.training
    model.eval()
    C, h, w = latent_shape(ctx)
    sigmas = make_sigmas(sample_steps, h, w)
    decode = decoder(ctx)
    rows = rl_t2i_prompts(rl_rng(seed), rollouts, {"position": 1.0})
    g = torch.Generator().manual_seed(seed)
    noise_kept, own_kept, twin_kept, prompts = [], [], [], []
    stats = {"rollouts": 0, "kept": 0, "mirrored": 0}
    bar = tqdm(total=rollouts, desc="mirror pairs: rollouts", disable=not progress)
    for i in range(0, rollouts, chunk):
        part = rows[i:i + chunk]
        z = torch.randn(len(part), C, h, w, generator=g)  # [k, C, h, w], drawn on the CPU
        cond = conditions(ctx, [p for p, _ in part], None)
        images = decode(sample(model, z.to(ctx.accelerator.device), sigmas, cond, guidance))  # uint8 [k, H, W, 3]
        pairs = [(j, side_corrected(image, meta)) for j, ((_, meta), image) in enumerate(zip(part, images))]
        pairs = [(j, pair) for j, pair in pairs if pair is not None]
        if pairs:  # the targets as the VAE gives them back must still hold the sides (a blurred star is a circle)
            latents = encode_latents(ctx.vae, np.stack([p[0] for _, p in pairs] + [p[1] for _, p in pairs]))
            own, twin = latents.chunk(2)  # [m, C, h, w] each
            seen = decode(latents.to(ctx.accelerator.device))
            for k, (j, pair) in enumerate(pairs):
                if pair_holds(seen[k], seen[len(pairs) + k], part[j][1]):
                    stats["mirrored"] += not np.array_equal(pair[0], images[j])
                    noise_kept.append(z[j])
                    own_kept.append(own[k])
                    twin_kept.append(twin[k])
                    prompts.append(part[j][0])
        stats["rollouts"] += len(part)
        bar.update(len(part))
        bar.set_postfix(kept=len(prompts))
    bar.close()
    model.train(was_training)
    if not prompts:
        raise RuntimeError(f"mirror pairs: none of {rollouts} rollouts drew the two shapes of its prompt on the asked "
                           "axis; the model cannot draw position prompts yet (train it longer first)")
    stats["kept"] = len(prompts)
    bank = TextBank.build(ctx.encoder, prompts + [role_swap(p, "position") for p in prompts], "generate",
                          progress=False)
    return MirrorSet(torch.stack(noise_kept), torch.stack(own_kept), torch.stack(twin_kept), bank, stats)
