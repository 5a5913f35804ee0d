"""The training corpus: rendered Shapes samples, encoded once into latents and cached text states.

On a 2-core CPU the frozen VAE encoder and text encoder would cost more than the U-Net step itself, so a run
renders a pool of samples once, encodes images to latents and each *distinct* prompt once (a ``TextBank``),
and the loop then draws batches from memory. The pool is deterministic for its seed and is saved in the run
folder (safetensors), so a resumed run reuses it bit for bit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from dreamlite.imageio import uint8_to_tensor


@dataclass
class TextBank:
    """Distinct prompts -> token states, stored flat: ``states[offsets[i]:offsets[i]+lengths[i]]``."""

    states: Tensor  # [sum L, D] float16
    offsets: Tensor  # [P] long
    lengths: Tensor  # [P] long

    @classmethod
    def build(cls, encoder, prompts: list[str], task: str, batch: int = 256, progress: bool = True) -> "TextBank":
        chunks, lengths = [], []
        for i in tqdm(range(0, len(prompts), batch), desc=f"encoding {task} prompts", disable=not progress):
            hidden, mask = encoder.encode(prompts[i:i + batch], task=task)
            for h, m in zip(hidden, mask):
                n = int(m.sum())
                chunks.append(h[:n].to(torch.float16).cpu())
                lengths.append(n)
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        offsets = torch.cumsum(lengths_t, 0) - lengths_t
        return cls(torch.cat(chunks), offsets, lengths_t)

    def gather(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """[B] prompt ids -> (text [B, Lmax, D] float32 zero-padded, mask [B, Lmax] long)."""
        lens = self.lengths[ids]
        L = int(lens.max())
        pos = torch.arange(L)
        mask = (pos[None, :] < lens[:, None]).long()  # [B, L]
        index = (self.offsets[ids][:, None] + pos[None, :]).clamp(max=len(self.states) - 1)  # [B, L]
        text = self.states[index].float() * mask[..., None]  # [B, L, D]
        return text, mask

    def tensors(self) -> dict[str, Tensor]:
        """The bank as ``bank.*`` entries of a safetensors file (pools and mirror sets store it alike)."""
        return {"bank.states": self.states, "bank.offsets": self.offsets, "bank.lengths": self.lengths}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> "TextBank":
        return cls(t["bank.states"], t["bank.offsets"], t["bank.lengths"])


@dataclass
class Pool:
    """N training samples of one task: target latents, condition latents (edits), prompt ids, category ids."""

    x0: Tensor  # [N, C, h, w]
    cond: Tensor | None  # [N, C, h, w] or None (generation: blank right half)
    prompt_ids: Tensor  # [N] long, into the pool's TextBank
    categories: Tensor  # [N] long, tag (t2i) or edit type (edit)
    category_names: list[str]
    bank: TextBank
    # [N] long: each sample's role-swapped twin prompt in ``bank`` (-1: none), for the twin contrast
    # (``dreamlite.train.flow.twin_contrast_loss``); None when the pool was built without twins
    twin_ids: Tensor | None = None
    # grounded attention (``dreamlite.train.grounding``): each sample's clause tokens [N, G, T] (-1: none) and object
    # masks [N, G, R, R]; None when the pool was built without them
    ground_tokens: Tensor | None = None
    ground_masks: Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)


def encode_latents(vae, images: np.ndarray, batch: int = 256) -> Tensor:
    """uint8 images [N, H, W, 3] -> float32 latents [N, C, h, w] on the CPU, ``batch`` at a time."""
    from dreamlite.models.vae import encode
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(encode(vae, uint8_to_tensor(images[i:i + batch]).to(vae.device, vae.dtype)).float().cpu())
    return torch.cat(out)


def _render_chunk(kind: str, seed: int, chunk_index: int, m: int, size: int, tag_weights: dict | None):
    """One deterministic chunk (its RNG depends only on seed and chunk index, not on the worker count):
    (targets, sources or None, prompts, categories, (metadata, scenes) for t2i or None)."""
    from dreamlite.shapes import tasks

    rng = np.random.default_rng([seed, chunk_index])
    if kind == "t2i":
        b = tasks.sample_t2i(rng, m, size=size, tag_weights=tag_weights)
        return b.images, None, list(b.prompts), [md["tag"] for md in b.metadata], (b.metadata, b.scenes)
    b = tasks.sample_edit(rng, m, size=size)
    return b.targets, b.sources, list(b.instructions), list(b.edit_types), None


def build_pool(kind: str, n: int, seed: int, size: int, vae, encoder, tag_weights: dict[str, float] | None = None,
               chunk: int = 1024, workers: int | None = None, progress: bool = True, twins: bool = False,
               ground: bool = False) -> Pool:
    """Render n samples of ``kind`` ('t2i' or 'edit') in parallel chunks, encode them, return the pool.
    ``twins`` (t2i only): also encode each prompt's role-swapped twin (``role_swap``) into the bank. ``ground``
    (t2i only): also store each sample's clause tokens and object masks (``dreamlite.train.grounding``)."""
    from concurrent.futures import ProcessPoolExecutor

    from dreamlite.shapes.language import role_swap

    if (twins or ground) and kind != "t2i":
        raise ValueError(f"twins and grounding are defined for t2i prompts only, not for a {kind!r} pool")

    sizes = [min(chunk, n - i) for i in range(0, n, chunk)]
    workers = workers or min(len(sizes), os.cpu_count() or 1)
    x0, cond, prompts, cats, metadata, scenes = [], [], [], [], [], []
    bar = tqdm(total=n, desc=f"rendering + encoding {kind} pool", disable=not progress)
    with ProcessPoolExecutor(workers) as ex:
        jobs = [ex.submit(_render_chunk, kind, seed, i, m, size, tag_weights) for i, m in enumerate(sizes)]
        for job in jobs:  # in submission order: the pool does not depend on scheduling
            targets, sources, p, c, extra = job.result()
            x0.append(encode_latents(vae, targets))
            if sources is not None:
                cond.append(encode_latents(vae, sources))
            prompts += p
            cats += c
            if extra is not None:
                metadata += extra[0]
                scenes += extra[1]
            bar.update(len(p))
    bar.close()
    names = sorted(set(cats))
    twin_of = [role_swap(p, c) if twins else None for p, c in zip(prompts, cats)]
    distinct = sorted(set(prompts) | {t for t in twin_of if t is not None})
    index = {p: i for i, p in enumerate(distinct)}
    bank = TextBank.build(encoder, distinct, "generate" if kind == "t2i" else "edit", progress=progress)
    ground_tokens = ground_masks = None
    if ground:
        from dreamlite.train.grounding import ground_tensors
        ground_tokens, ground_masks = ground_tensors(encoder, prompts, metadata, scenes)
    return Pool(x0=torch.cat(x0), cond=torch.cat(cond) if cond else None,
                prompt_ids=torch.tensor([index[p] for p in prompts]),
                categories=torch.tensor([names.index(c) for c in cats]), category_names=names, bank=bank,
                twin_ids=torch.tensor([-1 if t is None else index[t] for t in twin_of]) if twins else None,
                ground_tokens=ground_tokens, ground_masks=ground_masks)


def save_pool(pool: Pool, path: Path) -> None:
    """Atomic safetensors + JSON sidecar (category names)."""
    tensors = {"x0": pool.x0, "prompt_ids": pool.prompt_ids, "categories": pool.categories, **pool.bank.tensors()}
    if pool.cond is not None:
        tensors["cond"] = pool.cond
    if pool.twin_ids is not None:
        tensors["twin_ids"] = pool.twin_ids
    if pool.ground_tokens is not None:
        tensors.update(ground_tokens=pool.ground_tokens, ground_masks=pool.ground_masks)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"category_names": json.dumps(pool.category_names)})
    os.replace(tmp, path)


def load_pool(path: Path) -> Pool:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        names = json.loads(f.metadata()["category_names"])
    t = load_file(str(path))
    return Pool(x0=t["x0"], cond=t.get("cond"), prompt_ids=t["prompt_ids"], categories=t["categories"],
                category_names=names, bank=TextBank.from_tensors(t), twin_ids=t.get("twin_ids"),
                ground_tokens=t.get("ground_tokens"), ground_masks=t.get("ground_masks"))


def pad_text(text: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    extra = length - text.shape[1]
    return (F.pad(text, (0, 0, 0, extra)), F.pad(mask, (0, extra))) if extra > 0 else (text, mask)
