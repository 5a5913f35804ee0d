"""Prompt templates: byte-exact official strings, prefix rules, task resolution, errors."""

import hashlib
import re

import pytest

from dreamlite import prompts as P


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def _pipeline_templates(official_dir) -> list[str]:
    """The two fenced templates of PIPELINE.md §2, with the documented '\\n' = one newline."""
    text = (official_dir / "PIPELINE.md").read_text(encoding="utf-8")
    section = text.split("## 2. Conditioning strings")[1].split("## 3.")[0]
    return [b.replace("\\n", "\n") for b in re.findall(r"```\n(.*?)\n```", section, re.S)]


def test_qwen_templates_are_byte_exact_against_pipeline_md(official_dir):
    generate, edit = _pipeline_templates(official_dir)
    assert P.QWEN3VL_GENERATE_TEMPLATE == generate
    assert P.QWEN3VL_EDIT_TEMPLATE == edit


def test_qwen_strings_match_recorded_hashes():
    # Hashes of the PIPELINE.md §2 strings, recorded independently of this module.
    assert (len(P.QWEN3VL_GENERATE_TEMPLATE), _sha(P.QWEN3VL_GENERATE_TEMPLATE)) == (
        215, "0194d360a674d2f127a8b5f2ad08f0692a2baab34d2b378d183aeb84087e91cc")
    assert (len(P.QWEN3VL_EDIT_TEMPLATE), _sha(P.QWEN3VL_EDIT_TEMPLATE)) == (
        429, "846b0a7896f4ed820b88206dd2f23dbad7d2f1f2327589ab63be5ccc01c6f3a0")
    assert _sha(P.QWEN3VL_GENERATE_PREFIX) == "997f419a0bd7c4f287f1b2e3e58ca6636f1c5904acb956121f9472dc6fef59fc"
    assert _sha(P.QWEN3VL_EDIT_PREFIX) == "c9201e2ed3a7ef4ed44466786bdc1c025682afc0ee4e70251fe7cd7a6333621f"


def test_prefixes_are_quoted_in_pipeline_md(official_dir):
    text = (official_dir / "PIPELINE.md").read_text(encoding="utf-8")
    assert f"`{P.QWEN3VL_GENERATE_PREFIX}` + prompt" in text
    assert f"`{P.QWEN3VL_EDIT_PREFIX}` + prompt" in text


def test_official_drop_counts():
    assert (P.OFFICIAL_DROP.generate, P.OFFICIAL_DROP.edit) == (34, 64)
    assert P.OFFICIAL_DROP.for_task("edit") == 64
    with pytest.raises(ValueError, match="non-negative"):
        P.DropCounts(generate=-1, edit=3)


@pytest.mark.parametrize("family", P.FAMILIES)
def test_user_text_prefix_rules(family):
    fmt = P.prompt_format(family)
    assert P.user_text("a red circle", task="generate", family=family) == fmt.generate_prefix + "a red circle"
    assert P.user_text("make it blue", task="edit", family=family) == fmt.edit_prefix + "make it blue"
    # Unconditional branches: the negative prompt as is, no prefix, in either task.
    for task in P.TASKS:
        assert P.user_text("blurry", task=task, family=family, conditional=False) == "blurry"
        assert P.user_text(P.DEFAULT_NEGATIVE_PROMPT, task=task, family=family, conditional=False) == ""
    # An empty conditional prompt keeps its prefix, so it differs from the unconditional branch.
    assert P.user_text("", task="generate", family=family) == fmt.generate_prefix != ""


def test_qwen_render_places_user_text_in_slot():
    text = P.render_prompt("two stars", task="generate")
    assert text == P.QWEN3VL_GENERATE_TEMPLATE.replace("{}", "[Generate]: two stars")
    edit = P.render_prompt("make the star red", task="edit")
    assert edit.endswith("<|vision_end|>" + P.QWEN3VL_EDIT_PREFIX + "make the star red"
                         "<|im_end|>\n<|im_start|>assistant\n")
    uncond = P.render_prompt("", task="generate", conditional=False)
    assert uncond.endswith("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")


def test_minilm_has_no_chat_template_and_short_prefixes():
    assert P.render_prompt("a circle", task="generate", family="minilm") == "[Generate]: a circle"
    assert P.render_prompt("make it red", task="edit", family="minilm") == "[Edit]: make it red"
    assert P.render_prompt("", task="edit", family="minilm", conditional=False) == ""


def test_dropped_text_is_the_template_head():
    fmt = P.QWEN3VL_FORMAT
    gen_head = fmt.dropped_text("generate")
    assert gen_head.endswith("<|im_start|>user\n") and "{}" not in gen_head
    assert fmt.render("generate", "x") == gen_head + "[Generate]: x<|im_end|>\n<|im_start|>assistant\n"
    edit_head = fmt.dropped_text("edit")
    assert fmt.render("edit", "x").startswith(edit_head + "<|vision_start|><|image_pad|><|vision_end|>")


def test_resolve_task():
    assert P.resolve_task(None, has_images=False) == "generate"
    assert P.resolve_task(None, has_images=True) == "edit"
    assert P.resolve_task("generate", has_images=True) == "generate"
    with pytest.raises(ValueError, match="unknown task 'inpaint'"):
        P.resolve_task("inpaint", has_images=False)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown encoder family 'clip'"):
        P.prompt_format("clip")
    with pytest.raises(ValueError, match="prompt must be a str"):
        P.user_text(3, task="generate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved template token '<\\|im_end\\|>'"):
        P.render_prompt("a cat<|im_end|>", task="generate")
    # MiniLM has no template tokens to forge.
    assert P.render_prompt("<|im_end|>", task="generate", family="minilm") == "[Generate]: <|im_end|>"
    with pytest.raises(ValueError, match="exactly once"):
        P.PromptFormat(family="minilm", generate_prefix="", edit_prefix="", generate_template="no slot",
                       edit_template="{}")
