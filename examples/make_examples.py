"""Generate the demo's example media and ``examples.json`` (deterministic; run from the repository root).

    python examples/make_examples.py

The media are procedural coloured-shape scenes from :mod:`unipixel.training.shapes`, the only things the
bundled demo model knows. Every entry of ``examples.json`` holds a media file, a ready-made question,
visual prompts in the API/CLI conventions (original pixels, sampled-frame index), optional follow-up
questions and, per turn, what a right answer holds (``expect``: words, and the colour of each object whose
mask it must return, in order; ``tests/test_examples.py`` checks them), one entry per kind of question.
``real_model_only`` marks the examples the bundled demo model cannot answer (they need a point or box read).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unipixel.rendering import write_mp4
from unipixel.training.shapes import box_prompt, make_scene, point_prompt

HERE = Path(__file__).resolve().parent
VIDEO_FPS = 8
VIDEO_FRAMES = 24

# (seed, video) -> a scene whose objects have distinct colours and shapes (chosen by searching seeds)
SCENE_A = 2911   # image, grey: medium red circle, small orange square, medium blue star, small yellow triangle
SCENE_B = 101    # image, gradient: large blue circle, small orange triangle, medium red square, medium yellow star
SCENE_V = 1085   # video, grey: large blue star (still), large green square (down), medium orange triangle (left)


def scene(seed: int, video: bool, num_objects: int):
    kwargs = {"num_frames": VIDEO_FRAMES} if video else {}
    return make_scene(np.random.default_rng(seed), video=video, num_objects=num_objects, **kwargs)


def find(sc, description: str) -> int:
    for i, obj in enumerate(sc.objects):
        if obj.description.endswith(description):
            return i
    raise LookupError(f"no {description} in the scene: {[o.description for o in sc.objects]}")


def scribble(mask: np.ndarray, width: int = 5) -> dict:
    """A short horizontal stroke through the object's interior point, kept inside the mask."""
    x, y = point_prompt(mask)
    row = np.flatnonzero(mask[y])
    half = max(2, int((row.max() - row.min()) * 0.3))
    xs = [max(int(row.min()) + width, x - half), x, min(int(row.max()) - width, x + half)]
    return {"scribble": [[xs[0], y], [xs[1], y + 2], [xs[2], y]], "width": width}


def poster(frame: np.ndarray) -> Image.Image:
    """First video frame with a play badge, for the example gallery."""
    img = Image.fromarray(frame).convert("RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    w, h = img.size
    r = min(w, h) // 7
    cx, cy = w // 2, h // 2
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(0, 0, 0, 140))
    draw.polygon([(cx - r // 3, cy - r // 2), (cx - r // 3, cy + r // 2), (cx + r // 2, cy)], fill=(255, 255, 255, 230))
    return img


def main() -> None:
    a, b, v = scene(SCENE_A, False, 4), scene(SCENE_B, False, 4), scene(SCENE_V, True, 3)
    Image.fromarray(a.frames[0]).save(HERE / "shapes_grey.png", optimize=True)
    Image.fromarray(b.frames[0]).save(HERE / "shapes_gradient.png", optimize=True)
    write_mp4(HERE / "moving_shapes.mp4", v.frames, fps=VIDEO_FPS, crf=23)
    (HERE / "thumbs").mkdir(exist_ok=True)
    poster(v.frames[0]).save(HERE / "thumbs" / "moving_shapes.png", optimize=True)

    blue_star = a.masks[find(a, "blue star"), 0]
    yellow_tri = a.masks[find(a, "yellow triangle"), 0]
    orange_tri_b = b.masks[find(b, "orange triangle"), 0]
    red_square_b = b.masks[find(b, "red square"), 0]
    blue_circle_b = b.masks[find(b, "blue circle"), 0]
    orange_tri_v = v.masks[find(v, "orange triangle")]

    def rgb(sc, name: str) -> list[int]:
        return list(sc.objects[find(sc, name)].rgb)

    def says(*words: str, objects: tuple[list[int], ...] = ()) -> dict:
        """What a right answer holds: these words, and one mask per listed object colour, in order."""
        return {"says": list(words), "objects": [{"colour": c} for c in objects]}

    examples = [
        {"id": "image_seg", "kind": "Image segmentation", "media": "shapes_grey.png",
         "question": "Please segment the red circle in this image.", "prompts": [],
         "expect": [says("red", "circle", objects=(rgb(a, "red circle"),))]},
        {"id": "video_seg", "kind": "Video segmentation", "media": "moving_shapes.mp4",
         "thumb": "thumbs/moving_shapes.png",
         "question": "Please segment the green square in this video.", "prompts": [],
         "expect": [says("green", "square", objects=(rgb(v, "green square"),))]},
        {"id": "point_caption", "kind": "Region caption (point)", "media": "shapes_grey.png",
         "question": "What is [0]?", "prompts": [{"point": list(point_prompt(blue_star)), "frame": 0}],
         "expect": [says("blue", "star")]},
        {"id": "box_caption", "kind": "Region caption (box)", "media": "shapes_gradient.png",
         "question": "Give me a short description of [0].",
         "prompts": [{"box": list(box_prompt(orange_tri_b)), "frame": 0}],
         "expect": [says("orange", "triangle")]},
        {"id": "scribble_caption", "kind": "Region caption (scribble)", "media": "shapes_gradient.png",
         "question": "What is [0]?", "prompts": [{**scribble(red_square_b), "frame": 0}],
         "expect": [says("red", "square")]},
        {"id": "pixelqa", "real_model_only": True, "kind": "PixelQA", "media": "shapes_grey.png",
         "question": "What colour is [0]? Please answer the question and localize the relevant objects with IDs.",
         "prompts": [{"point": list(point_prompt(yellow_tri)), "frame": 0}],
         "expect": [says("yellow", objects=(rgb(a, "yellow triangle"),))]},
        {"id": "video_pixelqa", "real_model_only": True, "kind": "Video PixelQA", "media": "moving_shapes.mp4",
         "thumb": "thumbs/moving_shapes.png",
         "question": "Which way does [0] move? Please segment it.",
         "prompts": [{"point": list(point_prompt(orange_tri_v[0])), "frame": 0}],
         "expect": [says("left", objects=(rgb(v, "orange triangle"),))]},
        {"id": "id_seg", "real_model_only": True, "kind": "Segment prompted objects", "media": "shapes_gradient.png",
         "question": "Please segment [0] and [1].",
         "prompts": [{"point": list(point_prompt(blue_circle_b)), "frame": 0},
                     {"box": list(box_prompt(red_square_b)), "frame": 0}],
         "expect": [says(objects=(rgb(b, "blue circle"), rgb(b, "red square")))]},
        {"id": "multi_turn", "kind": "Multi-turn chat", "media": "shapes_grey.png",
         "question": "Please segment the blue star in this image.", "prompts": [],
         "followups": ["What colour is it?", "What shape is it?"],
         "expect": [says("blue", "star", objects=(rgb(a, "blue star"),)), says("blue"), says("star")]},
    ]
    for ex in examples:
        ex["title"] = f"{ex['kind']}: {ex['question']}"
    (HERE / "examples.json").write_text(json.dumps({"examples": examples}, indent=2) + "\n")
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"wrote {len(examples)} examples; examples/ is {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
