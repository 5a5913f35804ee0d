"""Text encoders: MiniLM (the packaged all-MiniLM-L6-v2) and the Qwen3-VL adapter on a tiny random Qwen3-VL."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dreamlite.models.text import (
    MiniLMTextEncoder, Qwen3VLTextEncoder, TextEncoderSpec, load_text_encoder, select_tokens,
)
from dreamlite.models.unet import MobileUNet
from dreamlite.prompts import IMAGE_PAD, OFFICIAL_DROP, QWEN3VL_FORMAT, VISION_START, render_prompt
from qwen_fixture import TEXT_HIDDEN, build_tiny_qwen3vl, save_tiny_qwen3vl

IMAGE_SIZE = 64  # 64² → 4×4 patches of 16 px → 2×2 merged = 4 image tokens


def _image(seed: int, size: tuple[int, int] = (70, 50)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8"))


# ------------------------------------------------------------------------------------------------------------
# MiniLM
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder.from_pretrained()


def _minilm_len(enc: MiniLMTextEncoder, text: str) -> int:
    return len(enc.tokenizer(text)["input_ids"])


def test_minilm_shapes_mask_and_padding(minilm):
    prompts = ["a red circle", "two green triangles above a yellow star", ""]
    hidden, mask = minilm.encode(prompts)
    assert minilm.hidden_size == 384 and minilm.max_length == 256
    assert hidden.dtype == torch.float32 and mask.dtype == torch.long
    expected = [_minilm_len(minilm, render_prompt(p, task="generate", family="minilm")) for p in prompts]
    assert mask.sum(1).tolist() == expected
    assert hidden.shape == (3, max(expected), 384)
    assert torch.all(hidden[mask == 0] == 0)
    assert torch.all(hidden[mask == 1].abs().sum(-1) > 0)
    # Right padding: each row's mask is ones then zeros.
    assert torch.equal(mask, (torch.arange(mask.shape[1])[None] < mask.sum(1, keepdim=True)).long())


def test_minilm_deterministic_and_batch_independent(minilm):
    prompts = ["a blue square", "a purple star right of a small orange circle"]
    h1, m1 = minilm.encode(prompts)
    h2, _ = minilm.encode(prompts)
    assert torch.equal(h1, h2)
    alone, alone_mask = minilm.encode(prompts[:1])
    n = int(alone_mask.sum())
    torch.testing.assert_close(h1[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_minilm_prompts_tasks_and_branches_differ(minilm):
    (a, b), _ = minilm.encode(["a red circle", "a blue circle"])
    assert (a - b).abs().max() > 1e-2
    gen, gen_mask = minilm.encode(["make the circle red"], task="generate")
    edit, edit_mask = minilm.encode(["make the circle red"], task="edit")
    # "[Generate]:" and "[Edit]:" are one word each for the BERT tokenizer, so lengths match but states differ.
    assert gen_mask.sum() == edit_mask.sum() and (gen - edit).abs().max() > 1e-2
    # Images only select the task for MiniLM: edit by default.
    with_image, _ = minilm.encode(["make the circle red"], [_image(0)])
    assert torch.equal(with_image, edit)
    # Unconditional: the negative prompt as is — "" is just [CLS] [SEP]; a conditional "" keeps its prefix.
    _, uncond_mask = minilm.encode([""], unconditional=True)
    _, cond_mask = minilm.encode([""])
    assert int(uncond_mask.sum()) == 2
    assert int(cond_mask.sum()) == _minilm_len(minilm, "[Generate]: ") > 2


def test_minilm_truncates_long_prompt_with_warning(minilm):
    prompt = ("a red circle left of a blue square " * 300)[:10_000]
    n_tokens = _minilm_len(minilm, render_prompt(prompt, task="generate", family="minilm"))
    with pytest.warns(UserWarning, match=f"{n_tokens} tokens, {n_tokens - 256} tokens dropped"):
        hidden, mask = minilm.encode([prompt, "a star"])
    assert hidden.shape == (2, 256, 384) and mask.sum(1).tolist()[0] == 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode(["a star"])  # short prompts do not warn


def test_minilm_bad_inputs(minilm):
    with pytest.raises(ValueError, match="prompts is empty"):
        minilm.encode([])
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a str"):
        minilm.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="must be a list of str"):
        minilm.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 1 images for 2 prompts"):
        minilm.encode(["a", "b"], [_image(0)])
    with pytest.raises(ValueError, match="unknown task 'paint'"):
        minilm.encode(["a"], task="paint")
    with pytest.raises(FileNotFoundError, match="no MiniLM model folder"):
        MiniLMTextEncoder.from_pretrained("/nonexistent/minilm")


def test_minilm_is_frozen_and_referenced_by_spec(minilm):
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    hidden, _ = minilm.encode(["a star"])
    assert not hidden.requires_grad
    assert minilm.device == torch.device("cpu") and minilm.dtype == torch.float32
    assert minilm.spec.to_dict() == {"type": "minilm", "path": None}
    assert minilm.name == "minilm:package"
    assert minilm.to("cpu") is minilm


def test_load_text_encoder_minilm_matches(minilm):
    enc = load_text_encoder({"type": "minilm", "path": None})
    assert isinstance(enc, MiniLMTextEncoder)
    torch.testing.assert_close(enc.encode(["a star"])[0], minilm.encode(["a star"])[0], atol=0, rtol=0)


def test_minilm_layer_reads_that_hidden_state_and_round_trips_through_the_spec(minilm):
    """layer k returns the model's hidden_states[k] (masked); -1 and the last index are the same tensor; the
    spec names a non-default layer, and loading that spec gives the same encoder."""
    prompts = ["a star left of a circle", "a red heart"]
    batch = minilm.tokenizer(prompts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        states = minilm.model(**batch, output_hidden_states=True).hidden_states  # 7 x [B, L, 384]
    mask = batch["attention_mask"][..., None].float()
    enc3 = MiniLMTextEncoder.from_pretrained(layer=3)
    h3, m3 = enc3._encode(prompts, None, "generate")
    torch.testing.assert_close(h3 * m3[..., None], states[3] * mask, atol=0, rtol=0)
    h6, _ = minilm._encode(prompts, None, "generate")  # rendered strings in, as encode() passes them
    torch.testing.assert_close(h6, states[6], atol=0, rtol=0)
    assert not torch.allclose(h3, h6)  # the layers differ, so the option changes what the U-Net reads
    assert enc3.spec.to_dict() == {"type": "minilm", "path": None, "layer": 3}
    assert MiniLMTextEncoder.from_pretrained(layer=6).spec.to_dict() == {"type": "minilm", "path": None}
    again = load_text_encoder(enc3.spec.to_dict())
    torch.testing.assert_close(again.encode(prompts)[0], enc3.encode(prompts)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="layer 7 out of range for a 6-layer MiniLM"):
        MiniLMTextEncoder.from_pretrained(layer=7)
    with pytest.raises(ValueError, match="layer must be an int >= -1"):
        TextEncoderSpec(layer=-2)
    with pytest.raises(ValueError, match="layer applies to the minilm encoder only"):
        TextEncoderSpec(type="qwen3vl", path="x", layer=2)


def test_spec_parsing_errors():
    assert TextEncoderSpec.parse("minilm") == TextEncoderSpec()
    with pytest.raises(ValueError, match="unknown text encoder type 'clip'"):
        TextEncoderSpec.parse("clip")
    with pytest.raises(ValueError, match="needs a local 'path'"):
        TextEncoderSpec.parse({"type": "qwen3vl"})
    with pytest.raises(ValueError, match=r"unknown text encoder spec keys \['size'\]"):
        TextEncoderSpec.parse({"type": "minilm", "size": 3})
    with pytest.raises(ValueError, match="drop_idx must be"):
        TextEncoderSpec.parse({"type": "qwen3vl", "path": "x", "drop_idx": "some"})
    spec = TextEncoderSpec.parse({"type": "qwen3vl", "path": "x", "drop_idx": [3, 5], "image_size": 256})
    assert spec.drop_idx == (3, 5) and TextEncoderSpec.parse(spec.to_dict()) == spec


# ------------------------------------------------------------------------------------------------------------
# Token selection (PIPELINE.md §1)
# ------------------------------------------------------------------------------------------------------------
def test_select_tokens_handles_either_padding_side():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1) + 1  # values 1..10
    mask = torch.tensor([[0, 0, 1, 1, 1],   # left-padded: real tokens 3, 4, 5
                         [1, 1, 1, 1, 0]])  # right-padded: real tokens 6, 7, 8, 9
    kept, kept_mask = select_tokens(hidden, mask, drop=1)
    assert kept[..., 0].tolist() == [[4.0, 5.0, 0.0], [7.0, 8.0, 9.0]]
    assert kept_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="not more than the 3 to drop"):
        select_tokens(hidden, mask, drop=3)


# ------------------------------------------------------------------------------------------------------------
# Qwen3-VL adapter (tiny random model)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return build_tiny_qwen3vl(seed=0)


@pytest.fixture(scope="module")
def qwen(tiny) -> Qwen3VLTextEncoder:
    return Qwen3VLTextEncoder(tiny.model, tiny.tokenizer, tiny.image_processor, image_size=IMAGE_SIZE,
                              drop_idx="auto")


def _ids(tok, text: str) -> list[int]:
    return tok(text)["input_ids"]


def _edit_text(prompt: str, n_image_tokens: int = 4) -> str:
    return render_prompt(prompt, task="edit").replace(IMAGE_PAD, IMAGE_PAD * n_image_tokens)


def test_qwen_auto_drop_counts_template_heads(tiny, qwen):
    tok = tiny.tokenizer
    assert qwen.drop.generate == len(_ids(tok, QWEN3VL_FORMAT.dropped_text("generate")))
    assert qwen.drop.edit == len(_ids(tok, QWEN3VL_FORMAT.dropped_text("edit")))
    # The edit head ends right before <|vision_start|>.
    assert _ids(tok, _edit_text("x"))[qwen.drop.edit] == tok.convert_tokens_to_ids(VISION_START)
    # The default (official 34/64) is kept but flagged when the tokenizer disagrees.
    with pytest.warns(UserWarning, match="not the official"):
        official = Qwen3VLTextEncoder(tiny.model, tiny.tokenizer, tiny.image_processor, image_size=IMAGE_SIZE)
    assert official.drop == OFFICIAL_DROP
    explicit = Qwen3VLTextEncoder(tiny.model, tiny.tokenizer, tiny.image_processor, drop_idx=(5, 7))
    assert (explicit.drop.generate, explicit.drop.edit) == (5, 7)


def test_qwen_generate_matches_manual_selection(tiny, qwen):
    prompts = ["a red circle", "two green triangles above a yellow star"]
    hidden, mask = qwen.encode(prompts)
    tok, drop = tiny.tokenizer, qwen.drop.generate
    lengths = [len(_ids(tok, render_prompt(p, task="generate"))) - drop for p in prompts]
    assert hidden.shape == (2, max(lengths), TEXT_HIDDEN) and mask.sum(1).tolist() == lengths
    assert torch.all(hidden[mask == 0] == 0)
    for i, p in enumerate(prompts):  # each row = the final (normed) hidden states of its own tokens, minus the head
        ids = torch.tensor([_ids(tok, render_prompt(p, task="generate"))])
        with torch.no_grad():
            ref = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, drop:]
        torch.testing.assert_close(hidden[i, :lengths[i]], ref, atol=1e-5, rtol=1e-5)


def test_qwen_edit_keeps_vision_tokens_and_uses_image(tiny, qwen):
    prompt = "make the circle purple"
    hidden, mask = qwen.encode([prompt, prompt], [_image(0), _image(1)])
    n_kept = len(_ids(tiny.tokenizer, _edit_text(prompt))) - qwen.drop.edit
    assert hidden.shape == (2, n_kept, TEXT_HIDDEN) and mask.sum(1).tolist() == [n_kept, n_kept]
    # Manual run: the kept sequence starts at <|vision_start|> and matches the model's output from there.
    ids = torch.tensor([_ids(tiny.tokenizer, _edit_text(prompt))])
    square = _image(0).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    vis = tiny.image_processor(images=[square], return_tensors="pt")
    with torch.no_grad():
        ref = tiny.model.model(input_ids=ids, pixel_values=vis["pixel_values"], image_grid_thw=vis["image_grid_thw"],
                               mm_token_type_ids=(ids == qwen.image_token_id).long()).last_hidden_state
    torch.testing.assert_close(hidden[0], ref[0, qwen.drop.edit:], atol=1e-5, rtol=1e-5)
    # The image matters: different sources → different states; the same source → the same states.
    assert (hidden[0] - hidden[1]).abs().max() > 1e-3
    again, _ = qwen.encode([prompt], [_image(0)])
    torch.testing.assert_close(again[0], hidden[0], atol=1e-5, rtol=1e-5)


def test_qwen_edit_batch_padding_and_unconditional(tiny, qwen):
    imgs = [_image(2), _image(2)]
    hidden, mask = qwen.encode(["make it red", ""], imgs, unconditional=True)
    conditional = len(_ids(tiny.tokenizer, _edit_text("make it red"))) - qwen.drop.edit
    # Unconditional rows carry no prefix: compare against the prefix-less render.
    expect = [len(_ids(tiny.tokenizer, QWEN3VL_FORMAT.render("edit", p, conditional=False)
                       .replace(IMAGE_PAD, IMAGE_PAD * 4))) - qwen.drop.edit for p in ("make it red", "")]
    assert mask.sum(1).tolist() == expect and expect[0] > expect[1] and conditional > expect[0]
    assert torch.all(hidden[1, expect[1]:] == 0)
    alone, _ = qwen.encode([""], imgs[:1], unconditional=True)
    torch.testing.assert_close(hidden[1, :expect[1]], alone[0], atol=1e-5, rtol=1e-5)
    # Generate mode, empty negative prompt: only the closing <|im_end|>\n<|im_start|>assistant\n survives.
    _, gmask = qwen.encode([""], unconditional=True)
    assert int(gmask.sum()) == len(_ids(tiny.tokenizer, "<|im_end|>\n<|im_start|>assistant\n"))


def test_qwen_bad_inputs(qwen):
    with pytest.raises(ValueError, match="edit mode needs one source image"):
        qwen.encode(["make it red"], task="edit")
    with pytest.raises(ValueError, match="no image slot"):
        qwen.encode(["a star"], [_image(0)], task="generate")
    with pytest.raises(ValueError, match="reserved template token"):
        qwen.encode(["a star <|image_pad|>"])
    with pytest.raises(ValueError, match="must be a PIL.Image.Image"):
        qwen.encode(["a"], [np.zeros((4, 4, 3))])  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError, match="no Qwen3-VL model folder"):
        Qwen3VLTextEncoder.from_pretrained("/nonexistent/qwen")


def test_qwen_is_frozen(qwen):
    assert not qwen.model.training and not any(p.requires_grad for p in qwen.model.parameters())
    assert qwen.hidden_size == TEXT_HIDDEN and qwen.dtype == torch.float32


def test_qwen_output_drives_mobile_unet(qwen):
    torch.manual_seed(0)
    unet = MobileUNet.from_preset("tiny", text_embed_dim=TEXT_HIDDEN).eval()
    hidden, mask = qwen.encode(["make it red", "make it blue"], [_image(3), _image(4)])
    sample = torch.randn(2, 4, 8, 16)  # packed (target | source) latents
    with torch.no_grad():
        out = unet(sample, torch.tensor([500.0, 250.0]), hidden, mask, torch.tensor([[64.0, 64.0]] * 2))
    assert out.shape == (2, 4, 8, 16) and torch.isfinite(out).all()


def test_qwen_loads_from_local_folder_via_spec(tmp_path, tiny, qwen):
    folder = save_tiny_qwen3vl(tmp_path / "qwen", seed=0)
    spec = {"type": "qwen3vl", "path": str(folder), "image_size": IMAGE_SIZE, "drop_idx": "auto"}
    loaded = load_text_encoder(spec)
    assert isinstance(loaded, Qwen3VLTextEncoder) and loaded.drop == qwen.drop
    assert loaded.spec.to_dict() == {**spec, "dtype": "float32"}
    for args in ((["a red circle"],), (["make it red"], [_image(5)])):
        torch.testing.assert_close(loaded.encode(*args)[0], qwen.encode(*args)[0], atol=1e-6, rtol=1e-6)
