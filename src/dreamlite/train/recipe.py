"""Run a recipe from nothing: VAE -> corpus -> stages (T2I -> edit -> joint -> SFT, RL, distill) -> model.

The paper's task-progressive schedule (Sec. 3.3) is data (``dreamlite.train.recipes``); this module only
sequences it, dispatching on each stage's kind: ``flow`` (``loop.train_stage``), ``rl``
(``rl_stage.run_rl_stage``, DiffusionNFT) or ``distill`` (``distill_stage.run_distill_stage``; the model folder
then holds the base and the mobile variant). After each stage the EMA model is evaluated on GenEval-Shapes and
ImgEdit-Shapes subsets and a row is appended to ``<run>/stages.md``; loss and score curves are drawn to
``<run>/curves.png``. Interrupted runs continue with ``resume=True`` from the latest atomic checkpoint, exactly.
"""

from __future__ import annotations

import json
import time
from functools import partial
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from dreamlite.models.unet import MobileUNet
from dreamlite.presets import preset_config
from dreamlite.train.config import Recipe, StageConfig
from dreamlite.train.corpus import Pool, build_pool, load_pool, save_pool
from dreamlite.train.loop import (EMA, Anchors, BatchSampler, LoopState, StageContext, StageResult, frozen_weights,
                                  latest_checkpoint, train_stage)
from dreamlite.train.rl import frozen_copy


def make_accelerator() -> Accelerator:
    """bf16 autocast on GPUs, fp32 on CPU; DDP/FSDP come from ``accelerate launch`` configuration."""
    gpu = torch.cuda.is_available()
    # cpu=True lets torchrun / `accelerate launch` start multi-process CPU (gloo) runs: same code path.
    return Accelerator(cpu=not gpu, mixed_precision="bf16" if gpu else "no")


def prepare_vae(recipe: Recipe, run_dir: Path, accelerator: Accelerator):
    """The recipe's VAE: ``vae_path`` if given, else trained into ``<run>/vae`` (a cut VAE run resumes; a
    finished one, marked by its ``metrics.json``, is reused)."""
    from dreamlite.models.vae import load_vae
    from dreamlite.train.vae import METRICS, TRAIN_STATE, VAETrainConfig, train_vae
    if recipe.vae_path:
        return load_vae(recipe.vae_path)
    vae_dir = run_dir / "vae"
    if not (vae_dir / METRICS).is_file():
        if accelerator.is_main_process:
            if recipe.vae.image_size != recipe.corpus.image_size:
                raise ValueError(f"recipe VAE image_size {recipe.vae.image_size} differs from the corpus "
                                 f"image_size {recipe.corpus.image_size}")
            cfg = VAETrainConfig(steps=recipe.vae_steps, size=recipe.corpus.image_size, seed=recipe.seed)
            train_vae(vae_dir, cfg, recipe.vae, resume=(vae_dir / TRAIN_STATE).is_file())
        accelerator.wait_for_everyone()
    return load_vae(vae_dir)


def prepare_corpus(recipe: Recipe, run_dir: Path, accelerator: Accelerator, vae, encoder) -> dict[str, Pool]:
    """Build (main process) or load the pools this recipe's stages draw from."""
    c = recipe.corpus
    pooled = [s for s in recipe.stages if s.kind != "rl"]  # RL draws prompts, not data
    need = {("t2i", s.mix.pool) for s in pooled if s.mix.t2i > 0} | \
           {("edit", s.mix.pool) for s in pooled if s.mix.edit > 0}
    folder = run_dir / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    pools = {}
    for i, (kind, pool_name) in enumerate(sorted(need)):
        key = kind if pool_name == "main" else f"{kind}_{pool_name}"
        path = folder / f"{key}.safetensors"
        if not path.is_file() and accelerator.is_main_process:
            n = (c.n_t2i if kind == "t2i" else c.n_edit) if pool_name == "main" else c.n_sft
            weights = SFT_TAG_WEIGHTS if (pool_name == "sft" and kind == "t2i") else None
            twins = kind == "t2i" and any(s.twin_weight > 0 and s.twin_tags and s.mix.pool == pool_name for s in pooled)
            ground = kind == "t2i" and any(s.ground_weight > 0 and s.mix.pool == pool_name for s in pooled)
            save_pool(build_pool(kind, n, c.seed + 7919 * i, c.image_size, vae, encoder, tag_weights=weights,
                                 twins=twins, ground=ground), path)
        accelerator.wait_for_everyone()
        pools[key] = load_pool(path)
    return pools


# SFT draws a curated pool: the compositions a small model finds hardest (calibration notes in shared/README.md:
# position and colour binding lag), plus clean single objects so nothing is forgotten.
SFT_TAG_WEIGHTS = {"position": 3.0, "color_attr": 3.0, "counting": 2.0, "two_object": 1.0, "colors": 1.0,
                   "single_object": 0.5}


def recipe_text_encoder(recipe: Recipe):
    """The frozen text encoder a recipe names (its ``text_encoder`` type at ``text_layer``)."""
    from dreamlite.models.text import TextEncoderSpec, load_text_encoder

    return load_text_encoder(TextEncoderSpec(type=recipe.text_encoder, layer=recipe.text_layer))


def build_unet(recipe: Recipe, vae) -> MobileUNet:
    channels = vae.config.latent_channels
    return MobileUNet(**preset_config(recipe.preset, **{**recipe.unet_overrides, "in_channels": channels,
                                                        "out_channels": channels}))


def check_init_text_encoder(recipe: Recipe, folder: Path) -> None:
    """An RL or distillation stage that starts a recipe uses ``init_from`` as it is (the policy that samples the
    rollouts, the teacher), so it must read the text states that model was trained on: a different encoder or
    MiniLM layer would score a model on inputs it never saw. A flow-matching first stage may switch (it re-adapts
    the cross-attention, as shapes-tiny-v7 does), and a bare U-Net folder records no encoder, so both pass."""
    from dreamlite.pipeline import read_text_spec

    spec = read_text_spec(folder)
    if recipe.stages[0].kind == "flow" or spec is None:
        return
    theirs, mine = (spec.type, spec.layer), (recipe.text_encoder, recipe.text_layer)
    if theirs != mine:
        raise ValueError(f"init_from {folder}: its U-Net was trained on text encoder {theirs[0]!r} layer "
                         f"{theirs[1]}, but recipe {recipe.name!r} (first stage {recipe.stages[0].kind!r}) reads "
                         f"{mine[0]!r} layer {mine[1]}; set the recipe's text_encoder / text_layer to match")


# Config fields of zero-initialised embeddings (ours) -> the suffixes of their weights: switched on over a saved
# network without them, they start at zero, so the grown network computes what the saved one did.
ZERO_INIT_EMBEDS = {"position_embed": (".pos_proj.weight", ".pos_proj.bias"),
                    "text_position_embed": ("text_pos.weight",)}


def init_weights(unet: MobileUNet, folder: Path, grow_attention: bool = False, drop_pooled_text: bool = False) -> None:
    """Load a pipeline folder's (or a bare U-Net folder's) weights into ``unet`` for fine-tuning; the saved config
    must describe the same network, so a mismatch is an error naming the differing fields, not a partial load.

    With ``grow_attention``, ``unet`` may have transformers at levels where the saved network has ``"none"``
    (net2net-style growth): every other weight loads exactly and each new transformer starts as the identity
    (its ``proj_out`` is zero and it is residual), so the grown network's first output equals the old one's.
    With ``drop_pooled_text``, the saved network has the pooled text path and ``unet`` has not: those weights
    are left out (the one change that removes a path; the network then differs from its first output).
    A ``unet`` with ``position_embed`` or ``text_position_embed`` over a saved network without it keeps those
    zero-initialised weights (every other weight loads exactly), so it too starts as the saved network's function."""
    from dreamlite.pipeline import load_unet, public_config

    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"init_from {folder}: no unet/config.json (expected a model folder such as "
                                f"runs/<recipe>/model)")
    base = load_unet(unet_dir)  # the pipeline's loader: float16 storage and official folders included
    mine, theirs = public_config(unet.config), public_config(base.config)
    if drop_pooled_text:
        if not (theirs.get("pooled_text_embed") and not mine.get("pooled_text_embed")):
            raise ValueError(f"init_from {folder}: drop_pooled_text needs a saved U-Net with pooled_text_embed "
                             "and a recipe U-Net without it")
        theirs["pooled_text_embed"] = False
    # zero-initialised embeddings a recipe may switch on over a saved network without them: field -> weight names
    grown_embeds = [f for f in ZERO_INIT_EMBEDS if not theirs.get(f, 0) and mine.get(f, 0) > 0]
    for f in grown_embeds:
        theirs[f] = mine[f]
    diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    grown = _grown_levels(mine, theirs) if grow_attention else None
    if diff and grown is None:
        hint = " (grow_attention only adds transformers where the saved network has 'none')" if grow_attention else ""
        raise ValueError(f"init_from {folder}: its U-Net differs from the recipe's in {diff}{hint}")
    state = {k: v.float() for k, v in base.state_dict().items()
             if not (drop_pooled_text and k.startswith("pooled_text_proj."))}
    prefixes = tuple(f"{name}.attentions." for name in grown or [])
    new_weights = tuple(w for f in grown_embeds for w in ZERO_INIT_EMBEDS[f])
    missing, unexpected = unet.load_state_dict(state, strict=not (diff or grown_embeds))
    stray = [k for k in missing if not (k.startswith(prefixes) or k.endswith(new_weights))]
    if unexpected or stray:
        raise ValueError(f"init_from {folder}: growing {grown or grown_embeds} left unmatched weights: "
                         f"missing {stray[:5]}, unexpected {unexpected[:5]}")
    if not diff:
        return
    with torch.no_grad():
        for name in grown:
            for transformer in unet.get_submodule(f"{name}.attentions"):
                transformer.proj_out.weight.zero_()
                transformer.proj_out.bias.zero_()


def _grown_levels(mine: dict, theirs: dict) -> list[str] | None:
    """Module names of the levels where ``mine`` adds a transformer over ``theirs`` (``"none"`` -> any mode), or
    None when the configs differ in anything else."""
    if {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)} - {"down_attention", "up_attention"}:
        return None
    grown = []
    for field_name, blocks in (("down_attention", "down_blocks"), ("up_attention", "up_blocks")):
        for i, (new, old) in enumerate(zip(mine[field_name], theirs[field_name])):
            if new != old:
                if old != "none":
                    return None
                grown.append(f"{blocks}.{i}")
    return grown


@dataclass
class Components:
    """Pre-built frozen parts (tests, or a caller that already has them): skips the VAE/corpus stages."""

    vae: Any
    encoder: Any
    pools: dict[str, Pool]
    save_model: bool = False  # also write <run>/model (needs a real VAE and text encoder)


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False, evaluate: bool = True,
               stop_after_steps: int | None = None, components: Components | None = None) -> Path:
    """Run (or continue) ``recipe`` in ``run_dir``; returns the final pipeline folder ``<run>/model``."""
    run_dir = Path(run_dir)
    accelerator = make_accelerator()
    ckpt = latest_checkpoint(run_dir) if resume else None
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (run_dir / "recipe.json").write_text(recipe.to_json())
    torch.manual_seed(recipe.seed)
    if components is None:
        vae = prepare_vae(recipe, run_dir, accelerator).to(accelerator.device)
        encoder = recipe_text_encoder(recipe).to(accelerator.device)
        pools = prepare_corpus(recipe, run_dir, accelerator, vae, encoder)
    else:
        vae, encoder, pools = components.vae, components.encoder, components.pools
    uncond = tuple(t.cpu() for t in encoder.encode([""], unconditional=True))
    unet = build_unet(recipe, vae)
    if recipe.init_from and ckpt is None:
        check_init_text_encoder(recipe, Path(recipe.init_from))
        init_weights(unet, Path(recipe.init_from), recipe.grow_attention, recipe.drop_pooled_text)
    ema = EMA(unet, recipe.stages[0].ema_decay)
    state = LoopState()
    if ckpt is not None:  # weights and EMA now; optimizer/schedule/RNG inside the stage that was cut
        unet.load_state_dict(load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors")))
        ema.shadow = load_file(str(ckpt / "ema.safetensors"))
        state = LoopState(**json.loads((ckpt / "state.json").read_text()))
    unet = accelerator.prepare(unet)
    ctx = StageContext(accelerator, unet, ema, vae, encoder, uncond, pools, recipe, run_dir)
    steps_left = stop_after_steps
    for index in range(state.stage_index, len(recipe.stages)):
        stage = recipe.stages[index]
        if state.stage_index != index:
            state = LoopState(stage_index=index, step=0, global_step=state.global_step)
        if state.step < stage.total_steps:
            result = run_stage(ctx, stage, state, resume_from=ckpt if state.step > 0 else None,
                               stop_after=steps_left)
            ckpt = None
            state = LoopState(**json.loads((latest_checkpoint(run_dir) / "state.json").read_text()))
            if state.step < stage.total_steps:
                return run_dir  # stopped early on request (tests, time limits); resume continues here
            if steps_left is not None:
                steps_left -= len(result.losses)
            if accelerator.is_main_process:
                _log_stage(run_dir, stage.name, result.seconds, result.samples_per_s)
        if evaluate and accelerator.is_main_process and not _stage_evaluated(run_dir, stage.name):
            from dreamlite.train.evaluate import evaluate_stage
            evaluate_stage(run_dir, stage.name, _ema_unet(accelerator.unwrap_model(unet), ema), vae, encoder, recipe,
                           **_variant_kwargs(recipe, stage))
        accelerator.wait_for_everyone()
    model_dir = run_dir / "model"
    if (components is None or components.save_model) and accelerator.is_main_process and not model_dir.exists():
        _final_pipeline(run_dir, recipe, _ema_unet(accelerator.unwrap_model(unet), ema), vae, encoder).save_pretrained(
            model_dir, weights_dtype=getattr(torch, recipe.model_dtype))
    accelerator.wait_for_everyone()
    return model_dir


def run_stage(ctx: StageContext, stage: StageConfig, state: LoopState, resume_from: Path | None = None,
              stop_after: int | None = None) -> StageResult:
    """Run (or continue) one stage with the driver of its kind."""
    if stage.kind == "rl":
        from dreamlite.train.rl_stage import run_rl_stage
        return run_rl_stage(ctx, stage, state, resume_from, stop_after)
    if stage.kind == "distill":
        from dreamlite.train.distill_stage import run_distill_stage
        return run_distill_stage(ctx, stage, state, resume_from, stop_after)
    if stage.kind == "dmd":
        from dreamlite.train.dmd_stage import run_dmd_stage
        return run_dmd_stage(ctx, stage, state, resume_from, stop_after)
    make_sampler = partial(BatchSampler, ctx.pools, image_size=ctx.recipe.corpus.image_size,
                           mirror=prepare_mirror_set(ctx, stage))
    return train_stage(ctx.accelerator, ctx.unet, ctx.ema, make_sampler, stage, ctx.uncond, state, ctx.run_dir,
                       ctx.recipe.seed, ctx.recipe.checkpoint_every, resume_from=resume_from, stop_after=stop_after,
                       anchor=stage_anchor(ctx, stage))


def stage_anchor(ctx: StageContext, stage: StageConfig) -> Anchors | None:
    """The frozen models a stage with ``anchor_weight`` regresses its batch onto: the network as the stage starts
    (written once to ``<run>/stages/<stage>/anchor.safetensors``, so that a resumed stage keeps the same anchor),
    or with ``anchor_from`` that folder's U-Net, beside the start for ``anchor_start_tags``."""
    if stage.anchor_weight <= 0:
        return None
    model = ctx.accelerator.unwrap_model(ctx.unet)
    start = None
    if not stage.anchor_from or stage.anchor_start_tags:
        start = frozen_copy(model)
        start.load_state_dict(frozen_weights(ctx.run_dir, stage.name, "anchor", model, ctx.accelerator))
    if not stage.anchor_from:
        return Anchors(main=start)
    main = load_anchor(Path(stage.anchor_from), ctx.recipe, stage.name, model).to(ctx.accelerator.device)
    return Anchors(main=main, start=start if stage.anchor_start_tags else None)


def load_anchor(folder: Path, recipe: Recipe, stage: str, like: torch.nn.Module | None = None) -> torch.nn.Module:
    """A frozen float32 U-Net from a model folder (or a bare U-Net folder) to regress onto (anchors) or denoise
    with (a DMD teacher); it reads the recipe's text states, so a model trained on another encoder or MiniLM layer
    is an error, not a silent mismatch. With ``like`` (the trained network) its latent channels must match too:
    another VAE's latents have velocities that are not ours."""
    from dreamlite.pipeline import load_unet, read_text_spec

    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"stage {stage!r}: anchor_from {folder} has no unet/config.json")
    spec = read_text_spec(folder)
    if spec is not None and (spec.type, spec.layer) != (recipe.text_encoder, recipe.text_layer):
        raise ValueError(f"stage {stage!r}: anchor_from {folder} reads text encoder {spec.type!r} layer "
                         f"{spec.layer}, the recipe {recipe.text_encoder!r} layer {recipe.text_layer}")
    unet = frozen_copy(load_unet(unet_dir).float())
    if like is not None:
        theirs, mine = ((m.config.in_channels, m.config.out_channels) for m in (unet, like))
        if theirs != mine:
            raise ValueError(f"stage {stage!r}: {folder} has (in, out) channels {theirs}, the network {mine}")
    return unet


def prepare_mirror_set(ctx: StageContext, stage: StageConfig):
    """The stage's mirror pairs (``train.mirror``), rolled out by the model as the stage starts and saved in
    ``<run>/corpus/mirror-<stage>.safetensors`` (main process), so a resumed stage draws the same pairs; None when
    the stage has none."""
    if stage.mirror is None:
        return None
    from dreamlite.sampling import Guidance
    from dreamlite.train.mirror import build_mirror_set, load_mirror_set, save_mirror_set

    path = ctx.run_dir / "corpus" / f"mirror-{stage.name}.safetensors"
    if not path.is_file() and ctx.accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        m = stage.mirror
        mirror = build_mirror_set(ctx, m.rollouts, m.seed, m.sample_steps, Guidance(m.guidance_scale, 1.0))
        save_mirror_set(mirror, path)
        with open(ctx.run_dir / "mirror.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage.name, **mirror.stats}) + "\n")
    ctx.accelerator.wait_for_everyone()
    return load_mirror_set(path)


def _variant_kwargs(recipe: Recipe, stage: StageConfig) -> dict[str, Any]:
    """After a distill stage, evaluate the mobile variant (its steps, no guidance)."""
    if stage.kind != "distill":
        return {}
    from dreamlite.train.distill_stage import mobile_variants
    return {"variants": mobile_variants(recipe, stage.distill), "default_variant": "mobile"}


def _final_pipeline(run_dir: Path, recipe: Recipe, unet: MobileUNet, vae, encoder):
    last = recipe.stages[-1]
    if last.kind == "distill":
        from dreamlite.train.distill_stage import distilled_pipeline
        return distilled_pipeline(run_dir, recipe, last, unet, vae, encoder)
    from dreamlite.train.evaluate import make_pipeline
    return make_pipeline(unet, vae, encoder, recipe)


def _ema_unet(unet: MobileUNet, ema: EMA) -> MobileUNet:
    copy = MobileUNet.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    ema.copy_to(copy)
    return copy.eval()


def _log_stage(run_dir: Path, name: str, seconds: float, samples_per_s: float) -> None:
    with open(run_dir / "timing.jsonl", "a") as f:
        f.write(json.dumps({"stage": name, "seconds": round(seconds, 1), "samples_per_s": round(samples_per_s, 1),
                            "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


def _stage_evaluated(run_dir: Path, name: str) -> bool:
    path = run_dir / "scores.jsonl"
    return path.is_file() and any(json.loads(line)["stage"] == name for line in path.read_text().splitlines())
