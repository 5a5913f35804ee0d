"""Prompt templates and task prefixes: the one definition, imported by every encoder, pipeline and trainer.

DreamLite conditions one U-Net on two tasks, and the text is the only place where the tasks differ in wording
(PIPELINE.md §2): a *task prefix* on the user text of the conditional branch, and — for the Qwen3-VL encoder —
a per-task chat template. Unconditional (CFG) branches carry the negative prompt **as is**, without any prefix,
inside the same task's template.

Two encoder families are defined:

* ``qwen3vl`` — the official checkpoint's interface. The strings below are the byte sequences the official
  model was trained on (PIPELINE.md §2), quoted as data; they must not be reworded.
* ``minilm`` — our small sentence encoder for the Shapes world. No chat template; short ``[Generate]: `` /
  ``[Edit]: `` prefixes only.

Empty prompts: an empty *conditional* prompt is allowed and still gets its task prefix, exactly as the official
pipeline does (``"[Generate]: " + ""``); it is therefore **not** the same as the unconditional branch, which is
the prefix-less negative prompt (default ``""``). Condition dropout in training must use the unconditional
branch (``conditional=False``) so that training and CFG sampling see the same "no text" embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping, get_args

Task = Literal["generate", "edit"]
TASKS: tuple[Task, ...] = get_args(Task)
Family = Literal["qwen3vl", "minilm"]
FAMILIES: tuple[Family, ...] = get_args(Family)

# The negative prompt used by unconditional branches when none is given (PIPELINE.md §2: default empty string).
DEFAULT_NEGATIVE_PROMPT = ""

# The slot the user text goes into; each template holds it exactly once.
_SLOT = "{}"
# Qwen3-VL's vision block in the edit template; the processor expands the single image pad into the image's
# patch tokens (PIPELINE.md §3).
VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
_QWEN_RESERVED = ("<|im_start|>", "<|im_end|>", VISION_START, IMAGE_PAD, VISION_END, "<|video_pad|>",
                  "<|endoftext|>")

# --- The official conditioning strings (PIPELINE.md §2), byte-exact. -----------------------------------
QWEN3VL_GENERATE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QWEN3VL_EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QWEN3VL_GENERATE_PREFIX = "[Generate]: "
QWEN3VL_EDIT_PREFIX = (
    "[Edit]: A diptych with two side-by-side images of the same scene. Compared to the right side, the left one has "
)

# --- Our MiniLM prefixes. --------------------------------------------------------------------------------
# MiniLM is a 6-layer sentence encoder with a 256-token window and no chat training: the official ~60-token
# system turn plus the ~25-token diptych preamble would dominate both its context and its (mean-pooled)
# summary, drowning the few words that describe the scene. A short task tag keeps the task signal (the same
# words as the official prefixes' heads) while leaving the prompt's own tokens the bulk of the sequence.
MINILM_GENERATE_PREFIX = "[Generate]: "
MINILM_EDIT_PREFIX = "[Edit]: "


@dataclass(frozen=True)
class DropCounts:
    """How many leading tokens the Qwen3-VL adapter drops per task (PIPELINE.md §1)."""

    generate: int
    edit: int

    def __post_init__(self) -> None:
        for task in TASKS:
            value = getattr(self, task)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"drop count for {task!r} must be a non-negative int, got {value!r}")

    def for_task(self, task: Task) -> int:
        return getattr(self, check_task(task))


# Documented official values: the Qwen tokenizer yields 34 tokens of system turn + user header in the generate
# template and 64 tokens before <|vision_start|> in the edit template (PIPELINE.md §1).
OFFICIAL_DROP = DropCounts(generate=34, edit=64)


def check_task(task: str) -> Task:
    """``task`` itself if it is a known task, else a ValueError naming the known ones."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task  # type: ignore[return-value]


def resolve_task(task: str | None, *, has_images: bool) -> Task:
    """The task for an encode call: explicit if given, else ``edit`` with images and ``generate`` without."""
    if task is None:
        return "edit" if has_images else "generate"
    return check_task(task)


@dataclass(frozen=True)
class PromptFormat:
    """One encoder family's task prefixes and templates (``{}`` marks the user-text slot)."""

    family: Family
    generate_prefix: str
    edit_prefix: str
    generate_template: str
    edit_template: str
    reserved: tuple[str, ...] = ()  # substrings a user prompt may not contain (would forge template tokens)

    def __post_init__(self) -> None:
        for task in TASKS:
            template = self.template(task)
            if template.count(_SLOT) != 1:
                raise ValueError(f"{self.family} {task} template must contain {_SLOT!r} exactly once")

    def prefix(self, task: Task) -> str:
        return self.generate_prefix if check_task(task) == "generate" else self.edit_prefix

    def template(self, task: Task) -> str:
        return self.generate_template if check_task(task) == "generate" else self.edit_template

    def user_text(self, task: Task, prompt: str, *, conditional: bool = True) -> str:
        """The text placed into the template's slot: prefix + prompt, or the negative prompt as is."""
        self._check_prompt(prompt)
        return self.prefix(task) + prompt if conditional else prompt

    def render(self, task: Task, prompt: str, *, conditional: bool = True) -> str:
        """The full string the encoder's tokenizer sees."""
        head, tail = self.template(task).split(_SLOT)
        return head + self.user_text(task, prompt, conditional=conditional) + tail

    def dropped_text(self, task: Task) -> str:
        """The template head that the official token drop removes (PIPELINE.md §1).

        Generate: everything before the user text. Edit: everything before the vision block, so the kept
        sequence starts with the image tokens.
        """
        head = self.template(task).split(_SLOT)[0]
        return head.split(VISION_START)[0]

    def _check_prompt(self, prompt: str) -> None:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        for token in self.reserved:
            if token in prompt:
                raise ValueError(f"prompt must not contain the reserved template token {token!r}: {prompt[:80]!r}")


QWEN3VL_FORMAT = PromptFormat(
    family="qwen3vl",
    generate_prefix=QWEN3VL_GENERATE_PREFIX,
    edit_prefix=QWEN3VL_EDIT_PREFIX,
    generate_template=QWEN3VL_GENERATE_TEMPLATE,
    edit_template=QWEN3VL_EDIT_TEMPLATE,
    reserved=_QWEN_RESERVED,
)
MINILM_FORMAT = PromptFormat(
    family="minilm",
    generate_prefix=MINILM_GENERATE_PREFIX,
    edit_prefix=MINILM_EDIT_PREFIX,
    generate_template=_SLOT,  # no chat template: the user text is the whole input
    edit_template=_SLOT,
)
FORMATS: Mapping[Family, PromptFormat] = MappingProxyType({"qwen3vl": QWEN3VL_FORMAT, "minilm": MINILM_FORMAT})


def prompt_format(family: str) -> PromptFormat:
    """The format of an encoder family; unknown families list the known ones."""
    if family not in FORMATS:
        raise ValueError(f"unknown encoder family {family!r}; expected one of {', '.join(FAMILIES)}")
    return FORMATS[family]  # type: ignore[index]


def user_text(prompt: str, *, task: Task, family: Family = "qwen3vl", conditional: bool = True) -> str:
    """The user text for (task, prompt, conditional) under ``family``'s prefixes."""
    return prompt_format(family).user_text(task, prompt, conditional=conditional)


def render_prompt(prompt: str, *, task: Task, family: Family = "qwen3vl", conditional: bool = True) -> str:
    """The full templated string for (task, prompt, conditional) as ``family``'s tokenizer sees it."""
    return prompt_format(family).render(task, prompt, conditional=conditional)
