"""Procedural shapes data: exact masks, motion, prompt formats, determinism and caption parsing."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
from scipy import ndimage

from unipixel.training import shapes as S

QUERY_RES = {m: [re.compile(re.escape(t).replace(r"\{\}", "(.+)") + "$") for t in S.QUERY_TEMPLATES[m]]
             for m in ("image", "video")}
IMAGE_MEM_RE = re.compile(r"Here is an image with the following highlighted regions:\n(\[\d+\]: <\|mem\|>\n)+")
VIDEO_MEM_RE = re.compile(r"Here is a video with (\d+) frames denoted as <1> to <\1>\. The highlighted regions are "
                          r"as follows:\n(\[\d+\]:( <\d+>-<\d+> <\|mem\|>)+\n)+")
VIDEO_LINE_RE = re.compile(r"^\[(\d+)\]:((?: <\d+>-<\d+> <\|mem\|>)+)$", re.M)
ID_SEG_ANSWER_RE = re.compile(r"^\[\d+\] <\|seg\|>( \[\d+\] <\|seg\|>)*$")


@pytest.fixture(scope="module")
def samples() -> list[S.Sample]:
    """A mixed batch with every task on images and videos."""
    out = [S.sample_at(11, i, task=t, video=v) for t in S.TASKS for v in (False, True) for i in range(12)]
    return out + list(S.generate_dataset(5, 60))


@pytest.fixture(scope="module")
def videos() -> list[S.Scene]:
    rng = np.random.default_rng(123)
    return [S.make_scene(rng, video=True) for _ in range(25)]


def _same(a: S.Sample, b: S.Sample) -> bool:
    return (a.task == b.task and a.frames.shape == b.frames.shape and np.array_equal(a.frames, b.frames)
            and np.array_equal(a.masks, b.masks) and a.messages() == b.messages())


def test_deterministic_for_a_seed():
    a, b = list(S.generate_dataset(3, 15)), list(S.generate_dataset(3, 15))
    assert all(_same(x, y) for x, y in zip(a, b))
    assert _same(S.sample_at(3, 7), a[7])  # random access agrees with the stream


def test_heldout_and_ood_differ_from_train():
    train, held = list(S.generate_dataset(S.TRAIN_SEED, 10)), list(S.generate_heldout(10))
    assert not any(_same(x, y) for x, y in zip(train, held))
    ood = S.generate_ood_sample(0, 0)
    assert ood.style == "ood" and ood.background in S.OOD_BACKGROUNDS
    assert not _same(ood, S.sample_at(0, 0))


def test_masks_match_rendered_pixels(samples):
    for s in samples:
        assert s.masks.dtype == bool and s.masks.shape[1:] == s.frames.shape[:3]
        assert (s.masks.sum(0) <= 1).all(), "visible masks overlap"
        code = s.frames.astype(np.int32) @ np.array([65536, 256, 1], np.int32)  # one int per RGB pixel
        for colour, (r, g, b) in S.COLOURS.items():
            same = [k for k, o in enumerate(s.objects) if o.colour == colour]
            painted = code == r * 65536 + g * 256 + b
            union = s.masks[same].any(0) if same else np.zeros_like(painted)
            assert np.array_equal(painted, union), (s.task, colour)


def test_sizes_canvas_and_counts(samples):
    for s in samples:
        t, h, w = s.frames.shape[:3]
        assert 160 <= h <= 448 and 160 <= w <= 448 and 1 <= len(s.objects) <= 5
        assert (t == 1) == s.is_image and (s.is_image or 4 <= t <= 16)
        for o in s.objects:
            lo, hi = S.SIZE_RANGES[o.size]
            assert lo <= o.scale / min(h, w) <= hi
            assert o.colour in S.COLOURS and o.shape in S.SHAPES and o.motion in S.MOTIONS


def test_masks_non_empty_where_visible(videos, samples):
    for sc in videos + samples:
        t, h, w = sc.frames.shape[:3]
        for k, o in enumerate(sc.objects):
            inside = (o.centres[:, 0] >= 0) & (o.centres[:, 0] < w) & (o.centres[:, 1] >= 0) & (o.centres[:, 1] < h)
            assert sc.masks[k][inside].any((1, 2)).all()
            assert sc.masks[k].any((1, 2)).sum() >= min(t, 2)


def test_motion_matches_mask_centroids(videos):
    checked = 0
    for sc in videos:
        for k, o in enumerate(sc.objects):
            frames = np.flatnonzero(sc.masks[k].any((1, 2)))
            c0, c1 = (np.array(ndimage.center_of_mass(sc.masks[k, f]))[::-1] for f in (frames[0], frames[-1]))
            d = c1 - c0
            if o.motion == "still":
                assert np.abs(d).max() <= o.scale and o.speed == 0
                continue
            axis = 0 if o.motion in ("left", "right") else 1
            sign = -1 if o.motion in ("left", "up") else 1
            assert sign * d[axis] > 0 and abs(d[axis]) > abs(d[1 - axis]), (o, d)
            assert np.allclose(np.diff(o.centres[:, axis]) * sign, o.speed, atol=1)
            checked += 1
    assert checked > 20


def test_every_sample_validates(samples):
    for s in samples:
        S.validate_sample(s)
        assert 1 <= len(s.turns) <= 3
        assert all(m.any() for m in s.seg_masks())


def test_seg_count_matches_targets(samples):
    for s in samples:
        n_seg = sum(t.assistant.count("<|seg|>") for t in s.turns)
        assert n_seg == len(s.seg_targets) == len(s.seg_masks())
        for t in s.turns:
            assert "<|seg|>" not in t.user and all(len(x) >= 1 for x in t.seg)


def test_referring_prompt_formats():
    for i in range(40):
        s = S.sample_at(2, i, task="referring_seg")
        turn = s.turns[0]
        if len(turn.seg) > 1:  # several objects: one <|seg|> per object in mention order, each after its name
            names = re.findall(r"[Tt]he (.+?)<\|seg\|>", turn.assistant)
            assert len(names) == turn.assistant.count("<|seg|>") == len(turn.seg), turn.assistant
            asked = set(re.findall(r"[a-z]+", turn.user.lower())) | {"in"}
            for name, (i,) in zip(names, turn.seg, strict=True):
                obj = s.objects[i]  # the asked words plus the target's own colour and shape
                assert set(name.split()) <= asked | {obj.colour, obj.shape}, turn
                assert S.caption_correct(name, obj), (name, obj)
            continue
        named = re.fullmatch(r"The (.+)<\|seg\|>\.", turn.assistant)
        assert named, turn.assistant  # the answer names its target right before <|seg|>
        m = next((r.match(turn.user) for r in QUERY_RES[("video", "image")[s.is_image]] if r.match(turn.user)), None)
        if m:  # the query names the target's words, and the answer repeats them
            q, o = m.group(1), s.objects[turn.seg[0][0]]
            assert q == q.lower() and not q.startswith(("the ", "a ", "an "))
            assert any(w in q.split() for w in (o.colour, o.shape, o.size)), q
            assert named.group(1) == S.full_name(q, o)  # the same words completed, the colour last
            assert S.caption_correct(named.group(1), o), (named.group(1), o)
        else:
            assert any(turn.user.startswith(t.split("{}")[0]) for t in S.DESCRIPTION_TEMPLATES), turn.user


def test_colour_last_moves_the_colour_word_to_the_end():
    assert S.colour_last("large blue star on the left") == "large star on the left in blue"
    assert S.colour_last("star at the bottom") == "star at the bottom"


def test_full_name_completes_the_asked_words_with_colour_and_shape():
    obj = type("Obj", (), {"colour": "red", "shape": "star"})()
    assert S.full_name("small star", obj) == "small star in red"
    assert S.full_name("blue shape on the left", obj) == "star on the left in blue"  # the asked colour is kept
    assert S.full_name("leftmost large shape", obj) == "leftmost large star in red"


def test_reasoning_answer_formats():
    for i in range(40):
        s = S.sample_at(4, i, task="reasoning_seg")
        a = s.turns[0].assistant
        assert a.count("<|seg|>") == 1
        target = s.objects[s.seg_targets[0][0]]
        assert a.startswith(f"The {S.colour_last(target.description)}<|seg|>."), a  # the answer names the target
        assert S.caption_correct(a, target, check_size=True)


def test_mem_prefix_formats():
    for i in range(40):
        for video in (False, True):
            s = S.sample_at(6, i, task="mask_region", video=video)
            user = s.turns[0].user
            if s.is_image:
                assert IMAGE_MEM_RE.match(user)
                ids = [int(x) for x in re.findall(r"^\[(\d+)\]: <\|mem\|>$", user, re.M)]
            else:
                m = VIDEO_MEM_RE.match(user)
                assert m and int(m.group(1)) == len(s.frames)
                lines = VIDEO_LINE_RE.findall(user)
                ids = [int(x) for x, _ in lines]
                for (_, items), p in zip(lines, s.mem_prompts):
                    pairs = [(int(a), int(b)) for a, b in re.findall(r"<(\d+)>-<(\d+)>", items)]
                    assert all(a % 2 == 1 and b == a + 1 for a, b in pairs)
                    frames = np.flatnonzero(p.mask.any((1, 2)))
                    assert sorted({f // 2 for f in frames}) == [(a - 1) // 2 for a, _ in pairs]
                    assert set(frames) == set(p.frames) and (~p.mask[frames] | s.masks[p.obj, frames]).all()
            assert ids == [p.obj_id for p in s.mem_prompts] == sorted(ids)
            assert user.count("<|mem|>") == sum(len(S.mem_slots(p.mask)) for p in s.mem_prompts)


def test_mem_prefix_helper_examples():
    m = np.zeros((16, 4, 4), bool)
    m[0, 1, 1] = m[4, 2, 2] = m[5, 2, 2] = True
    assert S.mem_prefix([m], [0], False).endswith("[0]: <1>-<2> <|mem|> <5>-<6> <|mem|>\n")
    odd = np.zeros((5, 4, 4), bool)
    odd[4, 0, 0] = True
    assert S.mem_slots(odd) == [2]
    assert S.mem_prefix([odd], [3], False) == (
        "Here is a video with 5 frames denoted as <1> to <5>. The highlighted regions are as follows:\n"
        "[3]: <5>-<6> <|mem|>\n")
    assert S.mem_prefix([m[:1], m[:1]], [0, 1], True) == S.IMAGE_MEM_HEADER + "[0]: <|mem|>\n[1]: <|mem|>\n"


def test_ref_prompts_point_and_box():
    kinds = set()
    for i in range(40):
        s = S.sample_at(8, i, task=("ref_caption", "id_seg", "pixelqa")[i % 3], video=i % 2 == 1)
        text = " ".join(t.user for t in s.turns)
        assert [int(x) for x in re.findall(r"\[(\d+)\] <\|ref\|>", text)] == [p.obj_id for p in s.ref_prompts]
        assert text.count("<|ref|>") == len(s.ref_prompts) >= 1
        for p in s.ref_prompts:
            kinds.add(p.kind)
            assert len(p.frames) == 1 and 0 <= p.frames[0] < len(s.frames)
            m = s.masks[p.obj, p.frames[0]]
            if p.kind == "point":
                x, y = p.coords
                assert m[y, x]
                edt = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
                assert np.unravel_index(np.argmax(edt), m.shape) == (y, x)
            else:
                x0, y0, x1, y1 = p.coords
                assert m[y0:y1 + 1, x0:x1 + 1].sum() == m.sum()
                assert m[y0].any() and m[y1].any() and m[:, x0].any() and m[:, x1].any()
    assert kinds == {"point", "box"}


def test_id_seg_formats():
    for i in range(40):
        s = S.sample_at(9, i, task="id_seg", video=i % 2 == 0)
        turn = s.turns[0]
        assert ID_SEG_ANSWER_RE.match(turn.assistant)
        assert any(re.fullmatch(re.escape(w).replace(r"\{\}", "(.+)"), turn.user, re.S) for w in S.ID_WRAPPERS)
        id_to_obj = {p.obj_id: p.obj for p in s.ref_prompts}
        ids = [int(x) for x in re.findall(r"\[(\d+)\] <\|seg\|>", turn.assistant)]
        assert [(id_to_obj[x],) for x in ids] == turn.seg
        assert ids == [p.obj_id for p in s.ref_prompts]  # targets listed in order of first mention


def test_pixelqa_formats():
    for i in range(30):
        rng = np.random.default_rng(i)
        one, two = S.pixelqa_two_step(rng, S.make_scene(rng, video=True))
        assert one.turns[0].user.endswith(". Please localize the relevant objects with IDs.")
        assert "\nOptions:\n(A) " in one.turns[0].user and ID_SEG_ANSWER_RE.match(one.turns[0].assistant)
        assert VIDEO_MEM_RE.match(two.turns[0].user) and "<|ref|>" not in two.turns[0].user
        assert two.turns[0].user.endswith("\nPlease only give the best option.")
        letter = re.fullmatch(r"The best option is \(([A-D])\)\.", two.turns[0].assistant).group(1)
        assert f"\n({letter}) " in two.turns[0].user
        assert {p.obj for p in two.mem_prompts} == {p.obj for p in one.ref_prompts}
        for p in two.mem_prompts:  # the mask prompt covers every frame the object is on
            assert np.array_equal(p.mask, one.masks[p.obj])
        s = S.sample_at(10, i, task="pixelqa", video=True)
        assert re.search(r"\[\d+\] <\|seg\|>", s.turns[0].assistant) and "<|ref|>" in s.turns[0].user


def test_multi_turn():
    for i in range(30):
        s = S.sample_at(12, i, task="multi_turn")
        assert 2 <= len(s.turns) <= 3
        assert all("<|mem|>" not in t.user for t in s.turns[1:])
        assert all("<|ref|>" not in t.user for t in s.turns[1:])


def test_captions_round_trip():
    for c in S.COLOURS:
        for sh in S.SHAPES:
            for sz in S.SIZES:
                for mo in S.MOTIONS:
                    o = S.ObjectInfo(c, sh, sz, mo)
                    for text in (S.caption(o), S.caption(o, with_motion=True), f"[3] is a {o.description}."):
                        assert S.parse_caption(text) == (c, sh, sz)
                        assert S.caption_correct(text, o, check_size=True)
    o = S.ObjectInfo("red", "star", "small")
    assert not S.caption_correct("A small blue star.", o) and not S.caption_correct("A red circle.", o)
    assert S.caption_correct("Two red stars.", o) and not S.caption_correct("A large red star.", o, check_size=True)
    assert S.parse_caption("It is the largest.") == (None, None, None)
    for i in range(30):
        s = S.sample_at(13, i, task="ref_caption", video=i % 2 == 0)
        assert S.caption_correct(s.turns[0].assistant, s.objects[s.ref_prompts[0].obj], check_size=True)


def test_ood_samples():
    for i in range(12):
        s = S.generate_ood_sample(1, i, video=i % 3 == 0)
        S.validate_sample(s)
        h, w = s.frames.shape[1:3]
        assert max(h, w) / min(h, w) >= 1.9
        assert all(s.masks[k].any() for k in range(len(s.objects)))


def test_task_mix_and_errors():
    tasks = {s.task for s in S.generate_dataset(1, 12, task_mix={"ref_caption": 1.0})}
    assert tasks == {"ref_caption"}
    with pytest.raises(ValueError):
        S.sample_at(0, 0, task_mix={"nope": 1.0})


def test_image_generation_speed():
    list(S.generate_dataset(0, 5, video_prob=0.0))
    t = time.perf_counter()
    list(S.generate_dataset(0, 100, video_prob=0.0))
    assert 100 / (time.perf_counter() - t) > 50  # loose bound (shared CPU); ~600/s measured alone


def test_crop_scenes_hold_objects_of_the_sizes_the_tower_meets_in_processed_scenes():
    from unipixel.processing.vision import llm_frame_size

    rng = np.random.default_rng(4)
    crop = [o.scale for _ in range(150) for o in S.make_scene(rng, style="crop").objects]
    full = []
    for _ in range(150):
        scene = S.make_scene(rng)
        h, w = scene.frames.shape[1:3]
        full += [o.scale * llm_frame_size(h, w, 1, 16)[0] / h for o in scene.objects]
    assert 0.6 < np.percentile(crop, 5) / np.percentile(full, 5) < 1.6
    assert 0.6 < np.percentile(crop, 95) / np.percentile(full, 95) < 1.6
    assert all(S.make_scene(rng, style="crop").frames.shape[1] % 28 == 0 for _ in range(5))
