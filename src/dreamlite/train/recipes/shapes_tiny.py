"""shapes-tiny: the paper's task-progressive recipe (Sec. 3.3) at Shapes-world scale, on a 2-core CPU.

Stage 1 learns text-to-image alone, stage 2 learns editing on top of it, stage 3 trains both jointly so
neither is forgotten, stage 4 is SFT on a curated pool (the hardest compositions, lower LR). Numbers were chosen
from measured throughput (BENCHMARKS.md): the whole recipe, VAE included, fits in ~2 hours on 2 cores.
Also here: ``shapes-tiny-v0`` (the first recipe, where the chain of rounds to the shipped model starts), its
post-training stages (``shapes-tiny-post``: RL, then distillation to 4 steps), the CI-sized versions of both, and the
paper's ablation arms. The rounds that took a ``shapes-tiny-v0`` run to the shipped model live in
``shapes_tiny_rounds`` and ``shapes_tiny_consolidation``.
"""

from dreamlite.models.vae import VAEConfig
from dreamlite.sampling import Guidance
from dreamlite.train.config import (CorpusConfig, DataMix, DistillStageConfig, EvalConfig, Recipe,
                                    RLStageConfig, StageConfig)
from dreamlite.train.rl import NFTConfig

T2I = DataMix(t2i=1.0, edit=0.0)
EDIT = DataMix(t2i=0.0, edit=1.0)
JOINT = DataMix(t2i=0.5, edit=0.5)
SFT = DataMix(t2i=0.5, edit=0.5, pool="sft")

# Latent space, chosen by measurement (BENCHMARKS.md, "Choosing the Shapes latent space"): the tiny U-Net trains at
# ~140 samples/s on 8x16 packed latents and ~25 on 16x32 (batch 128, 2 threads), so 64x64 renders go through an
# 8x downsampling VAE. 16 latent channels (as SD3/FLUX) keep enough detail for 32 dB; the U-Net cost of the wider
# latent is only its first and last convolution (9.63M vs 9.61M parameters, same speed).
SHAPES_VAE = VAEConfig(image_size=64, downsample=8, latent_channels=16, encoder_width=32, decoder_width=32,
                       encoder_blocks=(0, 0, 1, 2), decoder_blocks=(3, 2, 1, 0))

# v0: the first recipe (2026-11-29), the start of the chain of rounds that grew the shipped model
# (shapes_tiny_rounds); `shapes-tiny` until session 26. Its network is the bare `tiny` preset (attention at the
# lowest level only, a pooled text vector, MiniLM's last layer) at a constant LR: 109 min from nothing, GenEval 0.25.
SHAPES_TINY_V0 = Recipe(
    name="shapes-tiny-v0",
    preset="tiny",
    stages=(
        StageConfig("t2i", T2I, steps=1800, lr=1e-3, batch_size=128, warmup_steps=100),
        StageConfig("edit", EDIT, steps=900, lr=1e-3, batch_size=128, warmup_steps=50),
        StageConfig("joint", JOINT, steps=1300, lr=6e-4, batch_size=128, warmup_steps=50),
        StageConfig("sft", SFT, steps=500, lr=2e-4, batch_size=128, warmup_steps=20),
    ),
    vae=SHAPES_VAE,
    vae_steps=9000,
    corpus=CorpusConfig(n_t2i=60_000, n_edit=60_000, n_sft=20_000, image_size=64),
    eval=EvalConfig(geneval_limit=120, imgedit_limit=80, steps=20),
    checkpoint_every=250,
    model_dtype="float16",  # the shipped folder stays under 20 MB; weights load back as float32
)

# The binding-weighted mix of the later rounds (v4 on; BENCHMARKS.md "v4"): every tag and edit type keeps a weight,
# and the ones a small model learns last (two named shapes, their colours, their places) are drawn most.
JOINT_BIND = DataMix(t2i=0.5, edit=0.5,
                     tag_weights={"color_attr": 3.0, "two_object": 2.5, "position": 2.0, "counting": 1.0,
                                  "colors": 0.5, "single_object": 0.5},
                     edit_weights={"add": 1.5, "replace": 1.5, "move": 2.0, "count": 2.0, "remove": 1.0,
                                   "alter": 1.0, "background": 0.5, "resize": 1.0})

# The shipped base's network (every base since the chain's mirror rounds has had it): self+cross attention also at
# the full-resolution up level (v2: the target half reads the source half and the words there, not only through the
# 2x2-per-half lowest level), no pooled text vector (v3: the words reach the network only through cross-attention),
# token-index embeddings (the mirror rounds: which noun comes first), MiniLM's layer 3 (v7: a linear probe reads the
# side a noun must take from it in 0.97 of cases, 0.77 from the last layer).
SHIPPED_UNET = dict(up_attention=("self+cross", "cross", "self+cross"), pooled_text_embed=False,
                    text_position_embed=32)

# shapes-tiny (session 26): the task-progressive recipe from nothing with what the chain of rounds measured, inside the
# 120-minute budget on 2 cores: the shipped network from the first step; batch 64 (measured as fast per sample as 128
# on this CPU, so twice the updates); short T2I and editing stages and a long joint one (at small budgets joint
# training beat the progressive order, BENCHMARKS.md "Ablation", so the paper's order is kept but its first two stages
# are short); the binding-weighted mix in the joint stage; the LR annealed by a cosine in the last two (v1: annealing
# is what made the network commit to objects); a 6,000-step VAE (two thirds of v0's; 34.7 dB against 35.7) to leave the
# U-Net the time; stage evaluations sampled as the shipped base (ancestral steps to generate, image guidance 2.5).
# Measured (BENCHMARKS.md "From nothing in two hours"): 109 min on 2 cores, GenEval 0.245, edits 0.312 / 0.846 -
# where v0 was, on 57 % of its samples (a slower machine); the targets need ~10x the compute.
SHAPES_TINY = Recipe(
    name="shapes-tiny",
    preset="tiny",
    stages=(
        StageConfig("t2i", T2I, steps=1000, lr=1e-3, batch_size=64, warmup_steps=100),
        StageConfig("edit", EDIT, steps=500, lr=1e-3, batch_size=64, warmup_steps=50),
        StageConfig("joint", JOINT_BIND, steps=3000, lr=8e-4, batch_size=64, warmup_steps=50, min_lr_ratio=0.1),
        StageConfig("sft", SFT, steps=600, lr=2e-4, batch_size=64, warmup_steps=20, min_lr_ratio=0.1),
    ),
    unet_overrides=SHIPPED_UNET,
    text_layer=3,
    vae=SHAPES_VAE,
    vae_steps=6000,
    corpus=CorpusConfig(n_t2i=80_000, n_edit=60_000, n_sft=15_000, image_size=64),
    eval=EvalConfig(geneval_limit=120, imgedit_limit=80, steps=20, guidance_scale=3.0, image_guidance_scale=2.5,
                    eta=1.0),
    checkpoint_every=250,
    model_dtype="float16",
)

# A minutes-long smoke run of the same code path (CI-sized numbers).
QUICK = Recipe(
    name="shapes-tiny-quick",
    preset="tiny",
    stages=(
        StageConfig("t2i", T2I, steps=6, lr=1e-3, batch_size=8, warmup_steps=2),
        StageConfig("edit", EDIT, steps=4, lr=1e-3, batch_size=8, warmup_steps=2),
        StageConfig("joint", JOINT, steps=4, lr=6e-4, batch_size=8, warmup_steps=2),
        StageConfig("sft", SFT, steps=2, lr=2e-4, batch_size=8, warmup_steps=1),
    ),
    unet_overrides=dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), cross_attention_dim=64,
                        time_embed_dim=64, size_embed_dim=8, norm_num_groups=16),
    vae=VAEConfig(image_size=32),
    vae_steps=5,
    corpus=CorpusConfig(n_t2i=64, n_edit=64, n_sft=32, image_size=32),
    eval=EvalConfig(geneval_limit=6, imgedit_limit=8, steps=2),
    checkpoint_every=3,
)

# Post-training on top of shapes-tiny-plus (issue 7): DiffusionNFT with the exact Shapes rewards, then progressive
# distillation to the 4-step, guidance-free mobile variant. RL weights the tags / edit types the base scores worst on;
# the rollouts sample as the base is evaluated (CFG 3 / 1.5) with 8 Euler steps; a KL guard to the frozen start and
# the watch (held-out and paraphrased prompts, image statistics, drift) keep an eye on reward hacking.
# Sizing (benchmarks/post_cost.py, measured on this 2-core machine while another training job held both cores at
# real-time priority, so in CPU seconds): one RL iteration (8 prompts x 8 rollouts, 8 steps, CFG) 35 s, one watch
# (4 sets of 24) 15 s, one distillation step at batch 64 4.7 s (guidance round) / <= 9.2 s (halving rounds). Under
# the same load a flow step at batch 128 took 8.95 CPU s against 0.91 s wall on an idle machine (BENCHMARKS.md),
# a ~9.8x inflation; counting only half of it (the detector is single-threaded) an iteration costs 3.6-7 s and a
# step of all four distillation rounds 3.3-6.5 s idle. RL: 400 iterations + 20 watches ~ 25-47 min; distill:
# 4 rounds x 400 steps ~ 22-43 min.
POST_RL_MIX = DataMix(t2i=0.5, edit=0.5,
                      tag_weights={"position": 2.0, "color_attr": 2.0, "counting": 1.5, "two_object": 1.5,
                                   "colors": 1.0, "single_object": 0.5},
                      edit_weights={"add": 1.5, "replace": 1.5, "move": 2.0, "count": 2.0, "remove": 1.0,
                                    "alter": 1.0, "background": 0.5, "resize": 1.0})
POST_RL = RLStageConfig(nft=NFTConfig(group_size=8, beta=1.0, adv_scale=1.0, kl_weight=0.05, old_decay=0.5,
                                      minibatch=16, guidance=Guidance(3.0, 1.5)),
                        prompts_per_iter=8, reward="shapes", partial_weight=0.2, sample_steps=8, watch_every=20,
                        watch_prompts=24, max_drift=1.0)  # healthy runs stayed under 0.4; v5's collapse passed 4
POST_DISTILL = DistillStageConfig(start_steps=32, final_steps=4, guidance_scale=3.0, image_guidance_scale=1.5)
RL_ITERATIONS, DISTILL_ROUND_STEPS = 400, 400
SHAPES_TINY_POST = Recipe(
    name="shapes-tiny-post",
    preset="tiny",
    stages=(
        StageConfig("rl", POST_RL_MIX, steps=RL_ITERATIONS, lr=3e-5, batch_size=64, warmup_steps=10, ema_decay=0.0,
                    kind="rl", rl=POST_RL),
        StageConfig("distill", JOINT, steps=DISTILL_ROUND_STEPS, lr=1e-4, batch_size=64, warmup_steps=20,
                    min_lr_ratio=0.1, ema_decay=0.0, kind="distill", distill=POST_DISTILL),
    ),
    init_from="runs/shapes-tiny-plus/model",
    vae_path="runs/shapes-tiny-v0/vae",  # shapes-tiny-plus reused this VAE and has none of its own
    vae=SHAPES_VAE,
    corpus=CorpusConfig(n_t2i=10_000, n_edit=10_000, n_sft=0, image_size=64),  # distillation's data latents only
    eval=SHAPES_TINY_V0.eval,
    checkpoint_every=20,
    model_dtype="float16",
)

# CI-sized: the same stage kinds and real rewards, a tiny random network, 2 RL iterations and 2 distill rounds.
POST_QUICK = Recipe(
    name="shapes-tiny-post-quick",
    preset="tiny",
    stages=(
        StageConfig("rl", DataMix(0.5, 0.5), steps=2, lr=1e-4, batch_size=4, warmup_steps=1, ema_decay=0.0,
                    kind="rl", rl=RLStageConfig(nft=NFTConfig(group_size=2, minibatch=4, guidance=Guidance(2.0, 1.5)),
                                                prompts_per_iter=2, sample_steps=2, watch_every=2, watch_prompts=2)),
        StageConfig("distill", JOINT, steps=1, lr=1e-4, batch_size=4, warmup_steps=1, ema_decay=0.0, kind="distill",
                    distill=DistillStageConfig(start_steps=4, final_steps=2, guidance_scale=2.0)),
    ),
    unet_overrides=QUICK.unet_overrides,
    vae=QUICK.vae,
    vae_steps=QUICK.vae_steps,
    corpus=QUICK.corpus,
    eval=EvalConfig(geneval_limit=6, imgedit_limit=8, steps=4),
    checkpoint_every=1,
)

RECIPES = {"shapes-tiny": SHAPES_TINY, "shapes-tiny-v0": SHAPES_TINY_V0, "shapes-tiny-quick": QUICK,
           "shapes-tiny-post": SHAPES_TINY_POST, "shapes-tiny-post-quick": POST_QUICK}


def ablation(arm: str, total_steps: int = 1500, batch_size: int = 128) -> Recipe:
    """The ablation the paper rests on (Sec. 4.4), at equal total steps on the same corpus:
    ``progressive`` (T2I -> edit -> joint), ``joint`` (both from scratch), ``t2i`` / ``edit`` (separate models)."""
    s = total_steps
    stages = {
        "progressive": (StageConfig("t2i", T2I, steps=int(0.4 * s), lr=1e-3, batch_size=batch_size, warmup_steps=50),
                        StageConfig("edit", EDIT, steps=int(0.2 * s), lr=1e-3, batch_size=batch_size, warmup_steps=20),
                        StageConfig("joint", JOINT, steps=s - int(0.4 * s) - int(0.2 * s), lr=6e-4,
                                    batch_size=batch_size, warmup_steps=20)),
        "joint": (StageConfig("joint", JOINT, steps=s, lr=1e-3, batch_size=batch_size, warmup_steps=50),),
        "t2i": (StageConfig("t2i", T2I, steps=s, lr=1e-3, batch_size=batch_size, warmup_steps=50),),
        "edit": (StageConfig("edit", EDIT, steps=s, lr=1e-3, batch_size=batch_size, warmup_steps=50),),
    }[arm]
    return Recipe(name=f"ablation-{arm}", preset="tiny", stages=stages, vae=SHAPES_TINY_V0.vae,
                  corpus=SHAPES_TINY_V0.corpus, eval=SHAPES_TINY_V0.eval, checkpoint_every=500)


RECIPES.update({f"ablation-{arm}": ablation(arm) for arm in ("progressive", "joint", "t2i", "edit")})
