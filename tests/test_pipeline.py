import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreamlite import MobileUNet
from dreamlite.models.text import MiniLMTextEncoder
from dreamlite.models.vae import VAEConfig, make_vae
from dreamlite.pipeline import DreamLitePipeline, PipelineDefaults, VariantDefaults

UNET = dict(block_out_channels=(32, 64, 64), num_attention_heads=(1, 2, 2), cross_attention_dim=64,
            time_embed_dim=64, size_embed_dim=8, norm_num_groups=16, transformer_layers_per_block=(1, 1, 1),
            mid_transformer_layers=1)


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder.from_pretrained()


@pytest.fixture(scope="module")
def pipe(encoder):
    torch.manual_seed(0)
    vae = make_vae(VAEConfig(image_size=32)).eval()
    unet = MobileUNet.from_preset("tiny", in_channels=vae.config.latent_channels,
                                  out_channels=vae.config.latent_channels, **UNET).eval()
    defaults = PipelineDefaults(resolution=(32, 32), variants={"base": VariantDefaults("unet", 3, 2.0, 1.5)})
    return DreamLitePipeline(unet=unet, vae=vae, text_encoder=encoder, defaults=defaults)


class Spy:
    """Wraps the U-Net and records every call's canvas and text."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []
        self.config, self.device, self.dtype = unet.config, unet.device, unet.dtype

    def __call__(self, canvas, t, text, mask, ids):
        self.calls.append((canvas.clone(), text.clone(), mask.clone(), t.clone(), ids.clone()))
        return self.unet(canvas, t, text, mask, ids)


def test_generate_shapes_dtypes_and_output_types(pipe):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    pil = pipe(["a red circle", "a blue star"], generator=g(), progress=False).images
    assert len(pil) == 2 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in pil)
    arr = pipe(["a red circle", "a blue star"], generator=g(), output_type="np", progress=False).images
    assert arr.dtype == np.uint8 and arr.shape == (2, 32, 32, 3)
    assert np.array_equal(arr[0], np.asarray(pil[0]))  # same seed, same image
    lat = pipe("a red circle", output_type="latent", num_images_per_prompt=3, generator=g(), progress=False).images
    f = 2 ** (len(pipe.vae.config.encoder_block_out_channels) - 1)
    assert lat.shape == (3, pipe.unet.config.in_channels, 32 // f, 32 // f) and lat.dtype == torch.float32
    assert not torch.equal(lat[0], lat[1])  # different noise per image


def test_edit_differs_from_generate_only_in_right_half_and_template(pipe, monkeypatch):
    spy = Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy, raising=False)
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    kw = dict(num_inference_steps=1, guidance_scale=1.0, image_guidance_scale=1.0, progress=False)
    pipe("make it red", generator=torch.Generator().manual_seed(1), **kw)
    out = pipe("make it red", image=source, generator=torch.Generator().manual_seed(1), **kw)
    (c_gen, t_gen, *_), (c_edit, t_edit, *_) = spy.calls
    w = c_gen.shape[-1] // 2
    assert torch.equal(c_gen[..., :w], c_edit[..., :w])  # same noisy target
    assert c_gen[..., w:].abs().max() == 0  # generate: blank right half
    src = pipe.encode_images([source], 32, 32)
    torch.testing.assert_close(c_edit[..., w:], src)  # edit: the source latents
    gen_text, _ = pipe.text_encoder.encode(["make it red"], task="generate")
    edit_text, _ = pipe.text_encoder.encode(["make it red"], task="edit")
    torch.testing.assert_close(t_gen, gen_text)  # the generate template ...
    torch.testing.assert_close(t_edit, edit_text)  # ... and the edit template: the only other difference
    assert t_gen.shape != t_edit.shape or (t_gen - t_edit).abs().max() > 1e-3
    assert out.images[0].size == source.size  # resized back to the source size


def test_cfg_branches_are_stacked_in_one_call(pipe, monkeypatch):
    spy = Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy, raising=False)
    src = Image.new("RGB", (32, 32), (10, 200, 30))
    pipe("a red circle", num_inference_steps=1, guidance_scale=3.0, progress=False)
    pipe("remove it", image=src, num_inference_steps=1, guidance_scale=3.0, image_guidance_scale=1.5, progress=False)
    (c2, *_), (c3, *_) = spy.calls
    assert c2.shape[0] == 2 and c3.shape[0] == 3
    w = c3.shape[-1] // 2
    assert c3[0, ..., w:].abs().max() == 0 and c3[1, ..., w:].abs().max() > 0  # (uncond, blank), (uncond, source)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "text_encoder" / "spec.json").read_text().count("minilm") == 1
    assert not list((tmp_path / "m").rglob("*.bin"))
    again = DreamLitePipeline.from_pretrained(tmp_path / "m", text_encoder=pipe.text_encoder)
    a = pipe("a star", generator=torch.Generator().manual_seed(5), output_type="np", progress=False).images
    b = again("a star", generator=torch.Generator().manual_seed(5), output_type="np", progress=False).images
    assert np.array_equal(a, b)
    with pytest.raises(FileExistsError):
        pipe.save_pretrained(tmp_path / "m")


def test_image_modes_are_converted(pipe):
    rgba = Image.new("RGBA", (20, 30), (255, 0, 0, 0))
    gray = Image.new("L", (64, 64), 128)
    pal = Image.new("P", (64, 64))
    out = pipe(["a", "b", "c"], image=[rgba, gray, pal], num_inference_steps=1, progress=False).images
    assert [o.size for o in out] == [(20, 30), (64, 64), (64, 64)]
    with pytest.raises(ValueError, match="one image or one per prompt"):
        pipe(["a", "b", "c"], image=[rgba, gray], num_inference_steps=1, progress=False)


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="positive integer"):
        pipe("x", num_inference_steps=0, progress=False)
    with pytest.raises(ValueError, match=">= 0"):
        pipe("x", guidance_scale=-1.0, progress=False)
    with pytest.raises(ValueError, match="multiples of"):
        pipe("x", height=30, progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        pipe([], progress=False)


def test_float16_storage_halves_the_unet_file_and_loads_back_as_float32(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "fp32")
    pipe.save_pretrained(tmp_path / "fp16", weights_dtype=torch.float16)
    weights = "unet/diffusion_pytorch_model.safetensors"
    size32, size16 = ((tmp_path / d / weights).stat().st_size for d in ("fp32", "fp16"))
    assert 0.45 < size16 / size32 < 0.55
    loaded = DreamLitePipeline.from_pretrained(tmp_path / "fp16", text_encoder=pipe.text_encoder)
    for k, v in pipe.unet.state_dict().items():
        w = loaded.unet.state_dict()[k]
        assert w.dtype == torch.float32
        torch.testing.assert_close(w, v.half().float(), rtol=0, atol=0)


def _src(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_edit_runs_at_the_nearest_aspect_bucket_and_returns_the_source_size(pipe, monkeypatch):
    spy = Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy, raising=False)
    kw = dict(num_inference_steps=1, guidance_scale=1.0, image_guidance_scale=1.0, progress=False)
    f = 2 ** (len(pipe.vae.config.encoder_block_out_channels) - 1)
    wide = _src(100, 50, 0)  # 2:1
    # default "square" (the official default): every edit at the model's resolution
    out = pipe("make it red", image=wide, **kw).images[0]
    assert spy.calls[-1][0].shape[-2:] == (32 // f, 2 * 32 // f) and out.size == (100, 50)
    # the paper's table, scaled to a 32-px model (multiples of 16 px): 1248x832 -> 48x32 is the nearest to 2:1
    assert pipe.canvas_sizes([wide], 1, None, None, "v54") == [(48, 32)]
    out = pipe("make it red", image=wide, buckets="v54", **kw).images[0]
    assert spy.calls[-1][0].shape[-2:] == (32 // f, 2 * 48 // f) and out.size == (100, 50)
    # an explicit size wins over buckets
    assert pipe.canvas_sizes([wide], 1, 32, 32, "v54") == [(32, 32)]


def test_mixed_aspect_edits_run_in_groups_and_keep_their_order(pipe):
    kw = dict(num_inference_steps=2, guidance_scale=2.0, image_guidance_scale=1.5, progress=False,
              buckets=[(64, 32), (32, 32)])
    sources = [_src(90, 44, 1), _src(40, 40, 2), _src(60, 30, 3)]
    prompts = ["add a star", "remove the circle", "make it blue"]
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    together = pipe(prompts, image=sources, generator=gens, output_type="np", **kw).images
    assert isinstance(together, list) and [a.shape for a in together] == [(44, 90, 3), (40, 40, 3), (30, 60, 3)]
    for i in range(3):  # each equals the same edit run alone with its own generator
        alone = pipe(prompts[i], image=sources[i], generator=[torch.Generator().manual_seed(10 + i)],
                     output_type="np", **kw).images[0]
        assert np.array_equal(alone, together[i])
    lat = pipe(prompts, image=sources, output_type="latent", generator=torch.Generator().manual_seed(0), **kw).images
    assert [tuple(x.shape[-2:]) for x in lat] == [(8, 16), (8, 8), (8, 16)]


def test_bucket_errors_name_the_problem(pipe):
    src = _src(64, 32, 0)
    with pytest.raises(ValueError, match="unknown bucket table 'nope'"):
        pipe("x", image=src, buckets="nope", progress=False)
    with pytest.raises(ValueError, match="not multiples of 16"):
        pipe("x", image=src, buckets=[(40, 32)], progress=False)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe("x", width=40, height=32, progress=False)
    with pytest.raises(ValueError, match="3 generators for 2 images"):
        pipe(["a", "b"], generator=[torch.Generator()] * 3, progress=False)


def test_text_layer_travels_with_the_folder(pipe, tmp_path):
    """A pipeline whose U-Net reads MiniLM layer 3 saves that in spec.json and loads it back (no encoder passed):
    the same images as before saving, and not the images of the last-layer encoder."""
    layer3 = DreamLitePipeline(unet=pipe.unet, vae=pipe.vae, text_encoder=MiniLMTextEncoder.from_pretrained(layer=3),
                               defaults=pipe.defaults)
    layer3.save_pretrained(tmp_path / "m3")
    assert '"layer": 3' in (tmp_path / "m3" / "text_encoder" / "spec.json").read_text()
    again = DreamLitePipeline.from_pretrained(tmp_path / "m3")
    assert again.text_encoder.spec.layer == 3
    run = lambda p: p("a star", generator=torch.Generator().manual_seed(5), output_type="np", progress=False).images  # noqa: E731
    assert np.array_equal(run(layer3), run(again))
    assert not np.array_equal(run(layer3), run(pipe))
    with pytest.raises(ValueError, match="reads MiniLM layer 3, but the text encoder given reads layer -1"):
        DreamLitePipeline.from_pretrained(tmp_path / "m3", text_encoder=pipe.text_encoder)  # folder spec, no variant


def test_a_variant_can_name_its_own_text_layer(pipe, tmp_path):
    """One folder, two variants on different MiniLM layers: each loads the encoder its U-Net was trained with, and a
    given encoder that disagrees with the variant is an error naming both layers."""
    defaults = PipelineDefaults(resolution=(32, 32), variants={
        "base": VariantDefaults("unet", 3, 2.0, 1.5, text_layer=3), "mobile": VariantDefaults("unet", 1, 1.0, 1.0)})
    DreamLitePipeline(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                      defaults=defaults).save_pretrained(tmp_path / "m")
    assert DreamLitePipeline.from_pretrained(tmp_path / "m").text_encoder.spec.layer == 3
    assert DreamLitePipeline.from_pretrained(tmp_path / "m", variant="mobile").text_encoder.spec.layer == -1
    with pytest.raises(ValueError, match="variant 'base' of .* reads MiniLM layer 3, but the text encoder given "
                                         "reads layer -1"):
        DreamLitePipeline.from_pretrained(tmp_path / "m", text_encoder=pipe.text_encoder)


def test_bucket_setting_round_trips_with_the_folder(pipe, tmp_path):
    from dataclasses import replace
    pipe.defaults = replace(pipe.defaults, buckets=((64, 32), (32, 32)))
    try:
        pipe.save_pretrained(tmp_path / "m")
    finally:
        pipe.defaults = replace(pipe.defaults, buckets="square")
    loaded = DreamLitePipeline.from_pretrained(tmp_path / "m")
    assert loaded.defaults.buckets == ((64, 32), (32, 32))
    assert loaded.canvas_sizes([_src(70, 30, 0)], 1, None, None) == [(64, 32)]


def test_guidance_interval_is_a_variant_default_that_round_trips(pipe, tmp_path):
    from dataclasses import replace
    base = pipe.defaults.variants["base"]
    variants = {**pipe.defaults.variants, "base": replace(base, guidance_max_sigma=0.5)}
    DreamLitePipeline(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                      defaults=replace(pipe.defaults, variants=variants)).save_pretrained(tmp_path / "m")
    loaded = DreamLitePipeline.from_pretrained(tmp_path / "m", text_encoder=pipe.text_encoder)
    assert loaded.settings.guidance_max_sigma == 0.5
    run = lambda p, **kw: p("a red star", generator=torch.Generator().manual_seed(3), output_type="np",  # noqa: E731
                            progress=False, **kw).images
    np.testing.assert_array_equal(run(loaded), run(pipe, guidance_max_sigma=0.5))
    assert np.abs(run(pipe, guidance_max_sigma=0.5).astype(int) - run(pipe).astype(int)).max() > 0


def test_stochastic_sampling_is_a_variant_default_seeded_per_image(pipe, tmp_path):
    """eta and edit_eta round-trip with the folder; each image's fresh noise comes from its own generator, so an
    image is the same alone or in a batch, and the same seed gives the same image; eta changes it; an edit samples
    with edit_eta."""
    from dataclasses import replace
    base = pipe.defaults.variants["base"]
    variants = {**pipe.defaults.variants, "base": replace(base, eta=1.0, edit_eta=0.5)}
    DreamLitePipeline(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                      defaults=replace(pipe.defaults, variants=variants)).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "dreamlite.json").read_text())["variants"]["base"]["eta"] == 1.0
    loaded = DreamLitePipeline.from_pretrained(tmp_path / "m", text_encoder=pipe.text_encoder)
    assert (loaded.settings.eta, loaded.settings.edit_eta) == (1.0, 0.5)

    def run(p, prompts, seeds, **kw):
        return p(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
                 progress=False, **kw).images

    pair = run(loaded, ["a red star", "a blue circle"], [3, 4])
    torch.testing.assert_close(pair[1:], run(loaded, ["a blue circle"], [4]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair, run(pipe, ["a red star", "a blue circle"], [3, 4], eta=1.0))
    assert (pair - run(pipe, ["a red star", "a blue circle"], [3, 4])).abs().max() > 1e-2
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    torch.testing.assert_close(run(loaded, ["make it red"], [5], image=src), run(pipe, ["make it red"], [5],
                                                                                 image=src, eta=0.5))
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\], got -0.5"):
        run(pipe, ["a red star"], [3], eta=-0.5)
