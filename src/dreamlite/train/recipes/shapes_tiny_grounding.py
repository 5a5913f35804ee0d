"""Grounded attention (session 22; ``StageConfig.ground_weight``, ``dreamlite.train.grounding``): rounds from the
shipped base whose only new signal is TokenCompose's loss on the cross-attention maps, each clause's words attending
inside its objects, while every row keeps the start's velocity (``anchor_weight`` 1, the start as the anchor) so that
what RL and consolidation gave is not trained away. Measured in BENCHMARKS.md, "Grounded attention": each clause's
attention on its own objects 0.15 -> 0.70-0.80 at the levels grounded, but GenEval at four images per prompt 0.751
(`-ground`), 0.761 (`-ground-all`), 0.740 (`-ground-consolidate`) against the base's 0.769, and edit success down
0.03 (0.013 after consolidation): not shipped."""

from dataclasses import replace

from dreamlite.train.recipes.shapes_tiny_consolidation import SHAPES_TINY_CONSOLIDATE5

# the binding tags, where the base draws one shape twice or swaps colours, weighted up
GROUND_TAG_WEIGHTS = {"two_object": 3.0, "color_attr": 3.0, "counting": 1.5, "position": 1.0, "colors": 0.5,
                      "single_object": 0.5}
_STAGE = SHAPES_TINY_CONSOLIDATE5.stages[0]
SHAPES_TINY_GROUND = replace(
    SHAPES_TINY_CONSOLIDATE5, name="shapes-tiny-ground", init_from="runs/shapes-tiny-consolidate5/model",
    corpus=replace(SHAPES_TINY_CONSOLIDATE5.corpus, seed=870_000),
    stages=(replace(_STAGE, name="ground", anchor_from="", anchor_start_tags=(), ground_weight=0.1,
                    ground_min_side=4, mix=replace(_STAGE.mix, t2i=0.75, edit=0.25, tag_weights=GROUND_TAG_WEIGHTS)),))
# The same round on every cross-attention map, the middle level's too (2 x 2 tokens per half at 64 px: 12 of the 22
# maps, the quadrant each word is read in), where the first round left them (grounding loss ~0.48 after it).
SHAPES_TINY_GROUND_ALL = replace(
    SHAPES_TINY_GROUND, name="shapes-tiny-ground-all",
    stages=(replace(SHAPES_TINY_GROUND.stages[0], name="ground-all", ground_min_side=1),))

# Grounding cost editing (the edit rows share the cross-attention it moves): consolidate5's stage then takes editing
# back from consolidate5 (every edit row regresses onto its velocity, every t2i row keeps the start's), with the
# grounding loss kept on, so that the edit rows do not pull the attention back.
SHAPES_TINY_GROUND_CONSOLIDATE = replace(
    SHAPES_TINY_CONSOLIDATE5, name="shapes-tiny-ground-consolidate", init_from="runs/shapes-tiny-ground/model",
    corpus=replace(SHAPES_TINY_CONSOLIDATE5.corpus, seed=880_000),
    stages=(replace(_STAGE, name="ground-consolidate", anchor_from="runs/shapes-tiny-consolidate5/model",
                    ground_weight=0.1, ground_min_side=4),))

RECIPES = {"shapes-tiny-ground": SHAPES_TINY_GROUND, "shapes-tiny-ground-all": SHAPES_TINY_GROUND_ALL,
           "shapes-tiny-ground-consolidate": SHAPES_TINY_GROUND_CONSOLIDATE}
