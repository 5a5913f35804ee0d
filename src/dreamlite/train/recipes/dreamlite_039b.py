"""dreamlite-0.39b: the paper's network and task-progressive schedule (Sec. 3.3) on real data.

The 0.39B pruned mobile U-Net with the Qwen3-VL text encoder (2048-d states), trained with flow matching on the
in-context canvas at ~1024-px aspect buckets (``corpus.image_size`` = 1024 selects bucket scale 1: the official
V54/V765 pairs as listed; PIPELINE.md §8). Stages: T2I -> edit (on top of T2I) -> joint (both, so neither is
forgotten) -> SFT on a curated pool at a low LR. AdamW, grad-norm clip 1.0, lr 1e-4 with warm-up, EMA, bf16
autocast via accelerate on GPU. ``batch_size`` is per process: 8 GPUs x 16 = 128 samples per step.

The data comes from a JSON ``DataConfig`` (``dreamlite.data.sources``); sources tagged ``"pool": "sft"`` feed the
SFT stage. Weights are never downloaded: the text encoder and the VAE (a TAESDXL-style ``AutoencoderTiny``)
are local folders given at run time::

    dreamlite train real --recipe dreamlite-0.39b --data data.json --out runs/d039 \\
        --text-encoder /models/Qwen3-VL-2B-Instruct --vae /models/taesdxl
    accelerate launch --config_file configs/accelerate_fsdp.yaml -m dreamlite.cli train real ...  # N GPUs

``corpus`` counts, ``vae_steps`` and the Shapes evaluation do not apply to real data (the runner is
``dreamlite.train.streaming.run_real_recipe``, re-exported here).
"""

from dreamlite.train.config import CorpusConfig, DataMix, EvalConfig, Recipe, StageConfig
from dreamlite.train.streaming import run_real_recipe  # noqa: F401  (the runner for this recipe)

T2I = DataMix(t2i=1.0, edit=0.0)
EDIT = DataMix(t2i=0.0, edit=1.0)
JOINT = DataMix(t2i=0.5, edit=0.5)
SFT = DataMix(t2i=0.5, edit=0.5, pool="sft")
_COMMON = dict(weight_decay=0.01, ema_decay=0.9999, grad_clip=1.0, p_drop_text=0.1, p_drop_image=0.05)

DREAMLITE_039B = Recipe(
    name="dreamlite-0.39b",
    preset="dreamlite-0.39b",
    stages=(
        StageConfig("t2i", T2I, steps=100_000, lr=1e-4, batch_size=16, warmup_steps=1000, **_COMMON),
        StageConfig("edit", EDIT, steps=50_000, lr=1e-4, batch_size=16, warmup_steps=500, **_COMMON),
        StageConfig("joint", JOINT, steps=50_000, lr=5e-5, batch_size=16, warmup_steps=500, **_COMMON),
        StageConfig("sft", SFT, steps=10_000, lr=2e-5, batch_size=16, warmup_steps=200, **_COMMON),
    ),
    text_encoder="qwen3vl",  # the path comes from --text-encoder / $DREAMLITE_TEXT_ENCODER
    vae_path=None,  # from --vae / $DREAMLITE_VAE
    corpus=CorpusConfig(image_size=1024),
    eval=EvalConfig(steps=28, guidance_scale=3.5, image_guidance_scale=1.0),
    checkpoint_every=1000,
)

# The same network and code path for a few steps at ~256-px buckets: a GPU smoke test of a data config.
SMOKE = Recipe(
    name="dreamlite-0.39b-smoke",
    preset="dreamlite-0.39b",
    stages=tuple(StageConfig(s.name, s.mix, steps=2, lr=s.lr, batch_size=2, warmup_steps=1, **_COMMON)
                 for s in DREAMLITE_039B.stages),
    text_encoder="qwen3vl",
    corpus=CorpusConfig(image_size=256),
    eval=DREAMLITE_039B.eval,
    checkpoint_every=2,
)

RECIPES = {"dreamlite-0.39b": DREAMLITE_039B, "dreamlite-0.39b-smoke": SMOKE}
