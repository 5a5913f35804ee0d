"""Named network configurations: the one place presets live.

``dreamlite-0.39b`` is the paper's network, identical to the official release's configuration
(389,968,388 parameters). ``tiny`` keeps every block type of the paper's network at a few million
parameters for the Shapes world and for tests.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "dreamlite-0.39b": MappingProxyType(dict(
        in_channels=4, out_channels=4,
        block_out_channels=(256, 512, 896), layers_per_block=2,
        down_attention=("cross", "cross", "self+cross"), up_attention=("self+cross", "cross", "none"),
        mid_attention="self+cross",
        num_attention_heads=(4, 8, 14), transformer_layers_per_block=(1, 2, 4), mid_transformer_layers=4,
        num_kv_heads=1, qk_norm=True, ff_mult=3, separable_conv=True,
        text_embed_dim=2048, cross_attention_dim=2304, text_proj="rms",
        time_embed_dim=1024, size_embed_dim=256, pooled_text_embed=False, position_embed=0, text_position_embed=0,
        norm_num_groups=32, norm_eps=1e-5,
    )),
    # Shapes world: MiniLM text (384), 4-channel latents. Same block types as the paper's network; the
    # lowest level keeps self-attention (relations such as "left of" need global mixing), the pooled
    # sentence embedding gives the small model a global summary of the prompt. That summary helps single objects
    # early but decides shapes globally, which hurts two-object prompts; the shipped model drops it from
    # recipe shapes-tiny-v3 on (BENCHMARKS.md "v2 failure modes"). The preset keeps it so that the
    # recipes that start from it reproduce what was run.
    "tiny": MappingProxyType(dict(
        in_channels=4, out_channels=4,
        block_out_channels=(64, 128, 160), layers_per_block=2,
        down_attention=("cross", "cross", "self+cross"), up_attention=("self+cross", "cross", "none"),
        mid_attention="self+cross",
        num_attention_heads=(2, 4, 5), transformer_layers_per_block=(1, 1, 2), mid_transformer_layers=2,
        num_kv_heads=1, qk_norm=True, ff_mult=3, separable_conv=True,
        text_embed_dim=384, cross_attention_dim=192, text_proj="rms",
        time_embed_dim=256, size_embed_dim=32, pooled_text_embed=True, position_embed=0, text_position_embed=0,
        norm_num_groups=32, norm_eps=1e-5,
    )),
})


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of a preset's config, with overrides applied; unknown names list the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    cfg = dict(PRESETS[name])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise KeyError(f"unknown config fields for preset {name!r}: {sorted(unknown)}")
    cfg.update(overrides)
    return cfg
