"""Model soups: the weighted mean of U-Nets fine-tuned from one start (Wortsman et al., 2022, "Model soups").

Models that share a pretrained start and differ by fine-tuning (our RL rounds and consolidation stages all
descend from one base) tend to lie in one basin of the loss, so the mean of their weights is itself a good
model, often better than each ingredient: the rounds' independent drifts partly cancel while what they agree on
stays. Averaging is ours to write (a weighted sum of state dicts); what matters is refusing ingredients that do
not describe the same function family - another network config, another VAE (another latent space) or another
text encoder (other text states) - and writing the result atomically.

``make_soup`` reads one variant's U-Net of each ingredient folder (``--variant``, else the first folder's default
variant, the same name in every folder) and writes a model folder: the first folder's model parts (VAE, scheduler,
text encoder reference, ``dreamlite.json``, every variant's U-Net) with that U-Net replaced by the mean, plus
``soup.json`` (the ingredients, their weights and the SHA-256 of each ingredient's weights file). The first
folder's other files (training records of a shipped folder) are not copied: they describe it, not the soup.
Choose ingredients and weights on the validation split (``full_eval.py --split val``), never on the benchmark.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamlite.paths import atomic_folder

SOUP_FILE = "soup.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class SoupConfig:
    """What a soup was made of; written to ``soup.json`` in the soup's folder."""

    ingredients: tuple[str, ...]
    weights: tuple[float, ...]  # normalised to sum 1
    variant: str  # the variant whose U-Net was averaged (its folder per ingredient comes from dreamlite.json)
    sha256: tuple[str, ...] = ()  # of each ingredient's U-Net weights file

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.ingredients):
            raise ValueError(f"{len(self.weights)} weights for {len(self.ingredients)} ingredients")


def normalised_weights(n: int, weights: list[float] | None = None) -> tuple[float, ...]:
    """``weights`` (default: uniform) scaled to sum 1; an error for a wrong count, a negative, NaN or infinite
    weight, or an all-zero set."""
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} ingredients")
    if not all(math.isfinite(x) for x in w) or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"soup weights must be finite and >= 0 with a positive sum, got {w}")
    return tuple(x / sum(w) for x in w)


def average_states(states: list[dict[str, torch.Tensor]], weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i per tensor, accumulated in float64 and stored in the first state's dtypes.
    Every state must hold the same names and shapes; integer buffers must agree (they are counters, not weights)."""
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        if s.keys() != first.keys():
            extra, missing = sorted(s.keys() - first.keys()), sorted(first.keys() - s.keys())
            raise ValueError(f"ingredient {i} has other weights than ingredient 0: extra {extra[:5]}, "
                             f"missing {missing[:5]}")
        bad = [k for k in first if s[k].shape != first[k].shape]
        if bad:
            raise ValueError(f"ingredient {i}: shape of {bad[0]} is {tuple(s[bad[0]].shape)}, ingredient 0's is "
                             f"{tuple(first[bad[0]].shape)}")
    out = {}
    for k, ref in first.items():
        if ref.is_floating_point():
            acc = sum(w * s[k].double() for w, s in zip(weights, states))  # (same shape as ref)
            out[k] = acc.to(ref.dtype).contiguous()
        else:
            if any(not torch.equal(s[k], ref) for s in states[1:]):
                raise ValueError(f"integer buffer {k} differs between ingredients; it cannot be averaged")
            out[k] = ref.clone()
    return out


@dataclass(frozen=True)
class _Ingredient:
    folder: Path
    variant: str
    unet_dir: Path
    text: dict | None  # the text encoder spec this variant's U-Net reads (its text_layer applied)
    unet_folders: tuple[str, ...]  # every variant's U-Net folder (model parts a soup keeps from its first folder)


def _ingredient(folder: Path, variant: str | None) -> _Ingredient:
    """One ingredient's ``variant`` (None = the folder's default): its U-Net folder and the text states it reads."""
    from dreamlite.pipeline import CONFIG_NAME, PipelineDefaults, read_text_spec

    cfg = folder / CONFIG_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"soup ingredient not found: {folder}")
    defaults = PipelineDefaults.from_dict(json.loads(cfg.read_text())) if cfg.is_file() else PipelineDefaults()
    name = variant or defaults.default_variant
    if name not in defaults.variants:
        raise ValueError(f"soup ingredient {folder} has no variant {name!r}; it has {sorted(defaults.variants)}")
    unet_dir = folder / defaults.variants[name].unet_folder
    if not (unet_dir / "config.json").is_file() or not (unet_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"soup ingredient {folder}: {unet_dir.name}/ lacks config.json or {WEIGHTS_FILE}")
    spec, layer = read_text_spec(folder), defaults.variants[name].text_layer
    if spec is not None and layer is not None:
        spec = replace(spec, layer=layer)
    return _Ingredient(folder, name, unet_dir, None if spec is None else spec.to_dict(),
                       tuple(v.unet_folder for v in defaults.variants.values()))


def _public_config(path: Path) -> dict:
    from dreamlite.pipeline import public_config

    return public_config(json.loads(path.read_text()))


def _network_config(unet_dir: Path) -> dict:
    from dreamlite.pipeline import public_config

    cfg = json.loads((unet_dir / "config.json").read_text())
    if cfg.get("_class_name") != "MobileUNet":
        raise ValueError(f"{unet_dir}: soups average dreamlite MobileUNet folders, got {cfg.get('_class_name')!r} "
                         "(convert an official checkpoint first: `dreamlite convert-official`)")
    return public_config(cfg)


def _check_same_family(first: _Ingredient, other: _Ingredient) -> None:
    """The parts a U-Net reads must be the same: the text states (encoder and layer) and the VAE (the latent space:
    its config, diffusers' bookkeeping keys aside, and its weights)."""
    if first.text != other.text:
        raise ValueError(f"soup ingredients {first.folder} and {other.folder} read other text states: "
                         f"{first.text} vs {other.text}")
    a, b = first.folder / "vae" / "config.json", other.folder / "vae" / "config.json"
    if a.is_file() != b.is_file() or (a.is_file() and _public_config(a) != _public_config(b)):
        raise ValueError(f"soup ingredients {first.folder} and {other.folder} differ in vae/config.json: their "
                         "U-Nets read other latents")
    a, b = first.folder / "vae" / WEIGHTS_FILE, other.folder / "vae" / WEIGHTS_FILE
    if a.is_file() and b.is_file():
        va, vb = load_file(str(a)), load_file(str(b))
        if va.keys() != vb.keys() or any(not torch.equal(va[k], vb[k]) for k in va):
            raise ValueError(f"soup ingredients {first.folder} and {other.folder} have different VAE weights "
                             "(other latent spaces)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_soup(ingredients: list[str | Path], out: str | Path, weights: list[float] | None = None,
              variant: str | None = None) -> Path:
    """Write ``out``: the first ingredient's model parts with its ``variant`` U-Net replaced by the weighted mean of
    every ingredient's, and ``soup.json``. Atomic: a temporary folder renamed at the end; an existing non-empty
    ``out`` is an error."""
    folders = [Path(p) for p in ingredients]
    if len(folders) < 2:
        raise ValueError(f"a soup needs at least two ingredients, got {len(folders)}")
    w = normalised_weights(len(folders), weights)
    first = _ingredient(folders[0], variant)
    items = [first] + [_ingredient(f, first.variant) for f in folders[1:]]  # one variant name for all
    configs = [_network_config(i.unet_dir) for i in items]
    for item, cfg in zip(items[1:], configs[1:]):
        diff = sorted(k for k in cfg.keys() | configs[0].keys() if cfg.get(k) != configs[0].get(k))
        if diff:
            raise ValueError(f"soup ingredient {item.folder}: its U-Net differs from {first.folder}'s in {diff}")
        _check_same_family(first, item)
    config = SoupConfig(tuple(str(f) for f in folders), w, first.variant,
                        tuple(_sha256(i.unet_dir / WEIGHTS_FILE) for i in items))
    soup = average_states([load_file(str(i.unet_dir / WEIGHTS_FILE)) for i in items], w)
    with safe_open(str(first.unet_dir / WEIGHTS_FILE), "pt") as f:
        metadata = f.metadata()
    return _write(first, soup, metadata, config, Path(out))


def _write(first: _Ingredient, soup: dict[str, torch.Tensor], metadata: dict | None, config: SoupConfig,
           dst: Path) -> Path:
    """The model parts of ``first``'s folder, its averaged U-Net replaced by ``soup`` (stored in the first
    ingredient's dtypes), and ``soup.json``."""
    from dreamlite.pipeline import CONFIG_NAME

    parts = {"model_index.json", CONFIG_NAME, "vae", "scheduler", "text_encoder", *first.unet_folders}
    with atomic_folder(dst) as tmp:
        for name in sorted(parts):
            item = first.folder / name
            if item.is_dir():
                shutil.copytree(item, tmp / name)
            elif item.is_file():
                shutil.copy2(item, tmp / name)
        save_file(soup, str(tmp / first.unet_dir.name / WEIGHTS_FILE), metadata=metadata)
        (tmp / SOUP_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return dst
