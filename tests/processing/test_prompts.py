"""Visual prompts: refer_mask (§5.4), SAM 2 point/box coordinates (§5.5), prompt text (§6.3, §6.4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.functional import resize

from tests.conftest import GOLDEN, golden_cases, requires_golden
from unipixel.processing.prompts import (
    ID_SEGMENTATION_TEMPLATES,
    BoxPrompt,
    MaskPrompt,
    PointPrompt,
    encode_visual_prompts,
    mem_prefix,
    ref_inputs,
    ref_mention,
    refer_mask,
    seg_object_ids,
    segment_with_ids,
)
from unipixel.processing.vision import build_vision_inputs, load_processor, render_chat, video_grid_thw

CASES = golden_cases()


def stored_inputs(name: str) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "cases" / name / "inputs.safetensors")


def sam2_image_size(checkpoint: str) -> int:
    return json.loads((GOLDEN / "checkpoints" / checkpoint / "config.json").read_text())["sam2_image_size"]


def spec_refer_mask(masks: np.ndarray, grid_thw: tuple[int, int, int]) -> torch.Tensor:
    """Spec §5.4 literally, on the dense ``(T, n_obj, H, W)`` tensor (the reference's order of steps)."""
    x = torch.from_numpy(masks).float()
    if len(x) % 2:
        x = torch.cat([x, x[-1:]])
    x = x.view(len(x) // 2, 2, *x.shape[1:]).amax(dim=1)
    x = resize(x, [grid_thw[1] * 14, grid_thw[2] * 14])
    return F.max_pool2d(x, 28, 28) > 0


def blob(height: int, width: int, cy: int, cx: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


# ----------------------------------------------------------------------------------------- refer_mask
def test_refer_mask_equals_the_dense_spec_algorithm_with_odd_frames() -> None:
    height, width, frames = 90, 130, 5
    grid = video_grid_thw(height, width, frames)
    objects = [
        [MaskPrompt(blob(height, width, 30, 40, 12), frame=1), MaskPrompt(blob(height, width, 60, 100, 9), frame=4)],
        [MaskPrompt(blob(height, width, 45, 65, 20), frame=2), MaskPrompt(blob(height, width, 20, 20, 5), frame=3)],
    ]
    dense = np.zeros((frames, len(objects), height, width), bool)
    for o, masks in enumerate(objects):
        for prompt in masks:
            dense[prompt.frame, o] |= prompt.mask
    mask, slots = refer_mask(objects, frames, grid)
    assert mask.dtype == torch.bool and mask.shape == (3, 2, grid[1] // 2, grid[2] // 2)
    assert torch.equal(mask, spec_refer_mask(dense, grid))
    assert slots == [[0, 2], [1]]  # frame 4 (odd count) pairs with its own copy into slot 2


def test_refer_mask_pairs_frames_by_max() -> None:
    grid = video_grid_thw(56, 56, 4)
    left, right = np.zeros((56, 56), bool), np.zeros((56, 56), bool)
    left[:, :10], right[:, -10:] = True, True
    mask, slots = refer_mask([[MaskPrompt(left, 0), MaskPrompt(right, 1)]], 4, grid)
    assert slots == [[0]]
    assert mask[0, 0, :, 0].all() and mask[0, 0, :, -1].all() and not mask[1].any()


def test_a_single_pixel_mask_survives_downscaling() -> None:
    height, width = 1080, 1920
    grid = video_grid_thw(height, width, 16)
    assert grid == (8, 24, 42)
    tiny = np.zeros((height, width), bool)
    tiny[700, 1500] = True
    mask, slots = refer_mask([[MaskPrompt(tiny, frame=9)]], 16, grid)
    assert slots == [[4]]
    cell = (700 * 336 // height // 28, 1500 * 588 // width // 28)
    assert mask[4, 0, cell[0], cell[1]] and 1 <= int(mask.sum()) <= 4


def test_refer_mask_rejects_bad_input() -> None:
    grid = video_grid_thw(56, 56, 2)
    with pytest.raises(ValueError, match="empty"):
        refer_mask([[MaskPrompt(np.zeros((56, 56), bool))]], 2, grid)
    with pytest.raises(ValueError, match="outside the 2 sampled frames"):
        refer_mask([[MaskPrompt(np.ones((56, 56), bool), frame=2)]], 2, grid)
    with pytest.raises(ValueError, match="does not match"):
        refer_mask([[MaskPrompt(np.ones((56, 56), bool))]], 4, grid)


@requires_golden
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if "mem_frames" in c))
def test_golden_refer_mask_layout_and_prefix(name: str) -> None:
    """User masks are not stored: a mask with one pixel at the centre of each stored cell must rebuild it."""
    case, stored = CASES[name], stored_inputs(name)
    height, width = case["frame_size"]
    grid = tuple(stored["video_grid_thw"][0].tolist())
    cells = stored["refer_mask"]
    objects = []
    for o in range(cells.shape[1]):
        prompts = []
        for slot in range(cells.shape[0]):
            if cells[slot, o].any():
                pixels = np.zeros((height, width), bool)
                for i, j in cells[slot, o].nonzero().tolist():
                    pixels[int((i + 0.5) * height / cells.shape[2]), int((j + 0.5) * width / cells.shape[3])] = True
                prompts.append(MaskPrompt(pixels, frame=2 * slot))
        objects.append(prompts)
    mask, slots = refer_mask(objects, case["n_frames"], grid)
    assert torch.equal(mask, cells)
    assert slots == [sorted({f // 2 for f in frames}) for frames in case["mem_frames"]]
    prefix = mem_prefix(slots, case["n_frames"], is_image=case["n_frames"] == 1)
    if name.endswith("demo_prefix"):  # the reference demo's image format writes a frame tag
        prefix = prefix.replace("[0]: <|mem|>", "[0]: <1> <|mem|>")
    assert case["messages_text"].startswith(prefix)


# ----------------------------------------------------------------------------------------- prefix text
def test_mem_prefix_formats() -> None:
    assert mem_prefix([[0], [0]], 1, is_image=True, object_ids=[3, 7]) == (
        "Here is an image with the following highlighted regions:\n[3]: <|mem|>\n[7]: <|mem|>\n"
    )
    assert mem_prefix([[0, 2]], 7, is_image=False) == (
        "Here is a video with 7 frames denoted as <1> to <7>. The highlighted regions are as follows:\n"
        "[0]: <1>-<2> <|mem|> <5>-<6> <|mem|>\n"
    )
    assert mem_prefix([[3]], 7, is_image=False).endswith("[0]: <7>-<8> <|mem|>\n")  # odd N names frame N+1
    with pytest.raises(ValueError, match="single temporal slot"):
        mem_prefix([[1]], 1, is_image=True)


@requires_golden
def test_id_segmentation_text_helpers_match_golden() -> None:
    assert segment_with_ids(f"What is {ref_mention(0)}?") == CASES["tiny-tied__image_point_ref"]["messages_text"]
    question = f"Which moves faster, {ref_mention(0)} or {ref_mention(1)}?"
    expected = CASES["tiny-tied__video_point_box_ref"]["messages_text"]
    assert segment_with_ids(question, ID_SEGMENTATION_TEMPLATES[4]) == expected
    assert len(ID_SEGMENTATION_TEMPLATES) == 6 and all(t.count("{}") == 1 for t in ID_SEGMENTATION_TEMPLATES)


def test_seg_object_ids() -> None:
    assert seg_object_ids("[1] <|seg|> [0] <|seg|>") == [1, 0]
    assert seg_object_ids("Sure, it is <|seg|>. [2]<|seg|>") == [None, 2]
    assert seg_object_ids("no masks") == []


# ----------------------------------------------------------------------------------------- points and boxes
@requires_golden
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if "ref" in c))
def test_golden_point_and_box_inputs(name: str) -> None:
    """Clicks at the original-space positions of the stored SAM 2 coordinates map back onto them."""
    case, stored = CASES[name], stored_inputs(name)
    height, width = case["frame_size"]
    size = sam2_image_size(case["checkpoint"])
    prompts = []
    for i, ref in enumerate(case["ref"]):
        sam = stored[f"point_coords.{i}"][0].tolist()
        corners = [((x + 0.5) * width / size, (y + 0.5) * height / size) for x, y in sam]
        if ref["kind"] == "point":
            prompts.append(PointPrompt(*corners[0], frame=ref["frame"]))
        else:
            prompts.append(BoxPrompt(*corners[0], *corners[1], frame=ref["frame"]))
    inputs = ref_inputs(prompts, (height, width), size, case["n_frames"])
    assert torch.equal(inputs.point_frames, stored["point_frames"])
    for i in range(len(prompts)):
        coords, labels = stored[f"point_coords.{i}"], stored[f"point_labels.{i}"]
        assert inputs.point_coords[i].dtype == coords.dtype and inputs.point_labels[i].dtype == labels.dtype
        torch.testing.assert_close(inputs.point_coords[i], coords, atol=1e-4, rtol=0)
        assert torch.equal(inputs.point_labels[i], labels)


def test_click_mapping_and_box_normalisation() -> None:
    inputs = ref_inputs([PointPrompt(100.0, 50.0, frame=2), BoxPrompt(150, 90, 50, 10, frame=0)], (100, 200), 128, 3)
    assert inputs.point_coords[0].tolist() == [[[63.5, 63.5]]]  # frame centre -> S/2 - 0.5
    torch.testing.assert_close(inputs.point_coords[1], torch.tensor([[[31.5, 12.3], [95.5, 114.7]]]))
    assert inputs.point_labels[1].tolist() == [[2, 3]] and inputs.point_frames.tolist() == [2, 0]
    with pytest.raises(ValueError, match="outside the 200×100 frame"):
        ref_inputs([PointPrompt(201, 5)], (100, 200), 128, 1)
    with pytest.raises(ValueError, match="outside the 1 sampled frames"):
        ref_inputs([PointPrompt(1, 5, frame=1)], (100, 200), 128, 1)


# ----------------------------------------------------------------------------------------- a whole request
@requires_golden
def test_point_box_and_scribble_on_frame_3_become_consistent_model_inputs() -> None:
    height, width, frames = 96, 160, 16
    grid = video_grid_thw(height, width, frames)
    scribble = np.zeros((height, width), bool)
    scribble[40:44, 20:90] = True
    objects = [MaskPrompt(scribble, frame=3), PointPrompt(120.5, 30.5, frame=3), BoxPrompt(10, 50, 60, 90, frame=3)]
    encoded = encode_visual_prompts(objects, (height, width), frames, grid, image_size=128, is_image=False)

    assert encoded.prefix == (
        "Here is a video with 16 frames denoted as <1> to <16>. The highlighted regions are as follows:\n"
        "[0]: <3>-<4> <|mem|>\n"
    )
    assert encoded.mentions == {1: "[1] <|ref|>", 2: "[2] <|ref|>"}
    assert encoded.refer_mask.shape == (8, 1, grid[1] // 2, grid[2] // 2) and encoded.refer_mask[1].any()
    assert [c.shape for c in encoded.ref.point_coords] == [(1, 1, 2), (1, 2, 2)]
    assert encoded.ref.point_frames.tolist() == [3, 3]

    question = f"What is {encoded.mentions[1]} doing to [0] and {encoded.mentions[2]}?"
    text = encoded.prefix + segment_with_ids(question)
    processor = load_processor(GOLDEN / "checkpoints" / "tiny-tied")
    video = [Image.new("RGB", (width, height))] * frames
    chat = render_chat(processor, [{"role": "user", "content": text}])
    ids = build_vision_inputs(processor, video, chat)["input_ids"]
    tokens = processor.tokenizer.convert_tokens_to_ids(["<|mem|>", "<|ref|>"])
    assert int((ids == tokens[0]).sum()) == int(encoded.refer_mask.flatten(2).any(-1).sum())
    assert int((ids == tokens[1]).sum()) == len(encoded.ref.point_coords)
