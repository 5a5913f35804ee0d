"""The rounds that grew the shipped base after ``shapes-tiny-v0`` (sessions 1-15 of the project):
``shapes-tiny-plus``, v2-v8, RL on each base, their 4-step students, the twin contrast and the mirror pairs.

Each recipe is one measured experiment, shipped or not (BENCHMARKS.md has its numbers under its name); its comment
says why it was run and what it measured. A round starts from the previous round's run folder
(``init_from="runs/<name>/model"``), so the chain runs in order from one ``runs/`` folder.
"""

from dataclasses import replace

from dreamlite.sampling import Guidance
from dreamlite.train.config import CorpusConfig, DataMix, MirrorConfig, Recipe, StageConfig
from dreamlite.train.recipes.shapes_tiny import (JOINT_BIND, POST_RL, POST_RL_MIX, SFT, SHAPES_TINY_POST,
                                                 SHAPES_TINY_V0, SHAPES_VAE)

# Fine-tuning on top of a finished shapes-tiny-v0 run (`dreamlite train --recipe shapes-tiny-plus` after
# `dreamlite train --recipe shapes-tiny-v0`): more joint training, weighted towards the tags and edit types the base
# scores worst on (runs/shapes-tiny-v0/stages.md: position, colour attribution, two objects, counting; add, replace,
# move, count), then SFT again; both stages anneal their LR (cosine to 10 %). Same network, VAE and corpus.
# (Unnamed categories get weight 0: these joint stages draw only the named tags / edit types; v4's JOINT_BIND
# names every one.)
JOINT_HARD = DataMix(t2i=0.5, edit=0.5,
                     tag_weights={"position": 2.0, "color_attr": 2.0, "two_object": 1.5, "counting": 1.5},
                     edit_weights={"add": 1.5, "replace": 1.5, "move": 2.0, "count": 2.0})
SHAPES_TINY_PLUS = Recipe(
    name="shapes-tiny-plus",
    preset="tiny",
    stages=(
        StageConfig("joint-2", JOINT_HARD, steps=3600, lr=4e-4, batch_size=128, warmup_steps=100,
                    min_lr_ratio=0.1),
        StageConfig("sft-2", SFT, steps=600, lr=1.5e-4, batch_size=128, warmup_steps=20, min_lr_ratio=0.1),
    ),
    init_from="runs/shapes-tiny-v0/model",
    vae_path="runs/shapes-tiny-v0/vae",
    vae=SHAPES_VAE,
    corpus=SHAPES_TINY_V0.corpus,
    eval=SHAPES_TINY_V0.eval,
    checkpoint_every=250,
    model_dtype="float16",
)

# v2, on top of shapes-tiny-plus: grow self+cross attention at the full-resolution up level, where v1 has none.
# There the target half can look at the source half and at the words directly, instead of through the 2x2-per-half
# bottleneck of the lowest level (BENCHMARKS.md, "A/B probe": preservation and binding are what v1 lacks). The new
# transformers start as the identity (`grow_attention`), so training starts from v1's function. A fresh corpus
# (new seeds, more samples) instead of v1's, which v0 and v1 had already seen ~8 times over.
SHAPES_TINY_V2 = replace(
    SHAPES_TINY_PLUS, name="shapes-tiny-v2",
    stages=(StageConfig("joint-3", JOINT_HARD, steps=3000, lr=3e-4, batch_size=128, warmup_steps=100,
                        min_lr_ratio=0.1),
            StageConfig("sft-3", SFT, steps=500, lr=1.5e-4, batch_size=128, warmup_steps=20, min_lr_ratio=0.1)),
    unet_overrides=dict(up_attention=("self+cross", "cross", "self+cross")),
    init_from="runs/shapes-tiny-plus/model", grow_attention=True,
    corpus=CorpusConfig(n_t2i=100_000, n_edit=100_000, n_sft=20_000, image_size=64, seed=300_000))

# v3, on top of v2: the words reach the network only through cross-attention. v2 adds a pooled (masked-mean) text
# vector to the time embedding, a global signal shared by every position: swapping it for another shape's prompt
# makes v2 draw the *pooled* prompt's shape 30 % of the time (the tokens' shape 90 % -> 48 %), so the shape is
# partly decided globally, which cannot give two objects two different shapes (BENCHMARKS.md, "v2 failure modes").
# Same data as v2 (same corpus seed: a run folder can reuse v2's encoded corpus), 2,500 joint + 400 SFT steps.
SHAPES_TINY_V3 = replace(
    SHAPES_TINY_V2, name="shapes-tiny-v3",
    stages=(replace(SHAPES_TINY_V2.stages[0], name="joint-4", steps=2500),
            replace(SHAPES_TINY_V2.stages[1], name="sft-4", steps=400)),
    unet_overrides=dict(SHAPES_TINY_V2.unet_overrides, pooled_text_embed=False),
    init_from="runs/shapes-tiny-v2/model", grow_attention=False, drop_pooled_text=True)

# v4, on top of v3: more of the same training on a fresh corpus (v3 had seen v2's ~2 times), weighted harder
# towards what v3 fails: two different named shapes (two_object, color_attr: v3 draws both named shapes only 30 % of
# the time, and mostly draws one shape twice, in the right two colours). Unlike JOINT_HARD, every tag and edit type
# keeps a weight, so nothing is left to the SFT stage alone.
# (JOINT_BIND lives in shapes_tiny, whose from-nothing recipe uses it too.)
SHAPES_TINY_V4 = replace(
    SHAPES_TINY_V3, name="shapes-tiny-v4",
    stages=(replace(SHAPES_TINY_V3.stages[0], name="joint-5", mix=JOINT_BIND, steps=2000),
            replace(SHAPES_TINY_V3.stages[1], name="sft-5", steps=300)),
    init_from="runs/shapes-tiny-v3/model", drop_pooled_text=False,
    corpus=CorpusConfig(n_t2i=80_000, n_edit=60_000, n_sft=20_000, image_size=64, seed=400_000))

# v5, on top of v4: v4's gains came with a fresh corpus and a mix that names every category, at once; v5 repeats
# exactly that on another fresh corpus (seed 500,000, 1.8 passes) and longer, to measure whether more of the same
# still pays. Joint only: v4's SFT stage moved the scores by 0.006 / 0.000 / 0.003, within noise.
SHAPES_TINY_V5 = replace(
    SHAPES_TINY_V4, name="shapes-tiny-v5",
    stages=(replace(SHAPES_TINY_V4.stages[0], name="joint-6", steps=2500),),
    init_from="runs/shapes-tiny-v4/model",
    corpus=CorpusConfig(n_t2i=100_000, n_edit=80_000, n_sft=0, image_size=64, seed=500_000))

# v6, on top of v5: more of the same once more (fresh corpus, seed 600,000), with position's weight raised 2 -> 3.
# Position is the one tag three rounds of training have not moved (v3-v5: 0.27, 0.25, 0.21): v5 draws both named
# shapes in 0.47 of the position images and places them right in 0.21, not much above a random layout's ~1/3.
JOINT_PLACE = replace(JOINT_BIND, tag_weights=dict(JOINT_BIND.tag_weights, position=3.0))
SHAPES_TINY_V6 = replace(
    SHAPES_TINY_V5, name="shapes-tiny-v6",
    stages=(replace(SHAPES_TINY_V5.stages[0], name="joint-7", mix=JOINT_PLACE),),
    init_from="runs/shapes-tiny-v5/model",
    corpus=replace(SHAPES_TINY_V5.corpus, seed=600_000))

# The mobile variant of v2: the same distillation schedule as shapes-tiny-post, straight from the v2 base (no RL:
# on v1, RL did not measure better on the full benchmarks, BENCHMARKS.md "Post-training").
SHAPES_TINY_V2_MOBILE = replace(
    SHAPES_TINY_POST, name="shapes-tiny-v2-mobile", stages=SHAPES_TINY_POST.stages[1:],
    unet_overrides=SHAPES_TINY_V2.unet_overrides, init_from="runs/shapes-tiny-v2/model")

# The mobile variants of v3, v4 and v5: the same distillation schedule, from each base.
SHAPES_TINY_V3_MOBILE = replace(
    SHAPES_TINY_V2_MOBILE, name="shapes-tiny-v3-mobile",
    unet_overrides=SHAPES_TINY_V3.unet_overrides, init_from="runs/shapes-tiny-v3/model")
SHAPES_TINY_V4_MOBILE = replace(SHAPES_TINY_V3_MOBILE, name="shapes-tiny-v4-mobile",
                                init_from="runs/shapes-tiny-v4/model")
SHAPES_TINY_V5_MOBILE = replace(SHAPES_TINY_V3_MOBILE, name="shapes-tiny-v5-mobile",
                                init_from="runs/shapes-tiny-v5/model")
SHAPES_TINY_V6_MOBILE = replace(SHAPES_TINY_V3_MOBILE, name="shapes-tiny-v6-mobile",
                                init_from="runs/shapes-tiny-v6/model")

# RL on the v4 base (the stage of shapes-tiny-post alone): v4's remaining binding failure is mostly a missing second
# named shape (both named shapes drawn 0.38-0.53 of the time), which the per-clause partial credit rewards directly.
SHAPES_TINY_V4_RL = replace(SHAPES_TINY_POST, name="shapes-tiny-v4-rl", stages=SHAPES_TINY_POST.stages[:1],
                            unet_overrides=SHAPES_TINY_V4.unet_overrides, init_from="runs/shapes-tiny-v4/model")

# RL on the v5 base. v5's diagnosis (benchmarks/binding_diagnosis.py): for position prompts the second named shape
# is drawn in 0.47 of the images but placed right in 0.21, so with 8 rollouts per prompt most groups now hold a
# correct sample to reinforce (on v1 they rarely did). The mix leans on the three tags under 0.50 (position,
# color_attr, two_object) and gives generation 60 % of the prompts, since GenEval is the larger gap.
V5_RL_MIX = DataMix(t2i=0.6, edit=0.4,
                    tag_weights={"position": 3.0, "color_attr": 2.0, "two_object": 2.0, "counting": 1.0,
                                 "colors": 0.5, "single_object": 0.5},
                    edit_weights=POST_RL_MIX.edit_weights)
SHAPES_TINY_V5_RL = replace(SHAPES_TINY_V4_RL, name="shapes-tiny-v5-rl",
                            stages=(replace(SHAPES_TINY_V4_RL.stages[0], mix=V5_RL_MIX),),
                            init_from="runs/shapes-tiny-v5/model")

# RL on the v6 base with the loop v5's run exposed damped: the old policy follows the policy a tenth per iteration
# (decay 0.9 instead of 0.5) and the KL guard is 4x stronger (0.2); same mix as on v5, collapse guard on.
SHAPES_TINY_V6_RL = replace(
    SHAPES_TINY_V5_RL, name="shapes-tiny-v6-rl", init_from="runs/shapes-tiny-v6/model",
    stages=(replace(SHAPES_TINY_V5_RL.stages[0],
                    rl=replace(POST_RL, nft=replace(POST_RL.nft, old_decay=0.9, kl_weight=0.2))),))

# 400 more damped iterations from the end of shapes-tiny-v6-rl (its first 400 measured better on the full benchmarks,
# GenEval 0.622 -> 0.687); fresh rollout seed, so new prompts and noise. The KL guard's reference is its start.
SHAPES_TINY_V6_RL2 = replace(
    SHAPES_TINY_V6_RL, name="shapes-tiny-v6-rl2", init_from="runs/shapes-tiny-v6-rl/model",
    stages=(replace(SHAPES_TINY_V6_RL.stages[0], rl=replace(SHAPES_TINY_V6_RL.stages[0].rl, rl_seed=8)),))

# v7: the RL-tuned v6 with the U-Net reading MiniLM's layer 3 instead of its last layer. Every model so far puts
# the two shapes of a position prompt on the right axis but on the wrong sides half the time (direction right in
# 0.45 of the images with both shapes drawn: chance); a linear probe finds the side a noun must take in 0.97 of
# layer-3 states and 0.77 of last-layer ones (BENCHMARKS.md, "Where position fails"). Same network, so the
# cross-attention re-adapts to the new states over one more joint round on a fresh corpus (seed 700,000).
# Result: the side stayed at chance (0.46); editing rose (0.863 / 0.892) and GenEval fell (0.657): not shipped.
SHAPES_TINY_V7 = replace(
    SHAPES_TINY_V6, name="shapes-tiny-v7", stages=(replace(SHAPES_TINY_V6.stages[0], name="joint-8"),),
    init_from="runs/shapes-tiny-v6-rl/model", text_layer=3,
    corpus=replace(SHAPES_TINY_V6.corpus, seed=700_000))

# RL on v7 (the best editor so far: 0.863 / 0.892), with v6-rl's damped stage unchanged. On v6 that stage removed the
# empty canvases a flow-matching round leaves (single_object 0.82 -> 0.97) while holding editing; v7 lost GenEval to
# exactly those blanks. The RL stage must read the encoder state v7 was trained on (MiniLM layer 3).
SHAPES_TINY_V7_RL = replace(SHAPES_TINY_V6_RL, name="shapes-tiny-v7-rl", init_from="runs/shapes-tiny-v7/model",
                            text_layer=3)

# The mobile variant of the RL-tuned base: the same distillation schedule as every mobile recipe.
SHAPES_TINY_V6_RL_MOBILE = replace(SHAPES_TINY_V3_MOBILE, name="shapes-tiny-v6-rl-mobile",
                                   init_from="runs/shapes-tiny-v6-rl/model")

# A position-focused RL round on v7 + RL: on v6, 400 damped iterations with position at a fifth of the prompts left
# it at 0.27 -> 0.29, while every model draws the side at chance (0.45), so a group of 8 rollouts of a position
# prompt usually holds both right- and wrong-sided images to contrast. Here half of all prompts are position prompts
# (t2i 0.75 x 6/9), so 200 iterations see ~800 of them (the v6 round saw ~640), with the KL guard halved (0.1) so
# the policy may move further from its start; edits keep a quarter of the iterations so editing is watched.
V7_POS_RL_MIX = DataMix(t2i=0.75, edit=0.25,
                        tag_weights={"position": 6.0, "color_attr": 1.0, "two_object": 1.0, "counting": 0.5,
                                     "colors": 0.25, "single_object": 0.25},
                        edit_weights=POST_RL_MIX.edit_weights)
SHAPES_TINY_V7_RL_POS = replace(
    SHAPES_TINY_V7_RL, name="shapes-tiny-v7-rl-pos", init_from="runs/shapes-tiny-v7-rl/model",
    stages=(replace(SHAPES_TINY_V7_RL.stages[0], name="rl-pos", steps=200, mix=V7_POS_RL_MIX,
                    rl=replace(SHAPES_TINY_V7_RL.stages[0].rl, rl_seed=9,
                               nft=replace(SHAPES_TINY_V7_RL.stages[0].rl.nft, kl_weight=0.1))),))

SHAPES_TINY_V7_RL_MOBILE = replace(SHAPES_TINY_V3_MOBILE, name="shapes-tiny-v7-rl-mobile",
                                   init_from="runs/shapes-tiny-v7-rl/model", text_layer=3)

# RL on the 4-step student itself: every student loses the binding tags to its teacher (v7 + RL's: GenEval -0.059,
# two_object / counting / color_attr), and DiffusionNFT needs only samples from the policy's own sampler, so the
# rollouts and the watch run as the mobile variant is used (4 steps, no guidance) and the reward acts on exactly the
# images it makes. With a neutral reward NFT's optimum is the old velocity, so the distilled (straightened) field is
# kept where the reward says nothing. The start is the bare student U-Net (it reads MiniLM layer 3, as its teacher);
# the stage-end evaluation and the run's model folder use the student's settings.
_RL_STAGE = SHAPES_TINY_V7_RL.stages[0]
SHAPES_TINY_V7_RL_MOBILE_RL = replace(
    SHAPES_TINY_V7_RL, name="shapes-tiny-v7-rl-mobile-rl", init_from="runs/shapes-tiny-v7-rl-mobile/model/unet_mobile",
    stages=(replace(_RL_STAGE, name="rl-mobile",
                    rl=replace(_RL_STAGE.rl, sample_steps=4, nft=replace(_RL_STAGE.rl.nft, guidance=Guidance()))),),
    eval=replace(SHAPES_TINY_V0.eval, steps=4, guidance_scale=1.0, image_guidance_scale=1.0))

# v8: where the two shapes of a position prompt go. Every model so far puts them on the asked axis and on the asked
# side by chance (0.45), whether the U-Net reads MiniLM's last layer or layer 3 (which holds each noun's side at
# 0.97), and neither joint rounds nor position-focused RL moved it. A query then cannot tell left from right except
# through conv zero padding, so v8 adds a place embedding to every transformer's tokens (`position_embed`, 4
# frequencies, zero-initialised: the network starts as the shipped base) and trains a short joint round weighted to
# position; v8-control is the same round without it, so the difference is the embedding's alone. Both start from the
# shipped base (v7 + RL, layer 3) on the same fresh corpus (seed 800,000; a run folder may link the other's).
PLACE_MIX = DataMix(t2i=0.7, edit=0.3,
                    tag_weights={"position": 6.0, "color_attr": 2.0, "two_object": 2.0, "counting": 1.0,
                                 "colors": 0.5, "single_object": 0.5},
                    edit_weights=JOINT_BIND.edit_weights)
# v7 + RL: the shipped `unet/` from session 10 until session 16 (in git history before then); every round below that
# starts "from the shipped base" starts from it.
V7_RL_MODEL = "runs/shapes-tiny-v7-rl/model"
SHAPES_TINY_V8_CONTROL = replace(
    SHAPES_TINY_V7, name="shapes-tiny-v8-control",
    stages=(StageConfig("joint-9", PLACE_MIX, steps=800, lr=3e-4, batch_size=128, warmup_steps=50,
                        min_lr_ratio=0.1, ema_decay=0.995),),
    init_from=V7_RL_MODEL, vae_path="checkpoints/dreamlite-tiny-shapes/vae",
    corpus=CorpusConfig(n_t2i=48_000, n_edit=16_000, n_sft=0, image_size=64, seed=800_000))
SHAPES_TINY_V8 = replace(SHAPES_TINY_V8_CONTROL, name="shapes-tiny-v8",
                         unet_overrides=dict(SHAPES_TINY_V7.unet_overrides, position_embed=4))

# RL on v8. v8's round left the side at chance (0.46) and its place projections small (mean |w| 0.0015, proj_in's
# 0.05): flow matching barely pays for the side (a wrong-sided pair costs only the two outlines' difference), while
# the GenEval reward pays for nothing else. v7-rl-pos gave RL that signal without the embedding and the side did not
# move; here the policy has it. A third of the prompts ask for a position; the rest keep every tag and edit type.
V8_RL_MIX = DataMix(t2i=0.7, edit=0.3,
                    tag_weights={"position": 4.0, "color_attr": 1.5, "two_object": 1.5, "counting": 1.0,
                                 "colors": 0.5, "single_object": 0.5},
                    edit_weights=POST_RL_MIX.edit_weights)
SHAPES_TINY_V8_RL = replace(
    SHAPES_TINY_V7_RL_POS, name="shapes-tiny-v8-rl", init_from="runs/shapes-tiny-v8/model",
    vae_path="runs/shapes-tiny-v8/model/vae",
    unet_overrides=SHAPES_TINY_V8.unet_overrides,
    stages=(replace(SHAPES_TINY_V7_RL_POS.stages[0], name="rl-v8", steps=300, mix=V8_RL_MIX,
                    rl=replace(SHAPES_TINY_V7_RL_POS.stages[0].rl, rl_seed=10)),))

# Noise or words (BENCHMARKS.md): under the four prompts "A left of B", "B left of A", "A right of B", "B right of A"
# the shipped base puts A on the same side for every seed (25 of 25): the starting noise decides which shape goes
# where, and the words only the axis. Fresh-noise NFT cannot credit that decision (it re-noises each image with new
# noise); `noise="rollout"` trains on the line from each rollout's own starting noise to its image. 200 iterations
# on from v8-rl, everything else as v8-rl, so the position reward's curve shows the noise mode's effect alone.
_V8_RL_STAGE = SHAPES_TINY_V8_RL.stages[0]
SHAPES_TINY_V8_RL_COUPLED = replace(
    SHAPES_TINY_V8_RL, name="shapes-tiny-v8-rl-coupled", init_from="runs/shapes-tiny-v8-rl/model",
    stages=(replace(_V8_RL_STAGE, name="rl-v8-coupled", steps=200,
                    rl=replace(_V8_RL_STAGE.rl, rl_seed=11, nft=replace(_V8_RL_STAGE.rl.nft, noise="rollout"))),))

# Twins (BENCHMARKS.md): v8's start, network and mix with the twin contrast (`twin_weight`): each position /
# color_attr sample is also scored under its role-swapped twin ("a square left of a star" for "a star left of a
# square"), same noise and t, and a diffusion-classifier cross-entropy asks its own prompt to explain it better. The
# plain loss barely tells the two apart; the contrast's gradient is the binding alone. Short pilots (150 steps, batch
# 64, no EMA, a small corpus) that show within minutes whether the side moves and what drawing costs.
def twins_pilot(name: str, weight: float, min_t: float = 0.0, steps: int = 150, ema_decay: float = 0.0,
                **stage_changes) -> Recipe:
    stage = replace(SHAPES_TINY_V8.stages[0], name="joint-twins", steps=steps, batch_size=64, warmup_steps=10,
                    ema_decay=ema_decay, twin_weight=weight, twin_scale=20.0, twin_min_t=min_t, **stage_changes)
    return replace(SHAPES_TINY_V8, name=name, stages=(stage,), checkpoint_every=1000,
                   corpus=replace(SHAPES_TINY_V8.corpus, n_t2i=6000, n_edit=2000))


TWINS_PILOTS = {r.name: r for r in (twins_pilot("shapes-tiny-twins-w0", 0.0),
                                    twins_pilot("shapes-tiny-twins-w0.1", 0.1),
                                    twins_pilot("shapes-tiny-twins-w1-high-t", 1.0, min_t=0.7),
                                    twins_pilot("shapes-tiny-twins-w1-ema", 1.0, steps=120, ema_decay=0.995),
                                    # position only, at low noise (t ~ 0.18) where the layout is visible
                                    twins_pilot("shapes-tiny-twins-w1-low-t-position", 1.0, t_mean=-1.5, t_std=0.5,
                                                mix=DataMix(t2i=1.0, edit=0.0, tag_weights={"position": 1.0})),
                                    # the same on 8x the scenes (48,000 t2i: ~8,000 position) for twice the steps
                                    replace(twins_pilot("shapes-tiny-twins-w1-low-t-position-big", 1.0, steps=300,
                                                        t_mean=-1.5, t_std=0.5,
                                                        mix=DataMix(t2i=1.0, edit=0.0, tag_weights={"position": 1.0})),
                                            corpus=replace(SHAPES_TINY_V8.corpus, n_t2i=48_000, n_edit=0)),
                                    # the twin's error capped at the negative prompt's
                                    twins_pilot("shapes-tiny-twins-w1-capped", 1.0, twin_cap_uncond=True),
                                    # colour binding only
                                    twins_pilot("shapes-tiny-twins-w0.1-color", 0.1, twin_tags=("color_attr",)))}

# Mirror pairs (BENCHMARKS.md, "Mirror pairs"; ``dreamlite.train.mirror``): the start model's own rollouts of 8,000
# position prompts, each side-corrected and beside its twin from the same starting noise (reflow samples whose
# targets differ by a mirrored image), 16 rollouts (32 samples) beside every batch of 64 joint samples (v7's mix).
# The control is the same round without them. Both start from the shipped base, on v8's corpus (a run folder may
# link v8's corpus/*.safetensors).
MIRROR_STAGE = StageConfig("joint-mirror", JOINT_BIND, steps=400, lr=2e-4, batch_size=64, warmup_steps=20,
                           min_lr_ratio=0.1, ema_decay=0.0)
SHAPES_TINY_MIRROR_CONTROL = replace(SHAPES_TINY_V8_CONTROL, name="shapes-tiny-mirror-control", stages=(MIRROR_STAGE,))
SHAPES_TINY_MIRROR = replace(SHAPES_TINY_MIRROR_CONTROL, name="shapes-tiny-mirror",
                             stages=(replace(MIRROR_STAGE, mirror=MirrorConfig()),))

# The same pairs under the twin contrast (each pair row also scored under the other row's text, same noise and t,
# drawn at high noise: t_mean 0.8), on a U-Net that embeds token indices (`text_position_embed`, zero-initialised:
# cross-attention alone reads "A left of B" and "B left of A" as the same set of tokens). 600 steps at lr 5e-4. The
# stage keeps shapes-tiny-mirror's name, so a run folder may link that run's mirror set (the same start function).
SHAPES_TINY_MIRROR_TWINS = replace(
    SHAPES_TINY_MIRROR, name="shapes-tiny-mirror-twins",
    unet_overrides=dict(SHAPES_TINY_MIRROR.unet_overrides, text_position_embed=32),
    stages=(replace(MIRROR_STAGE, steps=600, lr=5e-4, twin_weight=1.0, twin_tags=(),
                    mirror=MirrorConfig(t_mean=0.8)),))

# At weight 1 that contrast (scale 20 per relative error gap) dominates the loss and wrecks drawing (GenEval 0.473).
# At a tenth, with the twin's error capped at the negative prompt's (no gain from answering the twin worse than no
# text), the side is learnt later (pair accuracy 0.84 at step 600) and the round costs about what a plain round costs
# an RL-tuned start (BENCHMARKS.md, "Mirror pairs, gently"). The RL recipe after it is v7-rl-pos's stage, 100
# iterations; then -rl2 and -rl3 (GenEval 0.707, position 0.49, editing 0.817 / 0.853: not shipped).
SHAPES_TINY_MIRROR_GENTLE = replace(
    SHAPES_TINY_MIRROR_TWINS, name="shapes-tiny-mirror-gentle",
    stages=(replace(SHAPES_TINY_MIRROR_TWINS.stages[0], twin_weight=0.1, twin_cap_uncond=True),))

SHAPES_TINY_MIRROR_GENTLE_RL = replace(
    SHAPES_TINY_V7_RL_POS, name="shapes-tiny-mirror-gentle-rl", init_from="runs/shapes-tiny-mirror-gentle/model",
    vae_path="runs/shapes-tiny-mirror-gentle/model/vae", unet_overrides=SHAPES_TINY_MIRROR_TWINS.unet_overrides,
    stages=(replace(SHAPES_TINY_V7_RL_POS.stages[0], name="rl-mirror", steps=100,
                    rl=replace(SHAPES_TINY_V7_RL_POS.stages[0].rl, rl_seed=12)),))


def rl_round(after: Recipe, name: str, stage: StageConfig, rl_seed: int, steps: int, **stage_changes) -> Recipe:
    """One more RL round on the model of the run ``after`` (``runs/<after.name>/model``): ``stage`` renamed, with
    its own length and rollout seed (fresh prompts and noise); the network and VAE settings stay ``after``'s."""
    return replace(after, name=name, init_from=f"runs/{after.name}/model",
                   stages=(replace(stage, name=name.removeprefix("shapes-tiny-"), steps=steps,
                                   rl=replace(stage.rl, rl_seed=rl_seed), **stage_changes),))


SHAPES_TINY_MIRROR_GENTLE_RL2 = rl_round(SHAPES_TINY_MIRROR_GENTLE_RL, "shapes-tiny-mirror-gentle-rl2",
                                         SHAPES_TINY_MIRROR_GENTLE_RL.stages[0], rl_seed=13, steps=150)
# v7-rl's mix (position a fifth of all prompts, KL 0.2)
SHAPES_TINY_MIRROR_GENTLE_RL3 = rl_round(SHAPES_TINY_MIRROR_GENTLE_RL2, "shapes-tiny-mirror-gentle-rl3",
                                         SHAPES_TINY_V7_RL.stages[0], rl_seed=14, steps=150)
# edits at 0.6 of the prompts: editing did not come back
SHAPES_TINY_MIRROR_GENTLE_RL4 = rl_round(SHAPES_TINY_MIRROR_GENTLE_RL3, "shapes-tiny-mirror-gentle-rl4",
                                         SHAPES_TINY_V7_RL.stages[0], rl_seed=15, steps=150,
                                         mix=replace(SHAPES_TINY_V7_RL.stages[0].mix, t2i=0.4, edit=0.6))


# The gentle round costs editing its preservation (0.900 -> 0.846) and no RL round after it gives that back. Its
# mirror rows are all text-to-image, so of the rows under the flow loss only a third were edits (32 of 96); here the
# joint batch is three quarters edits, which puts edits back at half (48 of 96), as in every earlier joint round.
SHAPES_TINY_MIRROR_GENTLE_EDIT = replace(
    SHAPES_TINY_MIRROR_GENTLE, name="shapes-tiny-mirror-gentle-edit",
    stages=(replace(SHAPES_TINY_MIRROR_GENTLE.stages[0], mix=replace(JOINT_BIND, t2i=0.25, edit=0.75)),))

# The gentle round with its own rows anchored to the start (``StageConfig.anchor_weight``): they regress onto the
# shipped base's velocity instead of the data's, so the round moves the network only where the mirror pairs and
# their contrast pull, and keeps what RL tuned elsewhere (a plain round from the shipped base costs ~0.09 GenEval).
# Measured (BENCHMARKS.md, "Anchored mirror rounds"): at weight 5 drawing is kept (GenEval 0.690) but the side is
# not learnt; at weight 1 it is (position 0.67, then 0.72 after RL) at a cost to two_object and editing.
SHAPES_TINY_MIRROR_ANCHOR = replace(
    SHAPES_TINY_MIRROR_GENTLE, name="shapes-tiny-mirror-anchor",
    stages=(replace(SHAPES_TINY_MIRROR_GENTLE.stages[0], anchor_weight=5.0),))
# At weight 5 the round keeps drawing (GenEval 0.690) but not the side: the batch's own position prompts (~7 rows
# of 64) are anchored too, to a start that draws either side, against the 32 mirror rows. Here position is left to
# the mirror pairs alone (its tag weight 0 in the batch's mix).
SHAPES_TINY_MIRROR_ANCHOR_PAIRS = replace(
    SHAPES_TINY_MIRROR_ANCHOR, name="shapes-tiny-mirror-anchor-pairs",
    stages=(replace(SHAPES_TINY_MIRROR_ANCHOR.stages[0],
                    mix=replace(JOINT_BIND, tag_weights=dict(JOINT_BIND.tag_weights, position=0.0))),))

# Weight 1 (the measured round of "Anchored mirror rounds"; /work/exp/mr_anchor.py there, the same loss), then one
# RL round of v7-rl's mix: position 0.72, two_object 0.47, editing 0.821 / 0.853.
SHAPES_TINY_MIRROR_ANCHOR1 = replace(
    SHAPES_TINY_MIRROR_ANCHOR, name="shapes-tiny-mirror-anchor1",
    stages=(replace(SHAPES_TINY_MIRROR_ANCHOR.stages[0], anchor_weight=1.0),))
SHAPES_TINY_MIRROR_ANCHOR_RL = rl_round(SHAPES_TINY_MIRROR_ANCHOR1, "shapes-tiny-mirror-anchor-rl",
                                        SHAPES_TINY_V7_RL.stages[0], rl_seed=16, steps=150)


RECIPES = {"shapes-tiny-plus": SHAPES_TINY_PLUS, "shapes-tiny-v2": SHAPES_TINY_V2, "shapes-tiny-v3": SHAPES_TINY_V3,
           "shapes-tiny-v4": SHAPES_TINY_V4, "shapes-tiny-v5": SHAPES_TINY_V5, "shapes-tiny-v6": SHAPES_TINY_V6,
           "shapes-tiny-v2-mobile": SHAPES_TINY_V2_MOBILE, "shapes-tiny-v3-mobile": SHAPES_TINY_V3_MOBILE,
           "shapes-tiny-v4-mobile": SHAPES_TINY_V4_MOBILE, "shapes-tiny-v5-mobile": SHAPES_TINY_V5_MOBILE,
           "shapes-tiny-v6-mobile": SHAPES_TINY_V6_MOBILE, "shapes-tiny-v4-rl": SHAPES_TINY_V4_RL,
           "shapes-tiny-v5-rl": SHAPES_TINY_V5_RL, "shapes-tiny-v6-rl": SHAPES_TINY_V6_RL,
           "shapes-tiny-v6-rl2": SHAPES_TINY_V6_RL2, "shapes-tiny-v6-rl-mobile": SHAPES_TINY_V6_RL_MOBILE,
           "shapes-tiny-v7": SHAPES_TINY_V7, "shapes-tiny-v7-rl": SHAPES_TINY_V7_RL,
           "shapes-tiny-v7-rl-mobile": SHAPES_TINY_V7_RL_MOBILE, "shapes-tiny-v7-rl-pos": SHAPES_TINY_V7_RL_POS,
           "shapes-tiny-v7-rl-mobile-rl": SHAPES_TINY_V7_RL_MOBILE_RL, "shapes-tiny-v8": SHAPES_TINY_V8,
           "shapes-tiny-v8-control": SHAPES_TINY_V8_CONTROL, "shapes-tiny-v8-rl": SHAPES_TINY_V8_RL,
           "shapes-tiny-v8-rl-coupled": SHAPES_TINY_V8_RL_COUPLED, "shapes-tiny-mirror": SHAPES_TINY_MIRROR,
           "shapes-tiny-mirror-control": SHAPES_TINY_MIRROR_CONTROL,
           "shapes-tiny-mirror-twins": SHAPES_TINY_MIRROR_TWINS,
           "shapes-tiny-mirror-gentle": SHAPES_TINY_MIRROR_GENTLE,
           "shapes-tiny-mirror-gentle-edit": SHAPES_TINY_MIRROR_GENTLE_EDIT,
           "shapes-tiny-mirror-anchor": SHAPES_TINY_MIRROR_ANCHOR,
           "shapes-tiny-mirror-anchor-pairs": SHAPES_TINY_MIRROR_ANCHOR_PAIRS,
           "shapes-tiny-mirror-anchor1": SHAPES_TINY_MIRROR_ANCHOR1,
           "shapes-tiny-mirror-anchor-rl": SHAPES_TINY_MIRROR_ANCHOR_RL,
           "shapes-tiny-mirror-gentle-rl": SHAPES_TINY_MIRROR_GENTLE_RL,
           "shapes-tiny-mirror-gentle-rl2": SHAPES_TINY_MIRROR_GENTLE_RL2,
           "shapes-tiny-mirror-gentle-rl3": SHAPES_TINY_MIRROR_GENTLE_RL3,
           "shapes-tiny-mirror-gentle-rl4": SHAPES_TINY_MIRROR_GENTLE_RL4, **TWINS_PILOTS}
