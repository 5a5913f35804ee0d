import json

import pytest
import torch

from dreamlite import MobileUNet, pack
from dreamlite.models.unet import canvas_coordinates, sinusoid
from dreamlite.profile import count_params


def small(**kw):
    cfg = dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), text_embed_dim=24,
               cross_attention_dim=48, time_embed_dim=64, size_embed_dim=8, norm_num_groups=8)
    cfg.update(kw)
    return MobileUNet.from_preset("tiny", **cfg).eval()


def inputs(model, B=2, h=8, w=8, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return dict(sample=torch.randn(B, c.in_channels, h, 2 * w, generator=g),
                timestep=torch.rand(B, generator=g) * 1000,
                encoder_hidden_states=torch.randn(B, L, c.text_embed_dim, generator=g),
                encoder_attention_mask=torch.ones(B, L, dtype=torch.long),
                time_ids=torch.tensor([[64.0, 64.0]] * B))


def test_paper_preset_matches_official_manifest(official_dir):
    with torch.device("meta"):
        model = MobileUNet.from_preset("dreamlite-0.39b")
    assert count_params(model) == 389_968_388
    manifest = json.loads((official_dir / "keys_0.39b.json").read_text())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {e["key"]: e["shape"] for e in manifest}


def test_tiny_preset_is_small():
    assert count_params(MobileUNet.from_preset("tiny")) < 10_000_000


def test_output_shape_and_batch_independence():
    model = small()
    x = inputs(model)
    with torch.no_grad():
        out = model(**x)
        first = model(**{k: v[:1] for k, v in x.items()})
    assert out.shape == x["sample"].shape
    torch.testing.assert_close(out[:1], first, atol=2e-6, rtol=1e-5)


def test_masked_tokens_are_ignored():
    model = small()
    x = inputs(model)
    x["encoder_attention_mask"][:, -2:] = 0
    with torch.no_grad():
        a = model(**x)
        x["encoder_hidden_states"][:, -2:] = 50 * torch.randn_like(x["encoder_hidden_states"][:, -2:])
        b = model(**x)
        x["encoder_attention_mask"][:, -2:] = 1
        c = model(**x)
    assert (a - b).abs().max() < 1e-5
    assert (a - c).abs().max() > 1e-3


def test_time_ids_order_matters_and_timestep_scalar_broadcasts():
    model = small()
    x = inputs(model)
    x["time_ids"] = torch.tensor([[96.0, 64.0], [96.0, 64.0]])
    with torch.no_grad():
        a = model(**x)
        x["time_ids"] = x["time_ids"].flip(-1)
        b = model(**x)
        x["timestep"] = torch.tensor(500.0)
        c = model(**x)
        x["timestep"] = torch.tensor([500.0, 500.0])
        d = model(**x)
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(c, d)


def test_sinusoid_known_values():
    e = sinusoid(torch.tensor([0.0, 1.0]), 4)  # freqs [1, 1e-2]
    expected = torch.tensor([[1, 1, 0, 0], [torch.cos(torch.tensor(1.0)), torch.cos(torch.tensor(0.01)),
                                            torch.sin(torch.tensor(1.0)), torch.sin(torch.tensor(0.01))]])
    torch.testing.assert_close(e, expected)


def test_odd_canvas_sizes_and_variants():
    model = small(down_attention=("none", "cross", "self+cross"), separable_conv=False, num_kv_heads=1,
                  qk_norm=False, text_proj="linear", pooled_text_embed=False, size_embed_dim=0)
    x = inputs(model, h=5, w=9)
    x.pop("time_ids")
    with torch.no_grad():
        out = model(**x)
    assert out.shape == x["sample"].shape
    assert "down_blocks.0.attentions.0.norm.weight" not in model.state_dict()


@pytest.mark.parametrize("kv_heads", [1, 3])
def test_attention_matches_naive_formula(kv_heads):
    """Folded multi-query (and grouped) attention equals explicit repeat-K/V softmax attention with the mask."""
    from dreamlite.models.unet import Attention

    torch.manual_seed(0)
    attn = Attention(dim=48, context_dim=20, heads=3, kv_heads=kv_heads, qk_norm=True)
    with torch.no_grad():
        attn.norm_q.weight.uniform_(0.5, 1.5)
        attn.norm_k.weight.uniform_(0.5, 1.5)
    x, ctx = torch.randn(2, 10, 48), torch.randn(2, 6, 20)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    bias = (1.0 - mask.float()) * -10000.0
    with torch.no_grad():
        out = attn(x, ctx, bias)
        q = attn.to_q(x).view(2, 10, 3, 16)
        k = attn.to_k(ctx).view(2, 6, kv_heads, 16)
        v = attn.to_v(ctx).view(2, 6, kv_heads, 16)
        rms = lambda z, w: z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-5) * w  # noqa: E731
        q, k = rms(q, attn.norm_q.weight), rms(k, attn.norm_k.weight)
        k, v = k.repeat_interleave(3 // kv_heads, dim=2), v.repeat_interleave(3 // kv_heads, dim=2)
        logits = torch.einsum("bnhd,blhd->bhnl", q, k) / 4.0 + bias[:, None, None, :]
        naive = torch.einsum("bhnl,blhd->bnhd", logits.softmax(-1), v).reshape(2, 10, 48)
        naive = attn.to_out[0](naive)
    torch.testing.assert_close(out, naive, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (dict(sample=torch.zeros(2, 3, 8, 16)), "sample must be"),
    (dict(encoder_hidden_states=torch.zeros(2, 5, 7)), "encoder_hidden_states"),
    (dict(encoder_attention_mask=torch.ones(2, 4)), "encoder_attention_mask"),
    (dict(time_ids=torch.ones(2, 3)), "time_ids"),
])
def test_bad_inputs_name_the_problem(bad, message):
    model = small()
    x = inputs(model)
    x.update(bad)
    with pytest.raises(ValueError, match=message):
        model(**x)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="down_attention"):
        small(down_attention=("cross", "bogus", "self+cross"))
    with pytest.raises(ValueError, match="num_attention_heads"):
        small(num_attention_heads=(1, 2))


def test_save_load_roundtrip(tmp_path):
    model = small()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MobileUNet.from_pretrained(tmp_path).eval()
    x = inputs(model)
    with torch.no_grad():
        assert torch.equal(model(**x), loaded(**x))


def test_gradient_checkpointing_same_gradients():
    model = small().train()
    x = inputs(model)
    model(**x).square().mean().backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(**x).square().mean().backward()
    for a, p in zip(g1, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)


def test_halves_interact():
    """The condition half must influence the target half (edit conditioning works through the network)."""
    model = small()
    x = inputs(model)
    target = x["sample"][..., :8]
    with torch.no_grad():
        a = model(**{**x, "sample": pack(target)})[..., :8]
        b = model(**{**x, "sample": pack(target, torch.randn_like(target))})[..., :8]
    assert (a - b).abs().max() > 1e-4


def test_canvas_coordinates_are_per_half_and_order_left_to_right():
    H, W, F = 3, 8, 2
    f = canvas_coordinates(H, W, F, torch.device("cpu"), torch.float32).view(H, W, 4 * F + 1)
    u = (torch.arange(4) + 0.5) / 4  # place across a half of width 4
    torch.testing.assert_close(f[0, :4, 3 * F], torch.cos(torch.pi * u))  # cos(pi u): column features start at 2F
    assert torch.equal(f[:, :4, 2 * F:4 * F], f[:, 4:, 2 * F:4 * F])  # a target token and its source share u, v
    assert torch.all(f[..., -1][:, :4] == 1) and torch.all(f[..., -1][:, 4:] == -1)  # which half
    assert torch.all(torch.diff(f[0, :4, 3 * F]) < 0)  # cos(pi u) falls left to right: left differs from right
    v = (torch.arange(H) + 0.5) / H
    torch.testing.assert_close(f[:, 0, F], torch.cos(torch.pi * v))  # rows: the same features of v
    assert torch.equal(f[:, 0, :2 * F], f[:, 5, :2 * F])


def test_text_position_embedding_starts_as_nothing_and_lets_the_network_read_word_order():
    """Cross-attention reads the text as a set: reordering the tokens leaves the plain network's output unchanged
    (the reason a small encoder's "A left of B" and "B left of A" look alike to it); with token indices embedded,
    the order reaches the output. Zero-initialised, the embedding starts as the plain network's function."""
    plain, indexed = small(), small(text_position_embed=4)
    missing, unexpected = indexed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing == ["text_pos.weight"]
    x = inputs(plain, L=6)  # longer than the 4 embedded indices: the later tokens share the last one
    swapped = dict(x, encoder_hidden_states=x["encoder_hidden_states"][:, [0, 4, 2, 3, 1, 5]])  # two tokens trade
    with torch.no_grad():
        torch.testing.assert_close(indexed(**x), plain(**x))
        torch.testing.assert_close(plain(**swapped), plain(**x), atol=1e-5, rtol=1e-4)  # blind to the order
        indexed.text_pos.weight.normal_(std=0.5)
        assert (indexed(**swapped) - indexed(**x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="text_position_embed"):
        small(text_position_embed=-1)


def test_place_embedding_starts_as_nothing_and_is_in_the_path():
    plain, placed = small(), small(position_embed=3)
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".pos_proj." in k for k in missing)
    x = inputs(plain)
    with torch.no_grad():
        torch.testing.assert_close(placed(**x), plain(**x))  # zero-initialised: the same function
        for name, p in placed.named_parameters():
            if ".pos_proj." in name:
                p.normal_(std=0.5)
        moved = placed(**x)
    assert (moved - plain(**x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="position_embed"):
        small(position_embed=-1)

