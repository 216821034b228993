"""Cost per image of the LVLM plugin's scores and attributions relative to a CLIP-style model, side
by side in one process, and the real models' memory and compute figures computed from their configs.

Measured (CPU by default; random weights, nothing downloaded): the tiny Qwen2.5-VL and Gemma 3
configurations of `xbench_plugin_lvlm.tiny` and CLIP ViT-B/16 at full size (xbench-plugin-clip,
random weights), on the same images and findings, each timing the median of round-robin repeats:
- `native`: the forward pass (scores and the three attention maps, eager attention);
- `scores, sdpa` / `scores, eager`: the scores alone with each attention kernel (the price of eager);
- `scores, full sequences`: the scores with every (image, finding) sequence run in full (one
  image-tower pass per image, no shared prefix), against `scores, eager` (the shared prefix's keys
  and values computed once per image);
- `per-finding forward`: one full official forward per (image, finding), the image tower re-run
  for every finding;
- `gradcam`, `lvlm-gradient-attention`: the gradient explainers (on top of the forward pass).

Computed (not measured): parameters of the released configurations (instantiated on the meta
device), bf16 weights, and forward FLOPs per image (2 x parameters x tokens, image tower plus one
language-model prefix per image and one suffix per finding, or one full sequence per finding
without the shared prefix; embedding tables and the unused LM-head rows excluded).
The tiny models' ratios measure the plugin's overheads, not the real models' cost: for that see
the computed FLOP ratio.

Last line: `lvlm_native_cost_vs_clip: qwen2_5_vl=<x> gemma3=<y>` (tiny configurations, CPU).

    python benchmarks/lvlm_cost.py --images 4 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench_core.plugins import get_registry
from xbench_core.testing import encode_queries, explain, forward

FINDINGS = ["nodule", "mass", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly"]

# SigLIP so400m at 896 px, Gemma 3's image tower (all sizes).
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
          "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 896, "patch_size": 14,
          "vision_use_head": False}  # fmt: skip

def qwen(hidden: int, intermediate: int, layers: int, heads: int, kv: int, vocab: int, tied: bool = False) -> dict[str, Any]:
    """A released Qwen2.5-VL config.json (the numbers that differ between sizes)."""
    tie = {"tie_word_embeddings": True} if tied else {}
    return {
        "text_config": {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab, **tie},
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": hidden},
        **tie,
    }  # fmt: skip


def gemma(hidden: int, intermediate: int, layers: int, heads: int, kv: int) -> dict[str, Any]:
    """A released Gemma 3 config.json (the numbers that differ between sizes)."""
    return {
        "text_config": {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": 256,
                        "vocab_size": 262208, "sliding_window": 1024, "query_pre_attn_scalar": 256},
        "vision_config": SIGLIP,
        "mm_tokens_per_image": 256,
    }  # fmt: skip


# The released configurations (config.json of each Hub repository), for the computed figures.
RELEASED: dict[str, tuple[str, dict[str, Any]]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", qwen(2048, 11008, 36, 16, 2, 151936, tied=True)),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", qwen(3584, 18944, 28, 28, 4, 152064)),
    "google/medgemma-4b-it": ("gemma3", gemma(2560, 10240, 34, 8, 4)),
    "google/gemma-3-12b-it": ("gemma3", gemma(3840, 15360, 48, 16, 8)),
}
# About (real tokenizers): text tokens all questions share (turn markers, system turn, "Is there
# evidence of") and those of each finding's suffix (the phrase, the answer instruction, the
# generation prompt).
PREFIX_TEXT, SUFFIX_TEXT = 25, 20
CLIP_IMAGE_PARAMS, CLIP_TOKENS = 86_192_640, 197  # ViT-B/16 image tower, 196 patches + class token
BF16_BYTES = 2
SEQUENCES = 16  # the lvlm `sequences` option's default: sequences per language-model call


def median_seconds(work: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median wall time of each callable, run round-robin `repeats` times after one warm-up."""
    times: dict[str, list[float]] = {k: [] for k in work}
    for fn in work.values():
        fn()
    for _ in range(repeats):
        for key, fn in work.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def lvlm_work(model: Any, images: list[np.ndarray]) -> dict[str, Any]:
    """The timed calls of one LVLM (each over all images)."""
    registry = get_registry()
    pixels = torch.stack([model.preprocess(im)[0] for im in images])
    queries = encode_queries(model, FINDINGS)
    gradcam = registry.explainers["gradcam"].build()
    gradient_attention = registry.explainers["lvlm-gradient-attention"].build()
    lvlm = model.module.lvlm

    def scores(kernel: str) -> Any:
        def run() -> None:
            lvlm.set_attn_implementation(kernel)
            try:
                with torch.inference_mode():
                    model.logits(pixels, queries)
            finally:
                lvlm.set_attn_implementation("eager")

        return run

    def full_sequences() -> None:
        with torch.inference_mode():
            model.logits(pixels, dataclasses.replace(queries, prefix=0))

    def per_finding() -> None:
        """One official forward per (image, finding): the image tower runs for every finding."""
        with torch.inference_mode():
            for b in range(len(images)):
                for f in range(len(FINDINGS)):
                    ids = queries.input_ids[f : f + 1, : int(queries.lengths[f])]
                    kind = (ids == model.image_token_id).long()
                    extra: dict[str, Any]
                    if model.family == "qwen2_5_vl":
                        from xbench_plugin_lvlm.model import patchify

                        side = model.input_size[0] // model.patch
                        extra = {"pixel_values": patchify(pixels[b : b + 1], model.patch, model.merge, model.temporal),
                                 "image_grid_thw": torch.tensor([[1, side, side]]), "mm_token_type_ids": kind}
                    else:
                        extra = {"pixel_values": pixels[b : b + 1], "token_type_ids": kind}
                    lvlm(input_ids=ids, logits_to_keep=1, use_cache=False, **extra)

    return {
        "native": lambda: forward(model, pixels, queries),
        "scores, sdpa": scores("sdpa"),
        "scores, eager": scores("eager"),
        "scores, full sequences": full_sequences,
        "per-finding forward": per_finding,
        "gradcam": lambda: explain(gradcam, True, model, pixels, queries, forward(model, pixels, queries)),
        "lvlm-gradient-attention": lambda: explain(
            gradient_attention, True, model, pixels, queries, forward(model, pixels, queries)
        ),
    }


def computed_figures() -> list[str]:
    """Parameters, bf16 weights and forward FLOPs per image of the released models vs CLIP ViT-B/16."""
    from transformers import AutoModelForImageTextToText, Gemma3Config, Qwen2_5_VLConfig

    clip_flops = 2 * CLIP_IMAGE_PARAMS * CLIP_TOKENS
    lines = [
        f"| model | parameters | bf16 weights | image tokens | eager attention, {SEQUENCES} sequences (bf16) | "
        f"forward FLOPs per image, {len(FINDINGS)} findings | vs CLIP ViT-B/16 | without the shared prefix |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for repo, (family, kwargs) in RELEASED.items():
        config = (Qwen2_5_VLConfig if family == "qwen2_5_vl" else Gemma3Config)(**kwargs)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        if family == "qwen2_5_vl":
            vision = sum(p.numel() for p in model.model.visual.parameters())
            patches, tokens = (224 // 14) ** 2, (224 // 28) ** 2
        else:
            vision = sum(p.numel() for p in model.model.vision_tower.parameters())
            side = config.vision_config.image_size // config.vision_config.patch_size
            patches, tokens = side * side, config.mm_tokens_per_image
        text = config.get_text_config()
        embeddings = text.vocab_size * text.hidden_size
        language = sum(p.numel() for p in model.model.language_model.parameters()) - embeddings
        prefix, length = tokens + PREFIX_TEXT, tokens + PREFIX_TEXT + SUFFIX_TEXT
        image = 2 * vision * patches
        flops = image + 2 * language * (prefix + len(FINDINGS) * SUFFIX_TEXT)
        full = image + len(FINDINGS) * 2 * language * length
        attention = text.num_hidden_layers * text.num_attention_heads * length * length * BF16_BYTES * SEQUENCES
        lines.append(
            f"| {repo} | {total / 1e9:.2f} B | {BF16_BYTES * total / 2**30:.1f} GiB | {tokens} | "
            f"{attention / 2**30:.2f} GiB | {flops / 1e12:.2f} TFLOP | {flops / clip_flops:.0f}x | "
            f"{full / clip_flops:.0f}x |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=512)
    args = ap.parse_args()
    from xbench_plugin_lvlm.tiny import write_tiny_folder

    registry = get_registry()
    rng = np.random.default_rng(0)
    images = [rng.random((args.resolution, args.resolution), dtype=np.float32) for _ in range(args.images)]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="xbench-lvlm-bench-") as tmp:
        models = {
            family: registry.models["lvlm"].build(
                model=str(write_tiny_folder(Path(tmp) / family, family)), checkpoint="random"
            )
            for family in ("qwen2_5_vl", "gemma3")
        }
        clip = registry.models["clip"].build(checkpoint="random")
        clip.module.eval()
        clip_pixels = torch.stack([clip.preprocess(im)[0] for im in images])
        clip_queries = encode_queries(clip, FINDINGS)
        gradcam = registry.explainers["gradcam"].build()
        work = {
            ("clip", "native"): lambda: forward(clip, clip_pixels, clip_queries),
            ("clip", "gradcam"): lambda: explain(
                gradcam, True, clip, clip_pixels, clip_queries, forward(clip, clip_pixels, clip_queries)
            ),
        }
        for family, model in models.items():
            work.update({(family, k): fn for k, fn in lvlm_work(model, images).items()})
        flat = median_seconds({f"{m}|{k}": fn for (m, k), fn in work.items()}, args.repeats)
    for key, seconds in flat.items():
        m, k = key.split("|")
        results.setdefault(m, {})[k] = seconds / args.images
    unit = results["clip"]["native"]
    print(f"CPU, {args.images} images of {args.resolution}^2, {len(FINDINGS)} findings, median of {args.repeats};"
          f" unit = CLIP ViT-B/16 native forward, {unit * 1000:.0f} ms per image")
    print("| model | call | ms per image | vs CLIP native |")
    print("|---|---|---|---|")
    for m, calls in results.items():
        for k, seconds in calls.items():
            print(f"| {m} | {k} | {seconds * 1000:.1f} | {seconds / unit:.2f} |")
    for family in models:
        r = results[family]
        print(f"{family}: eager/sdpa (scores) = {r['scores, eager'] / r['scores, sdpa']:.2f}; full sequences / "
              f"shared prefix = {r['scores, full sequences'] / r['scores, eager']:.2f}; per-finding forwards / "
              f"shared prefix = {r['per-finding forward'] / r['scores, eager']:.2f}")
    print("computed from the released configurations (not measured):")
    for line in computed_figures():
        print(line)
    print("lvlm_native_cost_vs_clip: " + " ".join(f"{f}={results[f]['native'] / unit:.2f}" for f in models))


if __name__ == "__main__":
    main()
