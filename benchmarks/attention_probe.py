"""A/B probe: tiny preset as shipped (self-attention only at the lowest level) vs self+cross attention at every
level, same data/steps/seed, joint T2I+edit from scratch, reusing the main run's VAE and corpus."""
import json, sys, time
from dataclasses import replace
from pathlib import Path
import torch
from dreamlite.pipeline import DreamLitePipeline
from dreamlite.train.config import StageConfig
from dreamlite.train.evaluate import evaluate_pipeline
from dreamlite.train.recipe import run_recipe
from dreamlite.train.recipes.shapes_tiny import JOINT, SHAPES_TINY_V0
# usage: python benchmarks/attention_probe.py ARMS STEPS BATCH BASE_RUN OUT
#   e.g. python benchmarks/attention_probe.py lowest-self,all-self 400 64 runs/shapes-tiny runs/ab
steps, batch = int(sys.argv[2]), int(sys.argv[3])
base, out = Path(sys.argv[4]).resolve(), Path(sys.argv[5])
ARMS = {"lowest-self": {},
        "all-self": dict(down_attention=("self+cross",) * 3, up_attention=("self+cross",) * 3)}
for arm in sys.argv[1].split(','):
    run = out / arm
    (run / 'corpus').mkdir(parents=True, exist_ok=True)
    for n in ('t2i.safetensors', 'edit.safetensors'):
        if not (run / 'corpus' / n).exists():
            (run / 'corpus' / n).symlink_to(base / 'corpus' / n)
    r = replace(SHAPES_TINY_V0, name=f"ab-{arm}", unet_overrides=ARMS[arm], vae_path=str(base / 'vae'),
                stages=(StageConfig("joint", JOINT, steps=steps, lr=1e-3, batch_size=batch, warmup_steps=30),),
                checkpoint_every=10_000)
    t0 = time.perf_counter()
    model = run_recipe(r, run, resume=(run / 'checkpoints').exists(), evaluate=False)
    sec = time.perf_counter() - t0
    s = evaluate_pipeline(DreamLitePipeline.from_pretrained(model), run / 'eval', 60, 48)
    res = {"arm": arm, "steps": steps, "batch": batch, "train_s": round(sec, 1), **{k: round(v, 3) for k, v in s.items()}}
    print(json.dumps(res), flush=True)
    (run / 'result.json').write_text(json.dumps(res, indent=1))
