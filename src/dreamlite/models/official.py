"""Official DreamLite checkpoints -> MobileUNet: config translation, key checks, atomic writing.

The official U-Net (``DreamLiteUNetModel``) uses a diffusers ``UNet2DConditionModel``-style config in which
block *types* encode variants and ``attention_head_dim`` really means heads per level. We translate that into
MobileUNet's explicit fields and refuse, by name, anything our network cannot express. Parameter names are
the same on both sides (MobileUNet keeps the official hierarchy), so conversion is: translate the config,
strip wrappers (a DeepSpeed ``module.`` prefix), cast to float32 (the release stores 16-bit weights), check
every key and shape, then write ``config.json`` + ``diffusion_pytorch_model.safetensors`` atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dreamlite.models.unet import MobileUNet
from dreamlite.paths import atomic_folder

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

DOWN_TYPES = {
    "CrossAttnDownRemoveSelfAttnBlock2D": "cross",
    "CrossAttnDownBlock2D": "self+cross",
    "DownBlock2D": "none",
}
UP_TYPES = {
    "CrossAttnUpRemoveSelfAttnBlock2DV1": "cross",
    "CrossAttnUpBlock2D": "self+cross",
    "UpBlock2D": "none",
}
MID_TYPES = {"UNetMidBlock2DCrossAttn": "self+cross"}
TEXT_PROJ = {"text_proj_rms": "rms", "text_proj": "linear", None: "none"}

# Official fields that must hold these values (anything else changes the maths in a way we do not model).
REQUIRED = {
    "act_fn": "silu", "attention_type": "default", "center_input_sample": False, "class_embed_type": None,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_norm": None, "downsample_padding": 1,
    "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_scale_factor": 1,
    "num_class_embeds": None, "only_cross_attention": False, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_type": "positional", "timestep_post_act": None,
    "use_linear_projection": True, "class_embeddings_concat": False,
}
# Read but irrelevant to the forward pass (documented in the reference notes).
IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "addition_embed_type_num_heads", "sample_size",
           "num_mid_layers", "upcast_attention", "mid_block_only_cross_attention", "dropout"}


class ConversionError(ValueError):
    """An official checkpoint or config that cannot be converted; the message names the culprit."""


def _per_level(value: Any, n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConversionError(f"official config field {name!r} must be an int or a list of {n}, got {value!r}")
    return [int(v) for v in value]


def translate_config(official: dict[str, Any]) -> dict[str, Any]:
    """Official UNet config dict -> MobileUNet keyword arguments."""
    for key, want in REQUIRED.items():
        if key in official and official[key] != want and not (want is False and official[key] is None):
            raise ConversionError(f"official config {key}={official[key]!r} is not supported "
                                  f"(MobileUNet implements {key}={want!r})")
    if official.get("dropout", 0.0):
        raise ConversionError(f"official config dropout={official['dropout']} is not supported (0 only)")
    C = list(official["block_out_channels"])
    n = len(C)

    def lookup(table: dict, value: Any, field: str) -> Any:
        if value not in table:
            raise ConversionError(f"official config {field}: block type {value!r} is not supported "
                                  f"(known: {sorted(k for k in table if k)})")
        return table[value]

    down = [lookup(DOWN_TYPES, t, "down_block_types") for t in official["down_block_types"]]
    up = [lookup(UP_TYPES, t, "up_block_types") for t in official["up_block_types"]]
    mid = lookup(MID_TYPES, official.get("mid_block_type", "UNetMidBlock2DCrossAttn"), "mid_block_type")
    if len(down) != n or len(up) != n:
        raise ConversionError(f"official config has {len(down)} down / {len(up)} up blocks for {n} levels")
    heads = _per_level(official.get("num_attention_heads") or official["attention_head_dim"], n,
                       "attention_head_dim")
    depth = _per_level(official.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
    reverse = official.get("reverse_transformer_layers_per_block")
    if reverse is not None and list(reverse) != depth[::-1]:
        raise ConversionError("official config reverse_transformer_layers_per_block differs from the "
                              "reversed transformer_layers_per_block; MobileUNet mirrors the down path")
    for field in ("addition_embed_type", "encoder_hid_dim_type", "qk_norm"):
        pass
    add_type = official.get("addition_embed_type")
    if add_type not in ("time", None):
        raise ConversionError(f"official config addition_embed_type={add_type!r} is not supported "
                              "(only 'time' size conditioning or none)")
    size_dim = int(official.get("addition_time_embed_dim") or 0) if add_type == "time" else 0
    if size_dim and official.get("projection_class_embeddings_input_dim") not in (None, 2 * size_dim):
        raise ConversionError("official config projection_class_embeddings_input_dim must be "
                              f"2 x addition_time_embed_dim = {2 * size_dim} (two size ids)")
    proj_type = official.get("encoder_hid_dim_type")
    if proj_type not in TEXT_PROJ:
        raise ConversionError(f"official config encoder_hid_dim_type={proj_type!r} is not supported")
    qk = official.get("qk_norm")
    if qk not in ("rms_norm", None):
        raise ConversionError(f"official config qk_norm={qk!r} is not supported (rms_norm or none)")
    cross_dim = official["cross_attention_dim"]
    if isinstance(cross_dim, (list, tuple)):
        if len(set(cross_dim)) != 1:
            raise ConversionError(f"per-level cross_attention_dim {cross_dim} is not supported")
        cross_dim = cross_dim[0]
    return dict(
        in_channels=official.get("in_channels", 4), out_channels=official.get("out_channels", 4),
        block_out_channels=tuple(C), layers_per_block=int(official.get("layers_per_block", 2)),
        down_attention=tuple(down), up_attention=tuple(up), mid_attention=mid,
        num_attention_heads=tuple(heads), transformer_layers_per_block=tuple(depth),
        mid_transformer_layers=depth[-1],
        num_kv_heads=int(official.get("num_kv_heads") or heads[0]), qk_norm=qk == "rms_norm",
        ff_mult=int(official.get("ff_mult") or 4), separable_conv=bool(official.get("use_sep_conv", False)),
        text_embed_dim=int(official.get("encoder_hid_dim") or cross_dim), cross_attention_dim=int(cross_dim),
        text_proj=TEXT_PROJ[proj_type],
        time_embed_dim=int(official.get("time_embedding_dim") or 4 * C[0]),
        size_embed_dim=size_dim, pooled_text_embed=False,
        position_embed=0, text_position_embed=0,  # the official network embeds neither places nor token indices
        norm_num_groups=int(official.get("norm_num_groups", 32)), norm_eps=float(official.get("norm_eps", 1e-5)),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"config file {path} is not valid JSON: {e}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConversionError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise ConversionError(f"{path}: only .safetensors weights are loaded (pickle formats are unsafe)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConversionError(f"{path} is not a readable safetensors file: {e}") from None


def locate(src: str | Path, config: str | Path | None = None) -> tuple[Path, Path]:
    """(weights, config) paths for a diffusers-style folder (``unet/`` accepted) or a file plus config."""
    src = Path(src)
    if src.is_dir():
        folder = src / "unet" if (src / "unet" / "config.json").is_file() else src
        weights = folder / WEIGHTS_NAME
        cfg = Path(config) if config else folder / "config.json"
    else:
        weights = src
        cfg = Path(config) if config else src.with_name("config.json")
    return weights, cfg


def convert_state_dict(state: dict[str, torch.Tensor], model: MobileUNet) -> dict[str, torch.Tensor]:
    """Official tensors -> our names, float32; raises naming every missing, unexpected or mis-shaped key."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # DeepSpeed wrapper
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in sorted(set(ours) & set(state)) if state[k].shape != ours[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped tensor(s), e.g. {shapes[:3]}")
    if problems:
        raise ConversionError("checkpoint does not match the config: " + "; ".join(problems))
    return {k: v.to(torch.float32) for k, v in state.items()}


def load_official(src: str | Path, config: str | Path | None = None) -> MobileUNet:
    """Read an official U-Net (folder or file + config) into a float32 MobileUNet."""
    weights_path, config_path = locate(src, config)
    ours_cfg = translate_config(_read_json(config_path))
    state = _read_weights(weights_path)
    model = MobileUNet(**ours_cfg)
    model.load_state_dict(convert_state_dict(state, model), strict=True)
    return model.eval()


def convert_official(src: str | Path, dst: str | Path, config: str | Path | None = None) -> MobileUNet:
    """Convert and write ``dst`` (config.json + safetensors) atomically: on any error nothing is left."""
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) if dst.is_dir() else dst.exists():
        raise ConversionError(f"destination {dst} exists and is not empty; refusing to overwrite")
    model = load_official(src, config)
    with atomic_folder(dst) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return model
