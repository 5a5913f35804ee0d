"""export_friendly: same parameters, same numbers, delegate-friendly operators."""

import torch

from dreamlite import MobileUNet
from dreamlite.export import export_friendly
from dreamlite.export.graph import GroupNorm4D, LayerNormRows, MatmulAttention, RMSNormRows, SliceGEGLUProj
from dreamlite.presets import preset_config

SMALL = dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), cross_attention_dim=64,
             time_embed_dim=64, size_embed_dim=8, norm_num_groups=16)


def _inputs(B=2, h=4, L=5, D=384):
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, L)
    mask[1, 3:] = 0  # padded text: the additive mask must act identically in both graphs
    return (torch.randn(B, 4, h, 2 * h, generator=g), torch.tensor([900.0, 150.0]),
            torch.randn(B, L, D, generator=g), mask, torch.tensor([[64.0, 64.0]] * B))


def test_export_friendly_matches_the_network_and_shares_its_weights():
    torch.manual_seed(0)
    unet = MobileUNet(**preset_config("tiny", **SMALL)).eval()
    with torch.no_grad():  # non-trivial norm affine parameters, so a dropped weight/bias would show
        for m in unet.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    friendly = export_friendly(unet)
    kinds = {type(m) for m in friendly.modules()}
    assert {GroupNorm4D, LayerNormRows, RMSNormRows, MatmulAttention, SliceGEGLUProj} <= kinds
    assert not any(type(m) in (torch.nn.GroupNorm, torch.nn.LayerNorm) for m in friendly.modules())
    # the original is untouched and parameters are shared, not copied
    assert any(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    ref, new = unet.state_dict(), friendly.state_dict()
    assert ref.keys() == new.keys()
    assert all(ref[k].data_ptr() == new[k].data_ptr() for k in ref)
    with torch.no_grad():
        a, b = unet(*_inputs()), friendly(*_inputs())
    assert a.shape == b.shape == (2, 4, 4, 8)
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    assert a.abs().mean() > 1e-3  # not trivially zero


def test_export_friendly_output_changes_with_the_text_like_the_original():
    torch.manual_seed(1)
    unet = MobileUNet(**preset_config("tiny", **SMALL)).eval()
    friendly = export_friendly(unet)
    x, t, text, mask, ids = _inputs()
    with torch.no_grad():
        d_ref = unet(x, t, text + 1, mask, ids) - unet(x, t, text, mask, ids)
        d_new = friendly(x, t, text + 1, mask, ids) - friendly(x, t, text, mask, ids)
    assert d_ref.abs().max() > 1e-3
    torch.testing.assert_close(d_new, d_ref, atol=2e-5, rtol=1e-4)
