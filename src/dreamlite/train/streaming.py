"""Streaming real data into the shared training loop, and the runner for real-data recipes.

``StreamingSampler`` implements the ``draw()`` contract of ``dreamlite.train.loop.train_stage``: each batch is
one aspect bucket (so latents stack), images are decoded, fitted to the bucket and encoded *on the fly* with the
frozen VAE and text encoder (in edit mode the source image goes to the text encoder too, so Qwen3-VL sees it),
``cond`` is zeros for generation samples and the source latents for edits, ``time_ids`` = (bucket width, height).

How a batch is drawn (all randomness from the loop's checkpointed generator):
1. a bucket ``b`` with probability ``sum_task w_task * sum_source w_source * share_source(b)``, so every sample
   is about equally likely whatever its aspect ratio (the stage's ``DataMix`` gives the task weights;
   ``tag_weights`` / ``edit_weights``, when given, weight sources *by name*, 0 for unnamed ones);
2. the slots split between tasks as ``BatchSampler`` does (``round(B * edit share)`` edits); a task with no
   sample in ``b`` gives its slots to the other;
3. each slot picks a source (weight x share in ``b``) and a sample of that source in ``b``. An image that fails
   to decode is skipped with a counted warning and replaced by another draw from the same bucket.

Resume: folder and hf sources are indexed, so a resumed stage draws exactly the batches the uninterrupted run
would have. WebDataset shards are sequential streams: each stage's sampler draws a shard order (per epoch), a
shuffle buffer and per-bucket queues from the generator, but the stream position is not checkpointed - a resumed
run starts a fresh, deterministic stream (same data distribution, different order). Shards are split between
ranks when there are at least as many shards as ranks.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor

from dreamlite.data.buckets import (Bucket, bucket_index, bucket_indices, check_multiple, fit_to_bucket, make_buckets,
                                    required_multiple)
from dreamlite.data.sources import DataConfig, ImageRef, IndexedSource, RawSample, ShardSource, SkipLog, open_source
from dreamlite.flow import sample_t_logit_normal
from dreamlite.imageio import ImageError, pil_to_tensor
from dreamlite.train.config import Recipe, StageConfig
from dreamlite.train.corpus import pad_text

_MAX_REPLACEMENTS = 20  # rounds of re-drawing undecodable samples before giving up on a batch


# ------------------------------------------------------------------------------------------------ opened data
@dataclass
class RealData:
    """A ``DataConfig`` opened once per run: sources indexed, indexed samples grouped by bucket."""

    config: DataConfig
    buckets: tuple[Bucket, ...]
    sources: list[IndexedSource | ShardSource]
    members: list[list[Tensor] | None]  # per source: per bucket the sample indices (None for streams)

    @classmethod
    def open(cls, config: DataConfig, buckets: Sequence[Bucket] | None = None) -> "RealData":
        if buckets is None:
            buckets = make_buckets(config.buckets, config.bucket_scale or 1.0, config.bucket_multiple or 16)
        buckets = tuple(buckets)
        sources = [open_source(s) for s in config.sources]
        members: list[list[Tensor] | None] = []
        for src in sources:
            if isinstance(src, IndexedSource):
                which = bucket_indices(src.sizes, buckets)
                members.append([torch.nonzero(which == k).flatten() for k in range(len(buckets))])
            else:
                members.append(None)
        return cls(config, buckets, sources, members)


# ------------------------------------------------------------------------------------------------ per source
class _IndexedDraw:
    """Draws samples of one bucket from an indexed source (stateless: exact on resume)."""

    def __init__(self, source: IndexedSource, members: list[Tensor]):
        self.source, self.members = source, members
        counts = torch.tensor([float(len(m)) for m in members])
        self._share = counts / counts.sum()

    def share(self) -> Tensor:
        return self._share

    def take(self, bucket: int, g: torch.Generator) -> RawSample:
        m = self.members[bucket]
        return self.source.get(int(m[int(torch.randint(len(m), (1,), generator=g))]))


class _StreamDraw:
    """A WebDataset stream: shuffled shard order per epoch, a shuffle buffer, and one queue per bucket. The
    bucket shares are estimated from the samples read so far (the buffer is filled up front)."""

    def __init__(self, source: ShardSource, buckets: Sequence[Bucket], g: torch.Generator, rank: int,
                 world_size: int, queue_cap: int):
        self.source, self.buckets, self.g = source, buckets, g
        self.urls = source.shards_for(rank, world_size)
        self.queues: list[deque[RawSample]] = [deque(maxlen=queue_cap) for _ in buckets]
        self.seen = torch.zeros(len(buckets))
        self.buffer: list[tuple[RawSample, int]] = []
        self.stream = self._epochs()
        self._fill()

    def _epochs(self) -> Iterator[tuple[RawSample, tuple[int, int]]]:
        while True:
            order = torch.randperm(len(self.urls), generator=self.g).tolist()
            empty = True
            for item in self.source.samples([self.urls[i] for i in order]):
                empty = False
                yield item
            if empty:
                raise ValueError(f"webdataset source {self.source.config.name!r} yielded no usable sample from "
                                 f"{len(self.urls)} shard(s) ({self.source.skips.count} skipped)")

    def _fill(self) -> None:
        while len(self.buffer) < self.source.config.shuffle_buffer:
            sample, (w, h) = next(self.stream)
            k = bucket_index(w, h, self.buckets)
            self.seen[k] += 1
            self.buffer.append((sample, k))

    def share(self) -> Tensor:
        return self.seen / self.seen.sum()

    def _pull(self) -> None:
        """Move one random buffered sample to its bucket's queue, refilling the buffer from the stream."""
        i = int(torch.randint(len(self.buffer), (1,), generator=self.g))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        sample, k = self.buffer.pop()
        self.queues[k].append(sample)
        self._fill()

    def take(self, bucket: int, g: torch.Generator) -> RawSample:
        reads = 0
        limit = 100 * (self.source.config.shuffle_buffer + 100)
        while not self.queues[bucket]:
            self._pull()
            reads += 1
            if reads > limit:
                raise RuntimeError(f"webdataset source {self.source.config.name!r}: no sample of bucket "
                                   f"{self.buckets[bucket]} in {reads} reads")
        return self.queues[bucket].popleft()


class _TaskDraw:
    """The weighted sources of one task (t2i or edit)."""

    def __init__(self, draws: list[_IndexedDraw | _StreamDraw], weights: list[float], logs: list[SkipLog]):
        self.draws, self.logs = draws, logs
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()

    def share(self) -> Tensor:
        """[K]: this task's probability of each bucket."""
        return sum(w * d.share().double() for w, d in zip(self.weights, self.draws))  # type: ignore[return-value]

    def take(self, bucket: int, n: int, g: torch.Generator) -> list[tuple[RawSample, SkipLog]]:
        p = torch.stack([w * d.share()[bucket].double() for w, d in zip(self.weights, self.draws)])
        which = torch.multinomial(p.float(), n, replacement=True, generator=g).tolist()
        return [(self.draws[s].take(bucket, g), self.logs[s]) for s in which]


# ------------------------------------------------------------------------------------------------ the sampler
@dataclass(frozen=True)
class _Decoded:
    sample: RawSample
    target: Image.Image
    source: Image.Image | None


class StreamingSampler:
    """``draw()`` -> a batch dict of CPU tensors for ``train_stage`` (see the module docstring)."""

    def __init__(self, source: RealData | DataConfig, stage: StageConfig, generator: torch.Generator, vae: Any,
                 text_encoder: Any, device: torch.device | str = "cpu", batch_size: int | None = None, *,
                 rank: int = 0, world_size: int = 1):
        self.data = source if isinstance(source, RealData) else RealData.open(source)
        self.stage, self.g = stage, generator
        self.vae, self.encoder, self.device = vae, text_encoder, torch.device(device)
        self.batch_size = batch_size or stage.batch_size
        mix = stage.mix
        self.tasks: dict[str, _TaskDraw] = {}
        for task, weight, by_name in (("t2i", mix.t2i, mix.tag_weights), ("edit", mix.edit, mix.edit_weights)):
            if weight > 0:
                self.tasks[task] = self._task_draw(task, by_name, rank, world_size)
        if not self.tasks:
            raise ValueError(f"stage {stage.name!r} draws from no task (mix {mix})")
        total = sum(mix.t2i if t == "t2i" else mix.edit for t in self.tasks)
        self.task_weight = {t: (mix.t2i if t == "t2i" else mix.edit) / total for t in self.tasks}
        self.pool = ThreadPoolExecutor(self.data.config.decode_workers) if self.data.config.decode_workers > 1 \
            else None

    def _task_draw(self, task: str, by_name: dict[str, float], rank: int, world_size: int) -> _TaskDraw:
        draws, weights, logs = [], [], []
        for src, members in zip(self.data.sources, self.data.members):
            c = src.config
            w = c.weight * (by_name.get(c.name, 0.0) if by_name else 1.0)
            if c.task != task or c.pool != self.stage.mix.pool or w <= 0:
                continue
            if members is None:
                draws.append(_StreamDraw(src, self.data.buckets, self.g, rank, world_size,  # type: ignore[arg-type]
                                         queue_cap=max(64, 4 * (self.batch_size or 1))))
            else:
                draws.append(_IndexedDraw(src, members))  # type: ignore[arg-type]
            weights.append(w)
            logs.append(src.skips)
        if not draws:
            names = [s.config.name for s in self.data.sources if s.config.task == task]
            raise ValueError(f"stage {self.stage.name!r} needs {task} data from pool {self.stage.mix.pool!r}, but "
                             f"no {task} source has that pool and a positive weight (sources: {names})")
        return _TaskDraw(draws, weights, logs)

    # -------------------------------------------------------------------------------------------- drawing
    def _choose_bucket(self) -> tuple[int, dict[str, int]]:
        shares = {t: d.share() for t, d in self.tasks.items()}
        mass = sum(self.task_weight[t] * shares[t] for t in self.tasks)
        b = int(torch.multinomial(mass.float(), 1, generator=self.g))  # type: ignore[union-attr]
        present = [t for t in self.tasks if shares[t][b] > 0]
        B = self.batch_size
        if len(present) == 1:
            return b, {present[0]: B}
        n_edit = round(B * self.task_weight["edit"])
        return b, {"t2i": B - n_edit, "edit": n_edit}

    def _decode(self, item: tuple[RawSample, SkipLog], bucket: Bucket) -> _Decoded | ImageError:
        sample = item[0]
        try:
            target = fit_to_bucket(sample.target.load(), bucket)
            source = fit_to_bucket(sample.source.load(), bucket) if sample.source is not None else None
        except ImageError as e:
            return e
        return _Decoded(sample, target, source)

    def _materialise(self, task: str, b: int, n: int) -> list[_Decoded]:
        """n decoded samples of bucket b; undecodable ones are logged and re-drawn."""
        out: list[_Decoded] = []
        bucket = self.data.buckets[b]
        for _ in range(_MAX_REPLACEMENTS):
            if len(out) == n:
                return out
            picks = self.tasks[task].take(b, n - len(out), self.g)
            fn = lambda item: self._decode(item, bucket)  # noqa: E731
            results = list(self.pool.map(fn, picks)) if self.pool is not None else [fn(p) for p in picks]
            for (sample, log), r in zip(picks, results):
                if isinstance(r, ImageError):
                    log.skip(sample.key, str(r))
                else:
                    out.append(r)
        if len(out) < n:
            raise RuntimeError(f"stage {self.stage.name!r}: could not decode {n} {task} samples of bucket "
                               f"{bucket} after {_MAX_REPLACEMENTS} rounds of replacements")
        return out

    @torch.no_grad()
    def _encode_images(self, images: list[Image.Image], bucket: Bucket) -> Tensor:
        from dreamlite.models.vae import encode
        x = pil_to_tensor(images, bucket[0], bucket[1])  # already bucket-sized: no resampling here
        vae_dtype = next(self.vae.parameters()).dtype
        return encode(self.vae, x.to(self.device, vae_dtype)).float().cpu()

    def _part(self, task: str, items: list[_Decoded], bucket: Bucket) -> dict[str, Tensor]:
        x0 = self._encode_images([d.target for d in items], bucket)
        texts = [d.sample.text for d in items]
        if task == "edit":
            sources = [d.source for d in items]
            cond = self._encode_images(sources, bucket)  # type: ignore[arg-type]
            text, mask = self.encoder.encode(texts, images=sources, task="edit")
        else:
            cond = torch.zeros_like(x0)
            text, mask = self.encoder.encode(texts, task="generate")
        return dict(x0=x0, cond=cond, text=text.float().cpu(), mask=mask.long().cpu(),
                    is_edit=torch.full((len(items),), task == "edit"))

    def draw(self) -> dict[str, Tensor]:
        b, counts = self._choose_bucket()
        bucket = self.data.buckets[b]
        decoded = {t: self._materialise(t, b, n) for t, n in counts.items() if n > 0}
        parts = [self._part(t, items, bucket) for t, items in decoded.items()]
        L = max(p["text"].shape[1] for p in parts)
        for p in parts:
            p["text"], p["mask"] = pad_text(p["text"], p["mask"], L)
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        B = batch["x0"].shape[0]
        batch["time_ids"] = torch.tensor([[float(bucket[0]), float(bucket[1])]] * B)
        batch["t"] = sample_t_logit_normal(B, self.stage.t_mean, self.stage.t_std, generator=self.g)
        batch["noise"] = torch.randn(batch["x0"].shape, generator=self.g)
        return batch


# ------------------------------------------------------------------------------------------------ the runner
@dataclass(frozen=True)
class RealComponents:
    """Pre-built frozen parts (tests, or a caller that already holds them)."""

    vae: Any
    encoder: Any


def resolve_text_encoder(recipe: Recipe, value: str | None) -> Any:
    """The text encoder for a run: ``value`` (CLI ``--text-encoder``), else ``$DREAMLITE_TEXT_ENCODER``, else the
    recipe's. A folder means a local Qwen3-VL (bf16 on GPU); a ``.json`` file holds a full spec; ``minilm`` works."""
    from dreamlite.models.text import TextEncoderSpec, load_text_encoder

    value = value or os.environ.get("DREAMLITE_TEXT_ENCODER") or recipe.text_encoder
    if value == "qwen3vl":
        raise ValueError(f"recipe {recipe.name!r} uses the Qwen3-VL text encoder: pass --text-encoder PATH "
                         "(a local Qwen3-VL folder or a spec .json) or set DREAMLITE_TEXT_ENCODER")
    if value.endswith(".json"):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"text encoder spec not found: {path}")
        return load_text_encoder(TextEncoderSpec.parse(json.loads(path.read_text())))
    if value in ("minilm",):
        return load_text_encoder(TextEncoderSpec(type="minilm", layer=recipe.text_layer))
    if not Path(value).is_dir():
        raise FileNotFoundError(f"text encoder folder not found: {value}")
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    return load_text_encoder(TextEncoderSpec(type="qwen3vl", path=value, dtype=dtype))


def resolve_vae(recipe: Recipe, value: str | None) -> Any:
    """``value`` (CLI ``--vae``), else ``$DREAMLITE_VAE``, else ``recipe.vae_path``: an AutoencoderTiny folder."""
    from dreamlite.models.vae import load_vae

    value = value or os.environ.get("DREAMLITE_VAE") or recipe.vae_path
    if not value:
        raise ValueError(f"recipe {recipe.name!r} trains on real data and needs a VAE: pass --vae PATH "
                         "(a TAESDXL-style AutoencoderTiny folder) or set DREAMLITE_VAE")
    return load_vae(value)


def open_real_data(recipe: Recipe, data_config: DataConfig | str | Path, multiple: int) -> RealData:
    config = data_config if isinstance(data_config, DataConfig) else DataConfig.from_json(data_config)
    scale = config.bucket_scale if config.bucket_scale is not None else recipe.corpus.image_size / 1024
    buckets = make_buckets(config.buckets, scale, config.bucket_multiple or multiple)
    check_multiple(buckets, multiple)
    return RealData.open(config, buckets)


def run_real_recipe(recipe: Recipe, data_config: DataConfig | str | Path, run_dir: str | Path,
                    resume: bool = False, *, text_encoder: str | None = None, vae: str | None = None,
                    stop_after_steps: int | None = None, components: RealComponents | None = None) -> Path:
    """Run (or continue) ``recipe`` on real data; returns ``<run>/model`` (written when every stage is done and
    the encoder has a portable spec).

    Uses the shared ``train_stage`` and the accelerate path of ``make_accelerator`` (bf16 on GPU): DDP or FSDP
    come from ``accelerate launch --config_file`` (example: ``configs/accelerate_fsdp.yaml``).
    """
    from dreamlite.train.loop import latest_checkpoint
    from dreamlite.train.recipe import build_unet, make_accelerator

    run_dir = Path(run_dir)
    accelerator = make_accelerator()
    ckpt = latest_checkpoint(run_dir) if resume else None
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new folder")
    if components is None:
        components = RealComponents(resolve_vae(recipe, vae), resolve_text_encoder(recipe, text_encoder))
    frozen_vae = components.vae.to(accelerator.device).eval().requires_grad_(False)
    encoder = components.encoder.to(accelerator.device)
    torch.manual_seed(recipe.seed)
    unet = build_unet(recipe, frozen_vae)
    if encoder.hidden_size != unet.config.text_embed_dim:  # fail before indexing the data, not at step 1
        raise ValueError(f"text encoder width {encoder.hidden_size} does not match the U-Net's text_embed_dim "
                         f"{unet.config.text_embed_dim} (recipe {recipe.name!r}: set unet_overrides.text_embed_dim)")
    data = open_real_data(recipe, data_config, required_multiple(frozen_vae, unet))
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (run_dir / "recipe.json").write_text(recipe.to_json())
        (run_dir / "data.json").write_text(data.config.to_json())
    uncond = tuple(t.cpu() for t in encoder.encode([""], unconditional=True))

    def make_sampler(stage: StageConfig, generator: torch.Generator) -> StreamingSampler:
        return StreamingSampler(data, stage, generator, frozen_vae, encoder, accelerator.device, stage.batch_size,
                                rank=accelerator.process_index, world_size=accelerator.num_processes)

    finished = _run_stages(accelerator, recipe, unet, make_sampler, uncond, run_dir, ckpt, stop_after_steps)
    model_dir = run_dir / "model"
    # The model folder references its encoder by spec; an encoder built in memory (tests) has none to write.
    if finished is not None and accelerator.is_main_process and not model_dir.exists() and _saveable(encoder):
        _save_model(accelerator, unet, finished, frozen_vae, encoder, recipe, model_dir)
    accelerator.wait_for_everyone()
    return model_dir


def _saveable(encoder: Any) -> bool:
    try:
        spec = encoder.spec
    except (AttributeError, ValueError, TypeError):  # a Qwen3-VL built from parts in memory has no path
        return False
    return spec.type == "minilm" or bool(spec.path)


def _save_model(accelerator, unet, ema, vae, encoder, recipe: Recipe, model_dir: Path) -> None:
    from dreamlite.train.evaluate import make_pipeline
    from dreamlite.train.recipe import _ema_unet

    make_pipeline(_ema_unet(accelerator.unwrap_model(unet), ema), vae, encoder, recipe).save_pretrained(model_dir)


def _run_stages(accelerator, recipe: Recipe, unet, make_sampler, uncond, run_dir: Path, ckpt: Path | None,
                stop_after_steps: int | None):
    """Sequence the stages through ``train_stage``; returns the EMA when every stage is done, else None."""
    from safetensors.torch import load_file

    from dreamlite.train.loop import EMA, LoopState, latest_checkpoint, train_stage
    from dreamlite.train.recipe import _log_stage

    other = [f"{s.name} ({s.kind})" for s in recipe.stages if s.kind != "flow"]
    if other:  # rl / distill need Shapes rewards or corpus pools: run them with dreamlite.train.recipe.run_recipe
        raise ValueError(f"real-data runs train flow stages only; recipe {recipe.name!r} has {', '.join(other)}")
    twins = [s.name for s in recipe.stages if s.twin_weight > 0]
    if twins:  # role-swapped twins are written from the Shapes vocabulary (dreamlite.shapes.language.role_swap)
        raise ValueError(f"the twin contrast needs Shapes prompts; real-data recipe {recipe.name!r} sets twin_weight "
                         f"in stage(s) {', '.join(twins)}")
    ema = EMA(unet, recipe.stages[0].ema_decay)
    state = LoopState()
    if ckpt is not None:  # weights and EMA now; optimizer/schedule/RNG inside the stage that was cut
        unet.load_state_dict(load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors")))
        ema.shadow = load_file(str(ckpt / "ema.safetensors"))
        state = LoopState(**json.loads((ckpt / "state.json").read_text()))
    unet = accelerator.prepare(unet)
    steps_left = stop_after_steps
    for index in range(state.stage_index, len(recipe.stages)):
        stage = recipe.stages[index]
        if state.stage_index != index:
            state = LoopState(stage_index=index, step=0, global_step=state.global_step)
        if state.step >= stage.steps:
            continue
        if steps_left is not None and steps_left <= 0:
            return None
        result = train_stage(accelerator, unet, ema, make_sampler, stage, uncond, state, run_dir, recipe.seed,
                             recipe.checkpoint_every, resume_from=ckpt if state.step > 0 else None,
                             stop_after=steps_left)
        ckpt = None
        state = LoopState(**json.loads((latest_checkpoint(run_dir) / "state.json").read_text()))
        if state.step < stage.steps:
            return None  # stopped early on request; resume continues here
        if steps_left is not None:
            steps_left -= len(result.losses)
        if accelerator.is_main_process:
            _log_stage(run_dir, stage.name, result.seconds, result.samples_per_s)
    return ema
