"""ChatSession on the golden tiny checkpoint: object tags, how visual prompts reach the model (spec §5.5, §6.3,
§6.4, §6.5), mask alignment, feature caches, refinement, dense tracking and input checks.

The model is real (tiny, CPU); spies wrap its methods to see exactly what the session passes in.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import GOLDEN, requires_golden
from unipixel import limits
from unipixel.engine import Engine, load_engine
from unipixel.processing.prompts import BoxPrompt, MaskPrompt, PointPrompt
from unipixel.rendering import color_for, write_mp4
from unipixel.session import ChatSession

pytestmark = requires_golden

TINY = GOLDEN / "checkpoints" / "tiny-tied"
CASES = GOLDEN / "cases"
IMAGE = CASES / "tiny-tied__image_seg" / "image.png"  # 300×200; "Please segment the red circle ..." -> one <|seg|>
IMAGE_QUESTION = "Please segment the red circle in this image."
PROMPT_VIDEO = CASES / "tiny-tied__video_point_box_ref" / "frames"  # 6 frames of 240×180
TRACK_FRAMES = CASES / "tiny-tied__video_seg_odd_frames" / "frames"  # 5 frames of 200×150
TRACK_QUESTION = "Track the purple circle in this video."  # -> "<|seg|>."


def write_video(path: Path, fps: float = 10.0) -> Path:
    """An MP4 of the golden purple-circle clip, each frame shown twice (10 frames of 200×150)."""
    frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(TRACK_FRAMES.glob("*.png"))])
    return write_mp4(path, np.repeat(frames, 2, axis=0), fps)


def spy(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, log: list | None = None) -> list:
    """Wrap ``owner.name`` (an instance attribute for the test only); each call appends ``(name, kwargs)``."""
    calls = [] if log is None else log
    original = getattr(owner, name)

    @functools.wraps(original)  # keeps the signature: generate() inspects forward's parameters
    def wrapper(*args, **kwargs):
        calls.append((name, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine(str(TINY))


@pytest.fixture
def session(engine: Engine) -> ChatSession:
    return ChatSession(engine)


def decoded(engine: Engine, kwargs: dict) -> str:
    return engine.processor.tokenizer.decode(kwargs["input_ids"][0])


def sam_xy(engine: Engine, x: float, y: float, size: tuple[int, int]) -> list[float]:
    """Spec §5.5: original continuous pixels -> SAM 2 input pixels."""
    s = engine.sam_image_size
    return [x * s / size[1] - 0.5, y * s / size[0] - 0.5]


# ---------------------------------------------------------------------------------------------- objects
def test_tags_are_numbered_across_turns_and_never_reused(session: ChatSession) -> None:
    session.open(IMAGE)
    first = session.ask(IMAGE_QUESTION)
    assert [o.tag for o in first.objects] == ["obj_1"]
    assert first.text == "Sure, it is [obj_1]."
    masks_1 = first.objects[0].masks.copy()
    second = session.ask(IMAGE_QUESTION)
    third = session.ask("Please segment the blue square in this image.")
    later = second.objects + third.objects
    assert later, "the follow-up turns should ground objects for this test to mean anything"
    assert [o.tag for o in later] == [f"obj_{k}" for k in range(2, 2 + len(later))]
    assert list(session.objects) == [f"obj_{k}" for k in range(1, 2 + len(later))]
    for reply in (second, third):
        assert re.findall(r"\[(obj_\d+)\]", reply.text) == [o.tag for o in reply.objects]
        assert {o.turn for o in reply.objects} == {reply.turn}
    assert session.objects["obj_1"] is first.objects[0]
    assert np.array_equal(session.objects["obj_1"].masks, masks_1)
    assert session.objects["obj_1"].color == color_for("obj_1")


@pytest.mark.parametrize("media, num_frames", [(IMAGE, None), (TRACK_FRAMES, None), (TRACK_FRAMES, 3)])
def test_masks_are_at_the_original_resolution_and_aligned_with_the_frames(session, media, num_frames) -> None:
    opened = session.open(media, num_frames=num_frames)
    reply = session.ask(IMAGE_QUESTION if opened.is_image else TRACK_QUESTION)
    assert reply.objects
    for obj in reply.objects:
        assert obj.masks.shape == opened.frames.shape[:3]
        assert obj.masks.dtype == bool
        assert obj.frame_indices == opened.frame_indices
        assert obj.iou.shape == obj.presence.shape == (opened.num_frames,)
        assert obj.masks.any()


# ---------------------------------------------------------------------------------------------- prompt formats
def test_point_box_and_scribble_on_frame_3_reach_the_model_as_specified(session, engine, monkeypatch) -> None:
    media = session.open(PROMPT_VIDEO)
    height, width = media.size
    scribble = np.zeros(media.size, dtype=bool)
    scribble[50:80, 60:100] = True
    calls = spy(monkeypatch, engine.model, "generate")
    prompts = [PointPrompt(100, 60, frame=3), BoxPrompt(20, 30, 90, 120, frame=3), MaskPrompt(scribble, frame=3)]
    reply = session.ask("Please segment [1] and [0].", prompts)

    user_text = (
        "Here is a video with 6 frames denoted as <1> to <6>. The highlighted regions are as follows:\n"
        "[2]: <3>-<4> <|mem|>\n"
        "Please segment the mentioned objects with IDs in the question: Please segment [1] <|ref|> and [0] <|ref|>."
    )
    assert session.history[-2] == {"role": "user", "content": user_text}
    assert reply.regions == [0, 1, 2]
    (_, kwargs), = calls
    assert f"<|vision_end|>{user_text}<|im_end|>\n<|im_start|>assistant\n" in decoded(engine, kwargs)
    # <|ref|> order is [1] (the box) then [0] (the point), both on sampled frame 3, in SAM 2 input pixels.
    box, point = kwargs["point_coords"]
    torch.testing.assert_close(box, torch.tensor([[sam_xy(engine, 20, 30, (height, width)), sam_xy(engine, 90, 120, (height, width))]]))
    torch.testing.assert_close(point, torch.tensor([[sam_xy(engine, 100, 60, (height, width))]]))
    assert [labels.tolist() for labels in kwargs["point_labels"]] == [[[2, 3]], [[1]]]
    assert kwargs["point_frames"].tolist() == [3, 3]
    # The scribble pools into temporal slot 1 (frames 2 and 3) only.
    refer_mask = kwargs["refer_mask"]
    assert refer_mask.shape[:2] == (3, 1)
    assert refer_mask[1, 0].any() and not refer_mask[0].any() and not refer_mask[2].any()
    assert kwargs["frames"] is not None  # masks are requested


@pytest.mark.parametrize(
    "question, sent",
    [
        ("Please segment [0].", "Please segment the mentioned objects with IDs in the question: Please segment [0] <|ref|>."),
        ("Track [0] in this video.", "Please segment the mentioned objects with IDs in the question: Track [0] <|ref|> in this video."),
        ("Describe [0].", "Describe [0] <|ref|>."),
        ("Please segment it.", "Please segment the mentioned objects with IDs in the question: Please segment it. [0] <|ref|>"),
    ],
)
def test_id_based_wrapper_only_when_prompted_objects_must_be_segmented(session, question, sent) -> None:
    session.open(PROMPT_VIDEO)
    session.ask(question, [PointPrompt(100, 60, frame=2)])
    assert session.history[-2]["content"] == sent


def test_scribble_on_an_image_uses_the_image_prefix(session, engine, monkeypatch) -> None:
    media = session.open(IMAGE)
    scribble = np.zeros(media.size, dtype=bool)
    scribble[80:120, 50:130] = True
    calls = spy(monkeypatch, engine.model, "generate")
    session.ask("What colour is [0]?", [MaskPrompt(scribble)])
    assert session.history[-2]["content"] == (
        "Here is an image with the following highlighted regions:\n[0]: <|mem|>\nWhat colour is [0]?"
    )
    (_, kwargs), = calls
    assert kwargs["refer_mask"].shape[:2] == (1, 1) and kwargs["refer_mask"].any()
    assert "point_coords" not in kwargs


def test_pixel_qa_localizes_with_teacher_forcing_then_answers_with_masks_as_mem(session, engine, monkeypatch) -> None:
    session.open(PROMPT_VIDEO)
    calls: list = []
    spy(monkeypatch, engine.model, "forward", calls)
    spy(monkeypatch, engine.model, "generate", calls)
    question = "Which is bigger, [0] or [1]? Please provide the segmentation mask."
    reply = session.ask(question, [PointPrompt(100, 60, frame=3), BoxPrompt(20, 30, 90, 120, frame=3)])

    names = [name for name, _ in calls]
    localize = names.index("forward")
    assert names.count("generate") == 1 and localize < names.index("generate")
    # Step 1: one forward over the teacher-forced answer, prompts in <|ref|> order.
    step1 = calls[localize][1]
    assert step1["return_pre_norm_states"] is True
    assert decoded(engine, step1).endswith(
        "Which is bigger, [0] <|ref|> or [1] <|ref|>? Please provide the segmentation mask. "
        "Please localize the relevant objects with IDs.<|im_end|>\n<|im_start|>assistant\n[0] <|seg|> [1] <|seg|><|im_end|>\n"
    )
    assert [c.shape[1] for c in step1["point_coords"]] == [1, 2]
    # Step 2: generation with the two predicted masks as <|mem|> prompts, no <|ref|> and no new masks.
    step2 = calls[names.index("generate")][1]
    text = decoded(engine, step2)
    slots = r"<\d+>-<\d+> <\|mem\|>( <\d+>-<\d+> <\|mem\|>)*"
    assert re.search(
        rf"The highlighted regions are as follows:\n\[0\]: {slots}\n\[1\]: {slots}\n"
        r"Which is bigger, \[0\] or \[1\]\? Please provide the segmentation mask\.<\|im_end\|>",
        text,
    )
    assert "<|ref|>" not in text
    assert step2["refer_mask"].shape[1] == 2
    assert "point_coords" not in step2 and "frames" not in step2
    # The reply keeps the answer and one object per prompt, in <|ref|> order.
    assert reply.raw_text.endswith("[0] <|seg|> [1] <|seg|>")
    assert [(o.tag, o.region) for o in reply.objects] == [("obj_1", 0), ("obj_2", 1)]
    assert session.history[-2]["content"] == "Which is bigger, [0] <|ref|> or [1] <|ref|>? Please provide the segmentation mask."


# ---------------------------------------------------------------------------------------------- caches
def test_media_features_are_computed_once_per_media(session, engine, monkeypatch) -> None:
    vision = spy(monkeypatch, engine.model, "encode_video")
    sam = spy(monkeypatch, engine.model.sam2, "encode_frames")
    session.open(IMAGE)
    session.ask(IMAGE_QUESTION)
    assert (len(vision), len(sam)) == (1, 1)
    session.ask(IMAGE_QUESTION)
    session.reset()  # a new conversation on the same media keeps the features
    session.ask(IMAGE_QUESTION)
    assert (len(vision), len(sam)) == (1, 1)
    session.open(IMAGE)  # re-opening decodes again and drops the caches
    session.ask(IMAGE_QUESTION)
    assert (len(vision), len(sam)) == (2, 2)


# ---------------------------------------------------------------------------------------------- refine and dense
def test_follow_up_reuses_the_conversation_cache_exactly(engine) -> None:
    """A text-only follow-up continues from the previous turn's keys/values and answers exactly as a full
    prefill does; a follow-up with a new visual prompt prefills again (its embedding needs the prefill)."""
    from unipixel.session import Settings

    replies = {}
    for reuse in (True, False):
        current = ChatSession(engine, Settings(reuse_kv=reuse))
        current.open(TRACK_FRAMES)
        current.ask(TRACK_QUESTION)
        replies[reuse] = current.ask("Now track the blue circle.")
        if reuse:
            assert replies[reuse].timings["reused_tokens"] > 100
            prompted = current.ask("What is [0]?", [PointPrompt(20.0, 30.0, frame=1)])
            assert prompted.timings["reused_tokens"] == 0
    assert replies[True].raw_text == replies[False].raw_text
    for a, b in zip(replies[True].objects, replies[False].objects):
        assert (a.masks == b.masks).mean() > 0.999


def test_refine_keeps_tag_and_colour_and_changes_the_refined_frame(session) -> None:
    session.open(TRACK_FRAMES)
    obj = session.ask(TRACK_QUESTION).objects[0]
    before = obj.masks.copy()
    ys, xs = np.nonzero(before[2])
    refined = session.refine(obj.tag, [(float(xs.mean()), float(ys.mean()), 0)], frame=2)
    assert refined is session.objects["obj_1"]
    assert (refined.tag, refined.color) == ("obj_1", color_for("obj_1"))
    assert not np.array_equal(refined.masks[2], before[2])
    assert refined.masks.shape == before.shape
    assert list(session.objects) == ["obj_1"]


def test_clicks_accumulate_and_survive_a_detach_attach_round_trip(session, engine) -> None:
    """ZeroGPU pickles the session between calls: detach drops the model and tracker states; a later
    refine rebuilds them from the object's prompt and replays the corrections, giving the same masks
    as a session that never left."""
    import pickle

    def corrected(detach: bool) -> np.ndarray:
        current = ChatSession(engine)
        current.open(TRACK_FRAMES)
        obj = current.ask(TRACK_QUESTION).objects[0]
        ys, xs = np.nonzero(obj.masks[1])
        current.refine(obj.tag, [(float(xs.mean()), float(ys.mean()), 0)], frame=1)
        current.refine(obj.tag, [(5.0, 5.0, 0)], frame=3)
        if detach:
            current = pickle.loads(pickle.dumps(current.detach()))
            assert current.engine is None and current.objects[obj.tag].states == []
            current.attach(engine)
        refined = current.refine(obj.tag, [(6.0, 6.0, 1)], frame=3)
        assert refined.corrections[-1] == (3, [(5.0, 5.0, 0), (6.0, 6.0, 1)])  # clicks on a frame accumulate
        return refined.masks

    assert np.array_equal(corrected(detach=True), corrected(detach=False))


def test_track_dense_gives_one_mask_per_decoded_frame(session, tmp_path) -> None:
    media = session.open(write_video(tmp_path / "clip.mp4"), num_frames=4)
    assert media.frame_indices == [0, 3, 6, 9]
    obj = session.ask(TRACK_QUESTION).objects[0]
    indices = session.track_dense()
    assert indices == list(range(10))
    assert obj.dense_indices == indices
    assert obj.dense_masks.shape == (10, *media.size)
    assert obj.dense_masks.any(axis=(1, 2)).all()


def test_in_sam2_batch_mode_refine_and_dense_tracking_treat_every_frame_on_its_own(tmp_path) -> None:
    engine = load_engine(str(TINY))
    engine.model.config.sam2_batch_mode = True  # the bundled shapes model's setting
    session = ChatSession(engine)
    media = session.open(write_video(tmp_path / "clip.mp4"), num_frames=4)
    obj = session.ask(TRACK_QUESTION).objects[0]
    assert len(obj.states) == 4  # one single-frame tracker state per sampled frame
    before = obj.masks.copy()
    ys, xs = np.nonzero(before[2])
    refined = session.refine(obj.tag, [(float(xs.mean()), float(ys.mean()), 0)], frame=2)
    assert not np.array_equal(refined.masks[2], before[2])
    assert np.array_equal(refined.masks[[0, 1, 3]], before[[0, 1, 3]])  # no memory: the other frames stay
    assert session.track_dense() == list(range(10))
    sampled = [media.frame_indices.index(i) for i in (0, 3, 6, 9)]
    assert np.array_equal(obj.dense_masks[[0, 3, 6, 9]], refined.masks[sampled])  # same frames, same masks


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "question, prompts, message",
    [
        ("   ", [], "type a question"),
        ("x" * 50_000, [], "50000 characters long"),
        ("Describe [0].", [PointPrompt(301, 10)], r"prompt \[0\] at \(301, 10\) is outside the 300×200 frame"),
        ("Describe [0].", [PointPrompt(10, 10, frame=1)], r"on frame 1, but only frames 0-0 were sampled"),
        ("Describe [0].", [BoxPrompt(10, 10, 10, 50)], r"box \[0\] has no area"),
        ("Describe [0].", [MaskPrompt(np.zeros((200, 300), bool))], r"mask \[0\] is empty"),
        ("Describe [0].", [MaskPrompt(np.ones((20, 30), bool))], r"mask \[0\] is 30×20, the media is 300×200"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(session, question, prompts, message) -> None:
    session.open(IMAGE)
    with pytest.raises(ValueError, match=message):
        session.ask(question, prompts)
    assert session.regions == [] and session.history == [] and session.objects == {}


def test_refine_of_an_unknown_tag_is_refused(session) -> None:
    session.open(IMAGE)
    session.ask(IMAGE_QUESTION)
    with pytest.raises(ValueError, match="there is no object obj_9 to refine"):
        session.refine("obj_9", [(10, 10, 1)], frame=0)


def test_asking_before_opening_media_is_refused(session) -> None:
    with pytest.raises(ValueError, match="open an image or a video first"):
        session.ask(IMAGE_QUESTION)


def test_dense_tracking_needs_a_video(session) -> None:
    session.open(IMAGE)
    session.ask(IMAGE_QUESTION)
    with pytest.raises(ValueError, match="dense tracking needs a video"):
        session.track_dense()


@pytest.mark.parametrize("per_pass", [1, 4])
def test_track_dense_batches_objects_with_their_corrections(session, tmp_path, monkeypatch, per_pass) -> None:
    """Objects go through SAM 2 together (at most DENSE_OBJECTS_PER_PASS at once); each keeps its own clicks."""
    session.open(write_video(tmp_path / "clip.mp4"), num_frames=4)
    first = session.ask(TRACK_QUESTION).objects[0]
    second = session.ask("Track the purple circle in this video again.").objects[0]
    session.refine(second.tag, [(20.0, 20.0, 0)], frame=1)
    monkeypatch.setattr(limits, "DENSE_OBJECTS_PER_PASS", per_pass)
    passes = spy(monkeypatch, session.engine.model.sam2, "track")
    session.track_dense()
    assert len(passes) == (2 if per_pass == 1 else 1)
    alone = ChatSession(session.engine)
    alone.open(session.media_path, num_frames=4)
    expected = alone.ask(TRACK_QUESTION).objects[0]
    alone.track_dense()
    assert (first.dense_masks == expected.dense_masks).mean() > 0.999
    assert second.dense_masks.shape == first.dense_masks.shape and (second.dense_masks != first.dense_masks).any()
