"""A tiny, randomly initialised Qwen3-VL with a test tokenizer and image processor, built offline.

No Qwen weights or tokenizer files exist offline (see /work/shared/README.md), so tests that need the paper's
text encoder use this stand-in: the real architecture class at toy size (text hidden 64, 2 layers, vision depth
2, M-RoPE, 16-px patches merged 2×2) and a small byte-level BPE tokenizer that knows the chat and vision
special tokens. Its template heads are not the official 34/64 tokens, so encoders built on it use
``drop_idx="auto"``.

Reused by other tests: ``build_tiny_qwen3vl()`` for in-memory parts, ``save_tiny_qwen3vl(folder)`` for a local
folder that ``Qwen3VLTextEncoder.from_pretrained`` / ``load_text_encoder`` can load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreamlite.prompts import QWEN3VL_FORMAT, TASKS

TEXT_HIDDEN = 64
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
# Words the Shapes world and the tests use, so the BPE learns a few merges beyond the template's.
_EXTRA_CORPUS = ("a red circle left of a blue square", "two green triangles above a yellow star",
                 "make the circle purple", "remove the square", "[Generate]: [Edit]: ")


@dataclass(frozen=True)
class TinyQwen3VL:
    model: Any  # Qwen3VLForConditionalGeneration
    tokenizer: Any  # PreTrainedTokenizerFast
    image_processor: Any  # Qwen2VLImageProcessorPil


def build_test_tokenizer() -> Any:
    """A byte-level BPE (no unknown tokens) trained on the templates, plus the chat/vision special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [QWEN3VL_FORMAT.template(t).replace("{}", "") for t in TASKS] + list(_EXTRA_CORPUS)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=list(SPECIAL_TOKENS[1:]))


def build_test_image_processor() -> Any:
    """Qwen3-VL-style preprocessing (16-px patches, 2×2 merge, mean/std 0.5), PIL backend (no torchvision)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})


def build_tiny_qwen3vl(seed: int = 0) -> TinyQwen3VL:
    """Random tiny Qwen3VLForConditionalGeneration (eval) whose special-token ids match the test tokenizer."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = build_test_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=TEXT_HIDDEN,
                           num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    return TinyQwen3VL(model=model, tokenizer=tokenizer, image_processor=build_test_image_processor())


def save_tiny_qwen3vl(folder: Path, seed: int = 0) -> Path:
    """Write the tiny model (safetensors), tokenizer and preprocessor config to ``folder``."""
    parts = build_tiny_qwen3vl(seed)
    folder = Path(folder)
    parts.model.save_pretrained(folder)
    parts.tokenizer.save_pretrained(folder)
    parts.image_processor.save_pretrained(folder)
    return folder
