"""Where does binding fail? Six measurements behind the "binding" tags of GenEval-Shapes (two_object, position,
color_attr), each ruling one part of the pipeline in or out:

1. **Failure modes of a model's benchmark images** (a GenEval ``results.jsonl``): how many objects were drawn,
   whether each named shape is present, whether both named colours are present, and how often the colours are
   present but swapped between the shapes. For position prompts with both shapes drawn, the relation asked
   against the relation drawn (the benchmark's own ``relative_position``): a model that knows the axis (left/right
   vs above/below) but not which shape is the subject fills the two 2x2 blocks on the diagonal evenly.
2. **The VAE's ceiling**: GenEval-Shapes of ground-truth renders passed through the model's VAE (encode, decode).
   If the VAE lost small shapes, no U-Net could score above this.
3. **The text encoder**: does MiniLM's state at a noun carry *its own* colour? A linear probe per layer, trained on
   three quarters of all "a photo of a C1 S1 and a C2 S2" prompts and tested on the rest: accuracy at predicting
   C2 from the token state of S2, and how often it picks C1 (the other object's colour) instead. And for position
   prompts: can the state of each noun tell which side of the image it must take (its role in the relation)?
4. **Which U-Net path decides the shape** (only for a U-Net with ``pooled_text_embed``, whose masked-mean text
   vector is added to the time embedding of every position): single-object prompts, 8 seeds per shape, sampled
   as the model's default with the conditional rows' pooled vector (a) as is, (b) taken from the prompt of
   another shape, (c) taken from the empty prompt; the detector says whether the drawn shape is the tokens' or
   the pooled prompt's. A global vector can only say one shape for the whole image.
5. **Noise or words** (``side_by_noise``): under "A rel B", "B rel A", "A inv B", "B inv A" with the same seeds, is
   A always on the same side? Then the starting noise, not the words, decides the arrangement.
6. **Does the network read the binding at all?** (``twin_accuracy``): rendered position / color_attr scenes, each
   scored with the flow-matching error under its own prompt and under its role-swapped twin (shapes trade sides,
   colours trade shapes; ``dreamlite.shapes.language.role_swap``), same noise and t. The share of scenes whose own
   prompt explains them better, per noise level: 0.5 = the network cannot tell the prompt from its twin.

    python benchmarks/binding_diagnosis.py --model checkpoints/dreamlite-tiny-shapes \
        --results runs/fulleval-v2/geneval/results.jsonl
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamlite.bench import geneval
from dreamlite.shapes.geometry import SHAPES
from dreamlite.shapes.scene import COLORS

BINDING_TAGS = ("two_object", "position", "color_attr")


def failure_modes(results: Path) -> dict[str, dict[str, float]]:
    """Per binding tag: shares of images with 2 objects, each named shape present, both colours present, and
    both shapes and colours present but bound the wrong way round."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    table = {}
    for tag in BINDING_TAGS:
        counts, n = collections.Counter(), 0
        for row in (r for r in rows if r["tag"] == tag):
            n += 1
            want = json.loads(row["metadata"])["include"]
            found = json.loads(row["details"])
            classes = [d["class"] for d in found]
            named = [w["class"] for w in want]
            counts["correct"] += bool(row["correct"])
            counts["two objects drawn"] += len(found) == 2
            counts["first-named shape present"] += named[0] in classes
            counts["second-named shape present"] += named[1] in classes
            counts["both named shapes present"] += all(c in classes for c in named)
            if tag == "color_attr":
                colours = {w["color"] for w in want}
                counts["both colours present"] += colours <= {d["color"] for d in found}
                pairs = {(w["class"], w["color"]) for w in want}
                counts["shapes and colours present, swapped"] += (
                    all(c in classes for c in named) and colours <= {d["color"] for d in found}
                    and not pairs <= {(d["class"], d["color"]) for d in found})
        table[tag] = {k: v / n for k, v in counts.items()}
    return table


RELATIONS = ("left of", "right of", "above", "below")


def relation_confusion(results: Path) -> dict[str, dict[str, int]]:
    """Position prompts: asked relation -> counts of the relations drawn (subject vs reference, first detection of
    each), plus 'missing' when either shape is absent. Several relations can hold at once (diagonal placements)."""
    from dreamlite.shapes.geometry import relative_position

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    table = {r: collections.Counter() for r in RELATIONS}
    for row in (r for r in rows if r["tag"] == "position"):
        reference, subject = json.loads(row["metadata"])["include"]  # subject carries ["relation", 0]
        asked = subject["position"][0]
        first = first_boxes((d["class"], d["box"]) for d in json.loads(row["details"]))
        if subject["class"] not in first or reference["class"] not in first:
            table[asked]["missing"] += 1
            continue
        drawn = relative_position(first[subject["class"]], first[reference["class"]])
        for rel in drawn or ("none",):
            table[asked][rel] += 1
    return {k: dict(v) for k, v in table.items()}


def first_boxes(detections) -> dict[str, np.ndarray]:
    """The box of the first detection of each class, from (class, box) pairs in detection order."""
    first: dict[str, np.ndarray] = {}
    for cls, box in detections:
        first.setdefault(cls, np.asarray(box, dtype=float))
    return first


@torch.no_grad()
def vae_ceiling(model: Path) -> dict[str, float]:
    """GenEval-Shapes per tag of ground-truth renders after the model's VAE (and of the renders themselves)."""
    from dreamlite.models import vae as vae_lib
    from dreamlite.pipeline import DreamLitePipeline

    vae = DreamLitePipeline.from_pretrained(model).vae
    rows = geneval.load_metadata(geneval.default_metadata_path())
    truth = geneval.ground_truth_fn(rows)

    def through_vae(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        x = vae_lib.to_tensor(np.stack([np.asarray(im) for im in truth(prompts, seeds)]))  # [B, 3, H, W]
        y = vae_lib.decode(vae, vae_lib.encode(vae, x))  # [B, 3, H, W] in [-1, 1]
        return [Image.fromarray(a) for a in vae_lib.to_uint8(y)]

    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("renders", truth), ("renders through the VAE", through_vae)):
            summary = geneval.run(rows, Path(tmp) / name.replace(" ", "_"), fn)
            scores[name] = {t.tag: t.correct / t.total for t in summary.tags}
    return scores


def _probe_accuracy(x: torch.Tensor, y: torch.Tensor, cut: int, classes: int, epochs: int) -> torch.Tensor:
    """Predictions on x[cut:] of a linear probe trained on (x[:cut], y[:cut]); features standardised on the train
    part."""
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    torch.manual_seed(0)
    with torch.enable_grad():
        probe = torch.nn.Linear(x.shape[1], classes)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(probe(x[:cut]), y[:cut]).backward()
            opt.step()
    return probe(x[cut:]).argmax(-1)


def _token_index(tok, ids: list[int], word: str, last: bool) -> int:
    """Index of the first (or last) occurrence of ``word``'s first word piece in one tokenised prompt."""
    piece = tok.convert_tokens_to_ids(tok.tokenize(word)[0])
    hits = [i for i, t in enumerate(ids) if t == piece]
    return hits[-1] if last else hits[0]


@torch.no_grad()
def text_probe(seed: int = 0, epochs: int = 300) -> list[tuple[int, float, float]]:
    """Per MiniLM layer: (layer, accuracy of the noun's own colour, share that picks the other object's colour)."""
    from dreamlite.models.text import MiniLMTextEncoder

    encoder = MiniLMTextEncoder.from_pretrained()
    tok, model = encoder.tokenizer, encoder.model
    rows = [(c1, s1, c2, s2) for c1, c2 in itertools.permutations(COLORS, 2)
            for s1, s2 in itertools.permutations(SHAPES, 2)]
    random.Random(seed).shuffle(rows)
    batch = tok([f"a photo of a {c1} {s1} and a {c2} {s2}" for c1, s1, c2, s2 in rows], return_tensors="pt",
                padding=True)
    states = model(**batch, output_hidden_states=True).hidden_states  # layers + 1 of [N, L, D]
    noun2 = torch.tensor([_token_index(tok, batch["input_ids"][n].tolist(), r[3], last=True)
                          for n, r in enumerate(rows)])
    own = torch.tensor([COLORS.index(r[2]) for r in rows])
    other = torch.tensor([COLORS.index(r[0]) for r in rows])
    cut = len(rows) * 3 // 4
    out = []
    for layer, h in enumerate(states):
        pred = _probe_accuracy(h[torch.arange(len(rows)), noun2], own, cut, len(COLORS), epochs)  # x: [N, D]
        out.append((layer, (pred == own[cut:]).float().mean().item(), (pred == other[cut:]).float().mean().item()))
    return out


@torch.no_grad()
def side_probe(seed: int = 0, epochs: int = 300) -> list[tuple[int, float]]:
    """Per MiniLM layer: accuracy of a linear probe that reads, from a noun's state in a position prompt (every
    train template and relation word), the side of the image that noun must take (left/top vs right/bottom).
    The subject takes the relation's side and the reference the other, so this is the role the U-Net must bind."""
    from dreamlite.models.text import MiniLMTextEncoder
    from dreamlite.shapes import language

    encoder = MiniLMTextEncoder.from_pretrained()
    tok, model = encoder.tokenizer, encoder.model
    words = language.all_templates("train")
    rows = [(a, rel, b, template, word) for a, b in itertools.permutations(SHAPES, 2)
            for rel in ("left of", "right of", "above", "below") for word in words[f"relation:{rel}"]
            for template in words["prompt:position"]]
    random.Random(seed).shuffle(rows)
    batch = tok([t.format(a=language.noun_phrase(a), rel=w, b=language.noun_phrase(b)) for a, _, b, t, w in rows],
                return_tensors="pt", padding=True)
    states = model(**batch, output_hidden_states=True).hidden_states  # layers + 1 of [N, L, D]
    index, side = [], []
    for n, (a, rel, b, _, _) in enumerate(rows):
        ids = batch["input_ids"][n].tolist()
        first = int(rel in ("right of", "below"))  # the subject's side: 0 = left / top
        index += [(n, _token_index(tok, ids, a, last=False)), (n, _token_index(tok, ids, b, last=True))]
        side += [first, 1 - first]
    y, cut = torch.tensor(side), len(side) * 3 // 4 // 2 * 2  # a prompt's two nouns stay on one side of the cut
    out = []
    for layer, h in enumerate(states):
        x = torch.stack([h[n, i] for n, i in index])  # [2N, D]
        out.append((layer, (_probe_accuracy(x, y, cut, 2, epochs) == y[cut:]).float().mean().item()))
    return out


@torch.no_grad()
def pooled_swap(model: Path, per_shape: int = 8) -> dict[str, dict[str, float]]:
    """Shares of images whose first detection is the tokens' shape, the pooled prompt's shape, or nothing."""
    from dreamlite.pipeline import DreamLitePipeline
    from dreamlite.shapes.detect import detect

    pipe = DreamLitePipeline.from_pretrained(model)
    unet = pipe.unet
    if unet.pooled_text_proj is None:
        raise SystemExit(f"{model}: its U-Net has no pooled text path (pooled_text_embed is off)")
    tokens = [s for s in SHAPES for _ in range(per_shape)]
    others = [SHAPES[(SHAPES.index(s) + 2) % len(SHAPES)] for s in tokens]
    prompts = [f"a photo of a {s}" for s in tokens]

    def masked_mean(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [N, D], as MobileUNet.embed
        w = mask.to(text.dtype)
        return (text * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)

    def pooled(texts: list[str]) -> torch.Tensor:
        text, mask = pipe.text_encoder.encode(texts, task="generate")
        return masked_mean(unet.encoder_hid_proj(text) if unet.encoder_hid_proj is not None else text, mask)

    embed, override = unet.embed, {}

    def swapped_embed(timestep, time_ids, text, mask, batch, dtype):
        emb = embed(timestep, time_ids, text, mask, batch, dtype)
        if "pooled" in override:
            rows = slice(batch - len(prompts), batch)  # the conditional rows come last (sampling.velocity)
            emb = emb.clone()
            emb[rows] += (unet.pooled_text_proj(override["pooled"])
                          - unet.pooled_text_proj(masked_mean(text[rows], mask[rows])))
        return emb

    unet.embed = swapped_embed
    table = {}
    for name, source in (("as is", None), ("another shape's prompt", [f"a photo of a {s}" for s in others]),
                         ("the empty prompt", [""] * len(prompts))):
        override.clear()
        if source is not None:
            override["pooled"] = pooled(source)
        generators = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        images = pipe(prompts, generator=generators, output_type="np", progress=False).images
        first = [(detect(np.asarray(im)) or [None])[0] for im in images]
        table[name] = {"tokens' shape": np.mean([d is not None and d.cls == s for d, s in zip(first, tokens)]),
                       "pooled prompt's shape": np.mean([d is not None and d.cls == s for d, s in zip(first, others)]),
                       "nothing": np.mean([d is None for d in first])}
    unet.embed = embed
    return table


@torch.no_grad()
def side_by_noise(model: Path, seeds: int = 12) -> dict[str, float]:
    """Measurement 5: share of seeds whose arrangement of A and B is the same under all four prompts, and share of
    images (with both shapes) on the asked side."""
    from dreamlite.pipeline import DreamLitePipeline
    from dreamlite.shapes.detect import detect
    from dreamlite.shapes.geometry import relative_position

    pipe = DreamLitePipeline.from_pretrained(model)
    cases = [(("left of", "right of"), ("star", "square")), (("left of", "right of"), ("heart", "triangle")),
             (("above", "below"), ("circle", "star")), (("above", "below"), ("square", "heart"))]
    same, seen, right, drawn = 0, 0, 0, 0
    for (rel, inv), (a, b) in cases:
        prompts = [(a, rel, b), (b, rel, a), (a, inv, b), (b, inv, a)]
        sides = []  # per prompt, per seed: does A stand in relation `rel` to B? (None: not both drawn / too close)
        for subject, relation, reference in prompts:
            images = pipe([f"a photo of a {subject} {relation} a {reference}"] * seeds, output_type="np",
                          generator=[torch.Generator().manual_seed(2000 + i) for i in range(seeds)],
                          progress=False).images
            row = []
            for image in images:
                boxes = first_boxes((d.cls, d.box) for d in detect(np.asarray(image)))
                if a in boxes and b in boxes:
                    found = relative_position(boxes[a], boxes[b])
                    row.append(True if rel in found else False if inv in found else None)
                else:
                    row.append(None)
                if row[-1] is not None:
                    drawn += 1
                    wants = (subject == a) == (relation == rel)  # A must stand `rel` of B
                    right += row[-1] == wants
            sides.append(row)
        for per_seed in zip(*sides):
            if None not in per_seed:
                seen += 1
                same += len(set(per_seed)) == 1
    return {"seeds with all four drawn": seen, "same arrangement under all four prompts": same / max(seen, 1),
            "images with both shapes": drawn, "on the asked side": right / max(drawn, 1)}


def twin_accuracy(model: Path, n: int = 256, ts: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
                  repeats: int = 2) -> dict[str, dict[float, float]]:
    """Measurement 6: per binding tag and noise level t, the share of n rendered scenes whose flow-matching error
    under their own prompt is lower than under the role-swapped twin (same noise)."""
    from dreamlite.models.vae import encode, to_tensor
    from dreamlite.pipeline import DreamLitePipeline
    from dreamlite.shapes.language import role_swap
    from dreamlite.shapes.tasks import sample_t2i
    from dreamlite.train.flow import flow_matching_loss

    pipe = DreamLitePipeline.from_pretrained(model)
    out: dict[str, dict[float, float]] = {}
    g = torch.Generator().manual_seed(0)
    for tag in ("position", "color_attr"):
        b = sample_t2i(np.random.default_rng(999_123), n, tag_weights={tag: 1.0})
        twins = [role_swap(p, tag) for p in b.prompts]
        with torch.no_grad():
            x0 = encode(pipe.vae, to_tensor(b.images))  # [n, C, h, w]
            text, mask = pipe.text_encoder.encode(b.prompts, task="generate")
            twin_text, twin_mask = pipe.text_encoder.encode(twins, task="generate")
            size = float(b.images.shape[1])
            args = (torch.zeros_like(x0),)
            time_ids = torch.tensor([[size, size]] * n)
            out[tag] = {}
            for t in ts:
                wins = []
                for _ in range(repeats):
                    noise, tt = torch.randn(x0.shape, generator=g), torch.full((n,), t)
                    own = flow_matching_loss(pipe.unet, x0, *args, text, mask, time_ids, tt, noise, reduce=False)
                    other = flow_matching_loss(pipe.unet, x0, *args, twin_text, twin_mask, time_ids, tt, noise,
                                               reduce=False)
                    wins.append((own < other).float())
                out[tag][t] = torch.cat(wins).mean().item()
    return out


def has_pooled_text(model: Path) -> bool:
    """Whether the model folder's U-Net adds a pooled text vector to its time embedding."""
    folder = model / "unet" if (model / "unet" / "config.json").is_file() else model
    return bool(json.loads((folder / "config.json").read_text()).get("pooled_text_embed"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder whose VAE and U-Net paths are measured (skip: neither)")
    ap.add_argument("--results", help="a GenEval results.jsonl of that model (skip: no failure modes)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.results:
        modes = failure_modes(Path(args.results))
        keys = sorted({k for row in modes.values() for k in row})
        print("| share of images | " + " | ".join(BINDING_TAGS) + " |\n|---|" + "---:|" * len(BINDING_TAGS))
        for k in keys:
            print(f"| {k} | " + " | ".join(f"{modes[t][k]:.2f}" if k in modes[t] else "-" for t in BINDING_TAGS)
                  + " |")
        confusion = relation_confusion(Path(args.results))
        cols = [*RELATIONS, "none", "missing"]
        print("\n| position: asked \\ drawn | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
        for asked, row in confusion.items():
            print(f"| {asked} | " + " | ".join(str(row.get(c, 0)) for c in cols) + " |")
    if args.model:
        ceiling = vae_ceiling(Path(args.model))
        tags = list(next(iter(ceiling.values())))
        print("\n| GenEval-Shapes | " + " | ".join(tags) + " | overall |\n|---|" + "---:|" * (len(tags) + 1))
        for name, s in ceiling.items():
            print(f"| {name} | " + " | ".join(f"{s[t]:.3f}" for t in tags) + f" | {np.mean(list(s.values())):.3f} |")
        if has_pooled_text(Path(args.model)):
            swap = pooled_swap(Path(args.model))
            cols = list(next(iter(swap.values())))
            print("\n| pooled text vector of the conditional rows | " + " | ".join(cols) + " |\n|---|"
                  + "---:|" * len(cols))
            for name, row in swap.items():
                print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
        side = side_by_noise(Path(args.model))
        print("\n| noise or words | " + " | ".join(side) + " |\n|---|" + "---:|" * len(side))
        print("| " + args.model + " | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                                     for v in side.values()) + " |")
        twins = twin_accuracy(Path(args.model))
        ts = list(next(iter(twins.values())))
        print("\n| own prompt beats its twin, t = | " + " | ".join(str(t) for t in ts) + " |\n|---|"
              + "---:|" * len(ts))
        for tag, row in twins.items():
            print(f"| {tag} | " + " | ".join(f"{row[t]:.3f}" for t in ts) + " |")
    print("\n| MiniLM layer | noun -> own colour | -> other object's colour |\n|---:|---:|---:|")
    for layer, acc, other in text_probe():
        print(f"| {layer} | {acc:.3f} | {other:.3f} |")
    print("\n| MiniLM layer | position prompt: noun -> its side (chance 0.5) |\n|---:|---:|")
    for layer, acc in side_probe():
        print(f"| {layer} | {acc:.3f} |")


if __name__ == "__main__":
    main()
