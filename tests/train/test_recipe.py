import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamlite import MobileUNet
from dreamlite.presets import preset_config
from dreamlite.train.config import DataMix, StageConfig
from dreamlite.train.loop import latest_checkpoint, lr_lambda
from dreamlite.train.recipe import Components, build_unet, init_weights, run_recipe

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_run import UNET, FakeEncoder, make_pool, recipe  # noqa: E402


def _unet(**overrides) -> MobileUNet:
    torch.manual_seed(0)
    return MobileUNet(**preset_config("tiny", **{**UNET, "in_channels": 4, "out_channels": 4, **overrides}))


def test_lr_lambda_warmup_constant_and_cosine():
    const = lr_lambda(10)
    assert [round(const(s), 6) for s in (0, 4, 9, 50, 10_000)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cos = lr_lambda(10, 110, min_ratio=0.1)
    assert cos(4) == pytest.approx(0.5) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half-way: 0.55
    assert cos(110) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    values = [cos(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warm-up


def test_init_weights_loads_a_saved_network_including_float16_storage(tmp_path):
    src = _unet()
    src.save_pretrained(tmp_path / "a" / "unet")  # a pipeline-style folder (unet/ inside)
    dst = _unet()
    torch.nn.init.zeros_(dst.conv_in.weight)
    init_weights(dst, tmp_path / "a")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    half = tmp_path / "half"  # a bare U-Net folder stored in float16
    src.save_config(half)
    save_file({k: v.half() for k, v in src.state_dict().items()}, str(half / "diffusion_pytorch_model.safetensors"))
    init_weights(dst, half)
    w = dst.state_dict()["conv_in.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, src.state_dict()["conv_in.weight"].half().float())


def test_init_weights_refuses_another_network(tmp_path):
    _unet().save_pretrained(tmp_path / "m" / "unet")
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['ff_mult'\]"):
        init_weights(_unet(ff_mult=2), tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no unet/config.json"):
        init_weights(_unet(), tmp_path / "empty")


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 16, generator=g), torch.tensor([300.0, 900.0]),
            torch.randn(2, 5, UNET.get("text_embed_dim", 384), generator=g), None,
            torch.tensor([[64.0, 32.0]] * 2))


def test_grow_attention_adds_identity_transformers(tmp_path):
    base = _unet()
    base.save_pretrained(tmp_path / "m" / "unet")
    up = tuple(base.config.up_attention)
    assert up[-1] == "none"
    grown = _unet(up_attention=up[:-1] + ("self+cross",))
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['up_attention'\]"):
        init_weights(grown, tmp_path / "m")  # growth must be asked for
    init_weights(grown, tmp_path / "m", grow_attention=True)
    new = [k for k in grown.state_dict() if k not in base.state_dict()]
    assert new and all(k.startswith(f"up_blocks.{len(up) - 1}.attentions.") for k in new)
    assert all(torch.equal(grown.state_dict()[k], v) for k, v in base.state_dict().items())
    with torch.no_grad():
        a, b = base(*_inputs()), grown(*_inputs())
    assert torch.allclose(a, b, atol=1e-6)  # the new transformers start as the identity
    grown.up_blocks[-1].attentions[0].proj_out.weight.data.normal_()
    with torch.no_grad():
        assert not torch.allclose(base(*_inputs()), grown(*_inputs()), atol=1e-3)  # ...and are in the path


def test_grow_attention_refuses_other_changes(tmp_path):
    base = _unet()
    base.save_pretrained(tmp_path / "m" / "unet")
    down = tuple(base.config.down_attention)
    assert down[0] == "cross"
    other = _unet(down_attention=("self+cross",) + down[1:])  # cross -> self+cross changes what norm1 does
    with pytest.raises(ValueError, match="grow_attention only adds transformers where the saved network has 'none'"):
        init_weights(other, tmp_path / "m", grow_attention=True)
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['ff_mult'\]"):
        init_weights(_unet(ff_mult=2), tmp_path / "m", grow_attention=True)


def test_drop_pooled_text_loads_everything_else(tmp_path):
    base = _unet(pooled_text_embed=True)
    base.save_pretrained(tmp_path / "m" / "unet")
    dropped = _unet(pooled_text_embed=False)
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['pooled_text_embed'\]"):
        init_weights(dropped, tmp_path / "m")  # dropping must be asked for
    init_weights(dropped, tmp_path / "m", drop_pooled_text=True)
    kept = dropped.state_dict()
    gone = [k for k in base.state_dict() if k not in kept]
    assert gone and all(k.startswith("pooled_text_proj.") for k in gone)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in kept.items())
    x, t, text, _, ids = _inputs()
    mask = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():  # the pooled vector was in the path: without it the output changes
        assert not torch.allclose(base(x, t, text, mask, ids), dropped(x, t, text, mask, ids), atol=1e-4)
    grown = _unet(pooled_text_embed=False, up_attention=tuple(base.config.up_attention[:-1]) + ("self+cross",))
    init_weights(grown, tmp_path / "m", grow_attention=True, drop_pooled_text=True)  # both changes at once
    with pytest.raises(ValueError, match="drop_pooled_text needs a saved U-Net with pooled_text_embed"):
        init_weights(_unet(pooled_text_embed=True), tmp_path / "m", drop_pooled_text=True)


def test_position_embed_grows_over_a_saved_network_without_it(tmp_path):
    base = _unet()
    base.save_pretrained(tmp_path / "m" / "unet")
    placed = _unet(position_embed=4)
    init_weights(placed, tmp_path / "m")  # switching the place embedding on needs no flag: it starts as nothing
    new = [k for k in placed.state_dict() if k not in base.state_dict()]
    assert new and all(".pos_proj." in k for k in new)
    assert all(torch.equal(placed.state_dict()[k], v) for k, v in base.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(placed(*_inputs()), base(*_inputs()))
    up = tuple(base.config.up_attention)
    both = _unet(position_embed=4, up_attention=up[:-1] + ("self+cross",))
    init_weights(both, tmp_path / "m", grow_attention=True)  # with grown transformers at once
    with torch.no_grad():
        torch.testing.assert_close(both(*_inputs()), base(*_inputs()), atol=1e-6, rtol=1e-5)
    placed.save_pretrained(tmp_path / "p" / "unet")
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['position_embed'\]"):
        init_weights(_unet(), tmp_path / "p")  # removing it would drop trained weights: refused
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['position_embed'\]"):
        init_weights(_unet(position_embed=2), tmp_path / "p")


def test_text_position_embed_grows_over_a_saved_network_without_it(tmp_path):
    base = _unet()
    base.save_pretrained(tmp_path / "m" / "unet")
    indexed = _unet(text_position_embed=8, position_embed=2)  # both zero-initialised embeddings at once
    init_weights(indexed, tmp_path / "m")
    new = [k for k in indexed.state_dict() if k not in base.state_dict()]
    assert "text_pos.weight" in new and all(".pos_proj." in k or k == "text_pos.weight" for k in new)
    with torch.no_grad():
        torch.testing.assert_close(indexed(*_inputs()), base(*_inputs()))
    indexed.save_pretrained(tmp_path / "i" / "unet")
    with pytest.raises(ValueError, match=r"differs from the recipe's in \['position_embed', 'text_position_embed'\]"):
        init_weights(_unet(), tmp_path / "i")  # removing them would drop trained weights: refused


def test_recipe_with_init_from_starts_from_those_weights(tmp_path):
    base = _unet()
    with torch.no_grad():
        base.conv_out.bias.fill_(0.25)  # a value no fresh initialisation has
    base.save_pretrained(tmp_path / "base" / "unet")
    stage = StageConfig("ft", DataMix(0.5, 0.5), steps=2, lr=0.0, batch_size=4, warmup_steps=1)
    r = replace(recipe(2), stages=(stage,), init_from=str(tmp_path / "base"), checkpoint_every=2)
    comps = Components(vae=SimpleNamespace(config=SimpleNamespace(latent_channels=4)), encoder=FakeEncoder(),
                       pools={"t2i": make_pool("t2i", 16, 1), "edit": make_pool("edit", 16, 2)})
    run_recipe(r, tmp_path / "run", evaluate=False, components=comps)
    ckpt = latest_checkpoint(tmp_path / "run")
    weights = load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert torch.equal(weights["conv_out.bias"], torch.full((4,), 0.25))  # lr 0: still the base weights
    assert torch.equal(ema["conv_out.bias"], torch.full((4,), 0.25))
    assert torch.equal(weights["conv_in.weight"], base.state_dict()["conv_in.weight"])


def test_recipe_text_layer_selects_the_encoder_state():
    """text_layer reaches the encoder a recipe trains with (and so the folder it writes); -1 is the last layer."""
    from dreamlite.train.recipe import recipe_text_encoder
    from dreamlite.train.recipes import get_recipe

    quick = get_recipe("shapes-tiny-quick")
    assert quick.text_layer == -1 and recipe_text_encoder(quick).spec.to_dict() == {"type": "minilm", "path": None}
    enc = recipe_text_encoder(replace(quick, text_layer=2))
    assert enc.spec.layer == 2 and len(enc.model.encoder.layer) == 2
    assert get_recipe("shapes-tiny-v7").text_layer == 3


def test_the_recipe_from_nothing_trains_the_shipped_network_and_samples_as_it():
    """`dreamlite train --recipe shapes-tiny` builds the shipped base's U-Net (every config field), reads the same
    encoder layer, runs the paper's stage order, and its evaluations and model folder sample as the shipped base."""
    import json

    from dreamlite.pipeline import PipelineDefaults
    from dreamlite.train.evaluate import base_variant
    from dreamlite.train.recipes import get_recipe

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / "dreamlite-tiny-shapes"
    shipped = {k: v for k, v in json.loads((folder / "unet" / "config.json").read_text()).items() if k[0] != "_"}
    r = get_recipe("shapes-tiny")
    vae = SimpleNamespace(config=SimpleNamespace(latent_channels=shipped["in_channels"]))
    mine = {k: v for k, v in dict(build_unet(r, vae).config).items() if k[0] != "_"}
    assert json.loads(json.dumps(mine)) == shipped
    assert r.text_layer == json.loads((folder / "text_encoder" / "spec.json").read_text())["layer"]
    assert [(s.name, s.mix.t2i, s.mix.edit, s.mix.pool) for s in r.stages] == [
        ("t2i", 1.0, 0.0, "main"), ("edit", 0.0, 1.0, "main"), ("joint", 0.5, 0.5, "main"), ("sft", 0.5, 0.5, "sft")]
    base = PipelineDefaults.from_dict(json.loads((folder / "dreamlite.json").read_text())).variants["base"]
    got = base_variant(r)
    assert (got.num_inference_steps, got.guidance_scale, got.image_guidance_scale, got.eta, got.edit_eta) == (
        base.num_inference_steps, base.guidance_scale, base.image_guidance_scale, base.eta, base.edit_eta)


def test_rl_or_distill_from_a_model_on_another_text_layer_is_refused(tmp_path):
    """An RL / distillation first stage takes init_from as it is, so its text states must match the recipe's;
    a flow-matching first stage may switch layers (it re-adapts, as shapes-tiny-v7 did)."""
    import json

    from dreamlite.train.recipe import check_init_text_encoder
    from dreamlite.train.recipes import get_recipe

    (tmp_path / "m" / "text_encoder").mkdir(parents=True)
    (tmp_path / "m" / "text_encoder" / "spec.json").write_text(json.dumps({"type": "minilm", "path": None,
                                                                            "layer": 3}))
    post = get_recipe("shapes-tiny-post-quick")  # first stage: rl, reads the last layer (-1)
    with pytest.raises(ValueError, match=r"trained on text encoder 'minilm' layer 3.*reads 'minilm' layer -1"):
        check_init_text_encoder(post, tmp_path / "m")
    check_init_text_encoder(replace(post, text_layer=3), tmp_path / "m")  # matching: accepted
    check_init_text_encoder(get_recipe("shapes-tiny-v7"), tmp_path / "m")  # flow first stage may switch
    distill = replace(post, stages=post.stages[1:])
    with pytest.raises(ValueError, match="first stage 'distill'"):
        check_init_text_encoder(distill, tmp_path / "m")
    assert get_recipe("shapes-tiny-v7-rl").text_layer == get_recipe("shapes-tiny-v7").text_layer


def test_an_anchored_stage_with_nothing_else_to_learn_leaves_the_network_where_it_started(tmp_path):
    """Every row of a batch without mirror pairs regresses onto the start model, which the network is: zero
    gradient at every step, so even at lr 1e-3 it does not move; the anchor is written once, as the stage starts."""
    base = _unet()
    base.save_pretrained(tmp_path / "base" / "unet")
    stage = StageConfig("ft", DataMix(0.5, 0.5), steps=3, lr=1e-3, batch_size=4, warmup_steps=1, anchor_weight=1.0)
    comps = Components(vae=SimpleNamespace(config=SimpleNamespace(latent_channels=4)), encoder=FakeEncoder(),
                       pools={"t2i": make_pool("t2i", 16, 1), "edit": make_pool("edit", 16, 2)})
    runs = {}
    for name, s in (("anchored", stage), ("plain", replace(stage, anchor_weight=0.0))):
        r = replace(recipe(3), stages=(s,), init_from=str(tmp_path / "base"), checkpoint_every=3)
        run_recipe(r, tmp_path / name, evaluate=False, components=comps)
        runs[name] = load_file(str(latest_checkpoint(tmp_path / name) / "unet" / "diffusion_pytorch_model.safetensors"))
    start = base.state_dict()
    assert all(torch.equal(runs["anchored"][k], start[k]) for k in start)
    assert max((runs["plain"][k] - start[k]).abs().max().item() for k in start) > 1e-4  # the data would move it
    anchor = load_file(str(tmp_path / "anchored" / "stages" / "ft" / "anchor.safetensors"))
    assert all(torch.equal(anchor[k], start[k]) for k in start)
    assert not (tmp_path / "plain" / "stages" / "ft" / "anchor.safetensors").exists()


def test_a_consolidation_stage_moves_the_network_to_anchor_from_except_where_its_start_tags_keep_it(tmp_path):
    """``anchor_from``: the network regresses onto another model (here with a different architecture: token
    indices on) and moves towards it; with every pool tag in ``anchor_start_tags`` it regresses onto itself and
    stays bit-identical; a model that reads another text encoder layer is refused by name."""
    from dreamlite.train.loop import BatchSampler
    from dreamlite.train.flow import predict_velocity
    from dreamlite.train.rl import frozen_copy

    base = _unet()
    base.save_pretrained(tmp_path / "base" / "unet")
    torch.manual_seed(7)
    teacher = MobileUNet(**preset_config("tiny", **{**UNET, "in_channels": 4, "out_channels": 4,
                                                    "text_position_embed": 8})).eval()
    teacher.save_pretrained(tmp_path / "teacher" / "unet")
    pools = {"t2i": make_pool("t2i", 16, 1), "edit": make_pool("edit", 16, 2)}
    comps = Components(vae=SimpleNamespace(config=SimpleNamespace(latent_channels=4)), encoder=FakeEncoder(),
                       pools=pools)
    stage = StageConfig("ft", DataMix(0.5, 0.5), steps=3, lr=1e-3, batch_size=4, warmup_steps=1, anchor_weight=1.0,
                        anchor_from=str(tmp_path / "teacher"))
    probe = BatchSampler(pools, replace(stage, batch_size=16), torch.Generator().manual_seed(0), image_size=32).draw()
    x_t = probe["x0"] + probe["t"][:, None, None, None] * (probe["noise"] - probe["x0"])
    inputs = (x_t, probe["cond"], probe["text"], probe["mask"], probe["time_ids"], probe["t"])

    def gap(unet) -> float:  # mean squared velocity gap to the teacher on a fixed batch
        with torch.no_grad():
            return ((predict_velocity(unet, *inputs) - predict_velocity(teacher, *inputs)) ** 2).mean().item()

    weights = {}
    for name, s in (("teach", stage), ("keep", replace(stage, anchor_start_tags=("a", "b")))):
        r = replace(recipe(3), stages=(s,), init_from=str(tmp_path / "base"), checkpoint_every=3)
        run_recipe(r, tmp_path / name, evaluate=False, components=comps)
        weights[name] = load_file(str(latest_checkpoint(tmp_path / name) / "unet" / "diffusion_pytorch_model.safetensors"))
    start = base.state_dict()
    assert all(torch.equal(weights["keep"][k], start[k]) for k in start)
    moved = frozen_copy(base)
    moved.load_state_dict(weights["teach"])
    assert gap(moved) < 0.9 * gap(base)
    (tmp_path / "teacher" / "text_encoder").mkdir()
    (tmp_path / "teacher" / "text_encoder" / "spec.json").write_text('{"type": "minilm", "layer": 5}')
    r = replace(recipe(3), stages=(stage,), init_from=str(tmp_path / "base"), checkpoint_every=3)
    with pytest.raises(ValueError, match="reads text encoder 'minilm' layer 5"):
        run_recipe(r, tmp_path / "other-layer", evaluate=False, components=comps)
    MobileUNet(**preset_config("tiny", **{**UNET, "in_channels": 8, "out_channels": 8})).save_pretrained(
        tmp_path / "wide" / "unet")
    r = replace(r, stages=(replace(stage, anchor_from=str(tmp_path / "wide")),))
    with pytest.raises(ValueError, match=r"\(in, out\) channels \(8, 8\), the network \(4, 4\)"):
        run_recipe(r, tmp_path / "other-latents", evaluate=False, components=comps)


def test_every_shipped_recipe_is_named_once_and_rebuilds_from_its_json(monkeypatch):
    """A run folder stores its recipe as JSON (``recipe.json``), which must rebuild the same recipe; each registered
    name is the recipe's own and defined by one module (the registry refuses a second definition)."""
    import json
    from importlib import import_module

    from dreamlite.train import recipes
    from dreamlite.train.config import Recipe

    per_module = [import_module(f"dreamlite.train.recipes.{m}").RECIPES for m in recipes._MODULES]
    assert len(recipes.RECIPES) == sum(len(r) for r in per_module) > 50
    for name in recipes.RECIPES:
        recipe = recipes.get_recipe(name)
        assert recipe.name == name
        assert Recipe.from_dict(json.loads(recipe.to_json())).to_json() == recipe.to_json()
    assert recipes.get_recipe("shapes-tiny-res96").corpus.image_size == 96
    assert recipes.get_recipe("shapes-tiny-res96").vae.image_size == 96
    monkeypatch.setattr(recipes, "_MODULES", ("shapes_tiny", "shapes_tiny_resolution", "shapes_tiny"))
    with pytest.raises(RuntimeError, match="'shapes-tiny' is defined in both shapes_tiny and shapes_tiny"):
        recipes._registry()
