"""Distribution matching distillation of the 4-step student (session 25; ``dreamlite.train.dmd``).

The shipped base samples with stochastic steps (``eta`` 1) and reads GenEval 0.810 at four images per prompt; the
shipped 4-step student, distilled from its ODE steps and tuned by RL, reads 0.750 and stochastic steps do not help
it. Regression onto ODE steps cannot carry what the stochastic sampler adds, so this stage matches distributions
instead: the shipped ``unet_mobile/`` is the student, the shipped base with its guidance (3.0 / 2.5) the real
denoiser, and a fake network (a copy of the base) follows the student's samples."""

from dataclasses import replace

from dreamlite.train.config import DataMix, StageConfig
from dreamlite.train.dmd import DMDConfig
from dreamlite.train.recipes.shapes_tiny_consolidation import (
    _MOBILE_RL_STAGE,
    BIND_TAG_WEIGHTS,
    SHAPES_TINY_CONSOLIDATE5_MOBILE_RL2,
)
from dreamlite.train.recipes.shapes_tiny_rounds import rl_round

# The runs whose weights were the shipped `unet/` and `unet_mobile/` when these ran (the runs of session 25 named the
# shipped folder itself; same bytes, and that `unet_mobile/` is now this file's student).
_BASE = "runs/shapes-tiny-consolidate5/model"
_STUDENT = "runs/shapes-tiny-consolidate5-mobile-rl2/model"
DMD_STAGE = StageConfig("dmd", DataMix(t2i=0.7, edit=0.3, tag_weights=BIND_TAG_WEIGHTS), steps=600, lr=2e-5,
                        batch_size=64, warmup_steps=20, ema_decay=0.99, kind="dmd",
                        dmd=DMDConfig(teacher=_BASE, guidance_scale=3.0, image_guidance_scale=2.5, student_steps=4,
                                      student_step="random", grad_steps=1,
                                      fake_updates=2, fake_lr=1e-4, fake_warmup=50))
SHAPES_TINY_MOBILE_DMD = replace(
    SHAPES_TINY_CONSOLIDATE5_MOBILE_RL2, name="shapes-tiny-mobile-dmd", init_from=_STUDENT,
    corpus=replace(SHAPES_TINY_CONSOLIDATE5_MOBILE_RL2.corpus, n_t2i=10_000, n_edit=10_000, seed=830_000),
    stages=(DMD_STAGE,))
# Measured (full benchmarks, four steps, no guidance): 0.762 / 0.812 / 0.890, GenEval 0.730 at four images per prompt,
# against the student's 0.765 / 0.854 / 0.882 (0.750): position and editing lost. Not shipped.
# The loss on the sample the student deploys (the end of its four Euler steps, gradient through all four), not on
# a random step's x0 estimate.
SHAPES_TINY_MOBILE_DMD_FINAL = replace(
    SHAPES_TINY_MOBILE_DMD, name="shapes-tiny-mobile-dmd-final",
    stages=(replace(DMD_STAGE, name="dmd-final", steps=400,
                    dmd=replace(DMD_STAGE.dmd, student_step="final", grad_steps=0)),))
# Measured: 0.768 / 0.858 / 0.897 (0.760 at four images; validation split 0.775 / 0.838 / 0.885 against 0.770 / 0.812 /
# 0.880): better on every number; shipped in session 25 until RL on it, next.
# then the shipped student's RL stage on it, as RL followed each progressive distillation. Measured: 0.800 / 0.846 /
# 0.895 (0.777 at four images; validation 0.790 / 0.842 / 0.884), within 0.022 of the base's GenEval at one image:
# the shipped `unet_mobile/` since session 25. (A third RL round on the student without DMD gave nothing, 0.757.)
SHAPES_TINY_MOBILE_DMD_FINAL_RL = rl_round(SHAPES_TINY_MOBILE_DMD_FINAL, "shapes-tiny-mobile-dmd-final-rl",
                                           _MOBILE_RL_STAGE, rl_seed=32, steps=400)
# A second round of the same stage on it (fresh rollout seed): RL rounds two and three lifted earlier students
# (0.682 -> 0.710 -> 0.738), and this one is 0.003 outside issue 7's 0.03 at four images per prompt. Measured: its
# drift passed the guard at iteration 280 (weights of 260 kept); 0.773 / 0.821 / 0.894 (0.722 at four images;
# validation 0.737 / 0.829 / 0.889): worse than its start on GenEval and edit success. Not shipped.
SHAPES_TINY_MOBILE_DMD_FINAL_RL2 = rl_round(SHAPES_TINY_MOBILE_DMD_FINAL_RL, "shapes-tiny-mobile-dmd-final-rl2",
                                            _MOBILE_RL_STAGE, rl_seed=33, steps=400)

RECIPES = {"shapes-tiny-mobile-dmd": SHAPES_TINY_MOBILE_DMD,
           "shapes-tiny-mobile-dmd-final": SHAPES_TINY_MOBILE_DMD_FINAL,
           "shapes-tiny-mobile-dmd-final-rl": SHAPES_TINY_MOBILE_DMD_FINAL_RL,
           "shapes-tiny-mobile-dmd-final-rl2": SHAPES_TINY_MOBILE_DMD_FINAL_RL2}
