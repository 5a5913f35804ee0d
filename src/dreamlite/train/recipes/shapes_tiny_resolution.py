"""Latent room per object (session 23): the shipped base fine-tuned by one data round at its own 64 px (the control)
and at 96 px, on the same scenes (one corpus seed; only the render size differs). At 64 px the VAE's 8x8 latent per
half gives an object 1.4-2.6 latent cells across; at 96 px 2.2-3.9. The question: are two_object's blends (each of
two objects drawn as a mix of both named shapes; BENCHMARKS.md, "Grounded attention") a matter of room in the
latent? The VAE needs no change: it is convolutional and reconstructs 96 px renders better than 64 px ones (37.4 vs
35.8 dB on 300 held-out scenes). Measured in BENCHMARKS.md, "Latent room per object": after 1,000 steps the 96 px
model draws worse than the control (GenEval 0.612 vs 0.690, two_object 0.43 vs 0.54, editing 0.40 / 0.58 vs
0.85 / 0.90: its shape features are tied to the 64 px scale), and the blends remain; after 2,500 it has nearly
caught up and is no better on two_object (0.55 vs 0.56; GenEval 0.662 vs 0.677); not shipped."""

from dataclasses import replace

from dreamlite.train.recipes.shapes_tiny_consolidation import SHAPES_TINY_CONSOLIDATE5
from dreamlite.train.recipes.shapes_tiny_rounds import JOINT_PLACE

# plain flow matching on data (no anchor: a 64 px teacher has no velocity to give at 96 px), t2i-heavy
RES_MIX = replace(JOINT_PLACE, t2i=0.6, edit=0.4)
_STAGE = SHAPES_TINY_CONSOLIDATE5.stages[0]
SHAPES_TINY_RES64 = replace(
    SHAPES_TINY_CONSOLIDATE5, name="shapes-tiny-res64", init_from="runs/shapes-tiny-consolidate5/model",
    corpus=replace(SHAPES_TINY_CONSOLIDATE5.corpus, n_t2i=32_000, n_edit=16_000, seed=820_000),
    stages=(replace(_STAGE, name="res64", mix=RES_MIX, steps=1000, lr=1e-4, anchor_weight=0.0, anchor_from="",
                    anchor_start_tags=()),))
SHAPES_TINY_RES96 = replace(
    SHAPES_TINY_RES64, name="shapes-tiny-res96", corpus=replace(SHAPES_TINY_RES64.corpus, image_size=96),
    vae=replace(SHAPES_TINY_RES64.vae, image_size=96),
    stages=(replace(SHAPES_TINY_RES64.stages[0], name="res96"),))

# Is the 96 px deficit adaptation (it closes with steps) or the scale itself? 1,500 more steps of the same round on
# a fresh corpus, for both arms.
SHAPES_TINY_RES96_MORE = replace(
    SHAPES_TINY_RES96, name="shapes-tiny-res96-more", init_from="runs/shapes-tiny-res96/model",
    corpus=replace(SHAPES_TINY_RES96.corpus, seed=830_000),
    stages=(replace(SHAPES_TINY_RES96.stages[0], name="res96-more", steps=1500),))
SHAPES_TINY_RES64_MORE = replace(
    SHAPES_TINY_RES64, name="shapes-tiny-res64-more", init_from="runs/shapes-tiny-res64/model",
    corpus=replace(SHAPES_TINY_RES64.corpus, seed=830_000),
    stages=(replace(SHAPES_TINY_RES64.stages[0], name="res64-more", steps=1500),))

RECIPES = {r.name: r for r in (SHAPES_TINY_RES64, SHAPES_TINY_RES96, SHAPES_TINY_RES64_MORE, SHAPES_TINY_RES96_MORE)}
