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
                chunks.append(h[:n].to(torch.float16))
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


@dataclass
class Pool:
    """N training samples of one task: target latents, condition latents (edits), prompt ids, category ids."""

    x0: Tensor  # [N, C, h, w]
    cond: Tensor | None  # [N, C, h, w] or None (generation: blank right half)
    prompt_ids: Tensor  # [N] long, into the pool's TextBank
    categories: Tensor  # [N] long, tag (t2i) or edit type (edit)
    category_names: list[str]
    bank: TextBank

    def __len__(self) -> int:
        return len(self.prompt_ids)


def _encode_latents(vae, images: np.ndarray, batch: int = 256) -> Tensor:
    from dreamlite.models.vae import encode
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(encode(vae, uint8_to_tensor(images[i:i + batch]).to(vae.dtype)).float())
    return torch.cat(out)


def build_pool(kind: str, n: int, seed: int, size: int, vae, encoder, tag_weights: dict[str, float] | None = None,
               chunk: int = 2048, progress: bool = True) -> Pool:
    """Render n samples of ``kind`` ('t2i' or 'edit'), encode them, and return the in-memory pool."""
    from dreamlite.shapes import tasks

    rng = np.random.default_rng(seed)
    x0, cond, prompts, cats = [], [], [], []
    bar = tqdm(total=n, desc=f"rendering {kind} pool", disable=not progress)
    while sum(len(c) for c in cats) < n:
        m = min(chunk, n - sum(len(c) for c in cats))
        if kind == "t2i":
            b = tasks.sample_t2i(rng, m, size=size, tag_weights=tag_weights) if tag_weights else \
                tasks.sample_t2i(rng, m, size=size)
            x0.append(_encode_latents(vae, b.images))
            prompts += list(b.prompts)
            cats.append([md["tag"] for md in b.metadata])
        else:
            b = tasks.sample_edit(rng, m, size=size)
            x0.append(_encode_latents(vae, b.targets))
            cond.append(_encode_latents(vae, b.sources))
            prompts += list(b.instructions)
            cats.append(list(b.edit_types))
        bar.update(m)
    bar.close()
    cat_list = [c for chunk_cats in cats for c in chunk_cats]
    names = sorted(set(cat_list))
    distinct = sorted(set(prompts))
    index = {p: i for i, p in enumerate(distinct)}
    bank = TextBank.build(encoder, distinct, "generate" if kind == "t2i" else "edit", progress=progress)
    return Pool(x0=torch.cat(x0), cond=torch.cat(cond) if cond else None,
                prompt_ids=torch.tensor([index[p] for p in prompts]),
                categories=torch.tensor([names.index(c) for c in cat_list]), category_names=names, bank=bank)


def save_pool(pool: Pool, path: Path) -> None:
    """Atomic safetensors + JSON sidecar (category names)."""
    tensors = {"x0": pool.x0, "prompt_ids": pool.prompt_ids, "categories": pool.categories,
               "bank.states": pool.bank.states, "bank.offsets": pool.bank.offsets, "bank.lengths": pool.bank.lengths}
    if pool.cond is not None:
        tensors["cond"] = pool.cond
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"category_names": json.dumps(pool.category_names)})
    os.replace(tmp, path)


def load_pool(path: Path) -> Pool:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        names = json.loads(f.metadata()["category_names"])
    t = load_file(str(path))
    bank = TextBank(t["bank.states"], t["bank.offsets"], t["bank.lengths"])
    return Pool(x0=t["x0"], cond=t.get("cond"), prompt_ids=t["prompt_ids"], categories=t["categories"],
                category_names=names, bank=bank)


def pad_text(text: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    extra = length - text.shape[1]
    return (F.pad(text, (0, 0, 0, extra)), F.pad(mask, (0, extra))) if extra > 0 else (text, mask)
