"""The cached training pool: each binding prompt's twin is encoded into the bank and survives save / load."""

import sys
from pathlib import Path

import torch

from dreamlite.shapes.language import role_swap
from dreamlite.train.corpus import _render_chunk, build_pool, load_pool, save_pool

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_run import tiny_vae  # noqa: E402


class SpellingEncoder:
    """Token states that spell the prompt (one token per character), so a state names its prompt exactly."""

    def encode(self, prompts, images=None, *, task=None, unconditional=False):
        L = max(len(p) for p in prompts)
        states = torch.zeros(len(prompts), L, 2)
        mask = torch.zeros(len(prompts), L, dtype=torch.long)
        for i, p in enumerate(prompts):
            states[i, :len(p), 0] = torch.tensor([float(ord(c)) for c in p])
            states[i, :len(p), 1] = float(len(p))
            mask[i, :len(p)] = 1
        return states, mask


def _spelled(bank, i: int) -> str:
    text, mask = bank.gather(torch.tensor([i]))
    return "".join(chr(int(v)) for v in text[0, :int(mask.sum()), 0])


def test_t2i_pool_with_twins_points_each_binding_prompt_at_its_twin(tmp_path):
    seed, n = 31, 48
    pool = build_pool("t2i", n, seed, 32, tiny_vae(), SpellingEncoder(), workers=1, progress=False, twins=True)
    _, _, prompts, tags, _ = _render_chunk("t2i", seed, 0, n, 32, None)  # the same deterministic chunk
    save_pool(pool, tmp_path / "t2i.safetensors")
    loaded = load_pool(tmp_path / "t2i.safetensors")
    assert torch.equal(loaded.twin_ids, pool.twin_ids)
    binding = 0
    for i, (prompt, tag) in enumerate(zip(prompts, tags)):
        assert _spelled(loaded.bank, int(loaded.prompt_ids[i])) == prompt
        twin = role_swap(prompt, tag)
        if twin is None:
            assert loaded.twin_ids[i] == -1
        else:
            binding += 1
            assert _spelled(loaded.bank, int(loaded.twin_ids[i])) == twin
    assert 0 < binding < n  # the pool holds both kinds
    plain = build_pool("t2i", 8, seed, 32, tiny_vae(), SpellingEncoder(), workers=1, progress=False)
    assert plain.twin_ids is None
