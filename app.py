"""UniPixel web demo: upload an image or a video, sketch prompts, chat, and get coloured masks linked to [obj_k] tags.

    python app.py [--model PATH_OR_HUB_ID] [--host H] [--port P] [--share]

The model is loaded once at start (default: PolyU-ChenLab/UniPixel-3B where it can be loaded, otherwise the
bundled demo model). Layout and event wiring only: the model runs through ``unipixel.session.ChatSession``
inside the two ``spaces.GPU`` functions; UI conversions live in ``unipixel.ui``.
Programmatic use: one documented endpoint, ``/ask`` (see ``api_ask``).
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import html
import inspect
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import weakref
from pathlib import Path

import gradio as gr
import spaces

from unipixel import limits, ui
from unipixel.processing.media import MediaError
from unipixel.session import ChatSession, Settings

log = logging.getLogger("unipixel.app")
HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
EXAMPLES = json.loads((EXAMPLES_DIR / "examples.json").read_text())["examples"]
ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
TMP_ROOT = Path(tempfile.gettempdir()) / f"unipixel-app-{os.getpid()}"  # created on first use, removed at exit
atexit.register(shutil.rmtree, TMP_ROOT, ignore_errors=True)
ENGINE = None  # set by load(); one model for every visitor
VISITORS: "weakref.WeakValueDictionary[str, ui.Visitor]" = weakref.WeakValueDictionary()


def load(model: str | None):
    """Load the engine once (on ZeroGPU straight to "cuda": the spaces package defers the move).

    A named model that cannot be loaded falls back to the bundled demo model; the notice says why (badge, status).
    """
    global ENGINE
    from unipixel.engine import load_engine

    if ZERO_GPU:
        import torch

        options = dict(device="cuda", dtype=torch.bfloat16)
    else:
        options = {}
    ENGINE = load_engine(model, fallback=True, **options)
    log.info("serving model: %s%s", "bundled demo model" if ENGINE.is_bundled else ENGINE.name,
                f" ({ENGINE.notice})" if ENGINE.notice else "")
    return ENGINE


# ---------------------------------------------------------------------------------------------- model calls
def _reporter(progress):
    if progress is None:
        return None
    return lambda stage, fraction: progress(ui.stage_progress(stage, fraction)[0], desc=ui.stage_progress(stage, fraction)[1])


def _ask_seconds(session, question, prompts, dense, progress=None) -> int:
    """ZeroGPU budget of one turn: generation + SAM 2 on the sampled frames (+ dense tracking of the segment)."""
    media = session.media
    segment = media.frame_indices[-1] - media.frame_indices[0] + 1
    return int(min(limits.MAX_GPU_SECONDS, 30 + 2 * media.num_frames + 3 * len(prompts) + (0.25 * min(segment, limits.DENSE_FRAMES) if dense else 0)))


def _attach(session):
    """Give the session the model (inside the GPU function: on ZeroGPU that is a worker process)."""
    if hasattr(session, "attach"):  # ChatSession.attach(engine): caches back to the model's device
        session.attach(ENGINE)
    else:
        session.engine = ENGINE
    return session


def _detach(session):
    """Before the session crosses a process boundary (ZeroGPU only): no model, caches on the CPU."""
    if ZERO_GPU:
        if hasattr(session, "detach"):
            session.detach()
        else:
            session.engine = None
    return session


@spaces.GPU(duration=_ask_seconds)
def gpu_ask(session, question, prompts, dense, progress=None):
    """One turn (plus dense tracking of its new objects). Returns the session (on ZeroGPU it comes back pickled)
    and ``(reply, None or why dense tracking failed)``: a dense tracking failure does not undo the answer."""
    _attach(session)
    if progress is None and ZERO_GPU:  # spaces forwards the caller's progress context to its worker
        progress = gr.Progress()
    reply = session.ask(question, prompts, progress=_reporter(progress))
    dense_error = None
    if dense and reply.objects:
        try:
            session.track_dense([o.tag for o in reply.objects], progress=_reporter(progress))
        except Exception as err:  # noqa: BLE001 - the answer stands; the visitor is told dense tracking failed
            log.exception("dense tracking failed")
            dense_error = dense_failure(err)
    return _detach(session), (reply, dense_error)


@spaces.GPU(duration=60)
def gpu_refine(session, tag, clicks_by_frame):
    """Refinement clicks (grouped by sampled frame) on one object; SAM 2 re-tracks it."""
    _attach(session)
    for frame, clicks in clicks_by_frame.items():
        obj = session.refine(tag, clicks, frame)
    return _detach(session), obj


def _run(fn, session, *args):
    """Call a GPU function. On ZeroGPU it runs in a worker process: the session travels without the model
    and comes back as the function's result; locally spaces.GPU is a no-op and this is a plain call."""
    if ZERO_GPU:
        _detach(session)
        args = tuple(None if isinstance(a, gr.Progress) else a for a in args)
    session, result = fn(session, *args)
    return _attach(session), result


# ---------------------------------------------------------------------------------------------- helpers
def _failure(err: BaseException) -> tuple[str, str]:
    """``(kind, text)`` of a failed model call: kind "oom", "timeout", "zerogpu" (a message from ``spaces`` meant
    for visitors) or "error"; text is one line. Frees cached GPU memory after an out-of-memory error."""
    import torch

    text = " ".join(str(getattr(err, "message", None) or err).split()) or type(err).__name__  # gr.Error: .message
    title = str(getattr(err, "title", "") or "")
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text.lower():
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "oom", text
    if "GPU task aborted" in text or any(w in f"{title} {text}".lower() for w in ("timeout", "timed out", "time out")):
        return "timeout", text
    if title.startswith("ZeroGPU"):
        return "zerogpu", f"{title}: {text[:300]}"
    return "error", f"{type(err).__name__}: {text[:200]}"


def model_failure(err: BaseException) -> str:
    """One line for a model call that failed (the traceback goes to the log, never to the visitor): what
    happened and what to do. The conversation and the media are kept, so the visitor can simply ask again."""
    kind, text = _failure(err)
    if kind == "oom":
        return ("The GPU ran out of memory on this turn. Try fewer sampled frames, a shorter segment or a smaller "
                "file, then ask again.")
    if kind == "timeout":
        return ("The GPU time limit ran out on this turn. Try fewer sampled frames, a shorter segment or no dense "
                "tracking, then ask again.")
    if kind == "zerogpu":
        return text
    return f"The model failed on this turn ({text}). Your conversation is kept; ask again."


def dense_failure(err: BaseException) -> str:
    """One line for dense tracking that failed after the answer was given (the answer is kept)."""
    kind, text = _failure(err)
    why = {"oom": "the GPU ran out of memory", "timeout": "the GPU time limit ran out"}.get(kind, text)
    return (f"Dense tracking failed ({why}); the answer and its masks on the sampled frames are kept. "
            "Choose a shorter segment to track it densely.")


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed memory back to the system after a request. glibc keeps what each worker thread freed in its
    own arena, so without this the app would stay at the peak of the busiest moment (measured: +16 % after 16
    concurrent visitors, in tests/e2e/test_load.py)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def releasing_memory(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_memory()
    return wrapper


def _visitor(v: ui.Visitor | None, request: gr.Request | None) -> ui.Visitor:
    v = v if isinstance(v, ui.Visitor) else ui.Visitor()
    v.root, v.last_used = str(TMP_ROOT), time.time()
    if request is not None and getattr(request, "session_hash", None):
        VISITORS[request.session_hash] = v
    return v


def on_unload(request: gr.Request):
    v = VISITORS.pop(getattr(request, "session_hash", None) or "", None)
    if v is not None:
        v.close()


def _root_url(request: gr.Request | None) -> str:
    if os.environ.get("SPACE_ID"):
        return os.environ["SPACE_ID"]
    host = request.headers.get("host", "127.0.0.1:7860") if request is not None else "127.0.0.1:7860"
    proto = request.headers.get("x-forwarded-proto", "http") if request is not None else "http"
    return f"{proto}://{host}/"


def _model_label(engine) -> str:
    return "bundled demo model — knows only coloured shapes" if engine.is_bundled else Path(engine.name).name or engine.name


def _status(text: str, kind: str = "ok") -> str:
    return f'<div class="status {kind}">{text}</div>'


def _open(v: ui.Visitor, path: Path, name: str, frames: int, start=None, end=None) -> None:
    """Decode the media (CPU only) into a fresh session; raises ValueError with a one-line message."""
    if path.stat().st_size > limits.MAX_UPLOAD_BYTES:
        raise ValueError(f"the file is larger than {limits.MAX_UPLOAD_BYTES // 2**20} MB; upload a smaller or shorter one")
    session = ChatSession(ENGINE, Settings(num_frames=int(frames)))
    session.open(path, num_frames=int(frames), start_s=start, end_s=end)
    v.reset_conversation()
    v.session, v.media_path, v.media_name, v.segment = session, path, name, (start, end)
    live = sorted((o for o in list(VISITORS.values()) if o is not v and o.session is not None), key=lambda o: o.last_used)
    for old in live[: max(0, len(live) + 1 - limits.MAX_LIVE_SESSIONS)]:  # bounded: the least recently used let go
        log.info("freeing an idle visitor's media (more than %d live sessions)", limits.MAX_LIVE_SESSIONS)
        old.close()


# ---------------------------------------------------------------------------------------------- layout
def build() -> gr.Blocks:
    engine = ENGINE
    with gr.Blocks(title="UniPixel — chat with pixels", fill_width=True, delete_cache=(limits.CACHE_SWEEP_S, limits.CACHE_MAX_AGE_S)) as demo:
        state = gr.State(None, time_to_live=limits.STATE_TTL_S, delete_callback=lambda v: v.close() if isinstance(v, ui.Visitor) else None)
        with gr.Row(elem_id="header"):
            gr.HTML('<div class="title"><h1>UniPixel</h1><p>Ask about an image or a video — the answer names objects '
                    'as coloured <b>[obj_k]</b> tags with their masks. Draw points, boxes or scribbles to point at things.</p></div>',
                    js_on_load=None)
            gr.HTML(ui.model_badge_html(engine.name, engine.notice, engine.is_bundled), elem_id="model_badge", js_on_load=None)
        with gr.Row(equal_height=False, elem_id="main"):
            # ------------------------------------------------ media + sketch
            with gr.Column(scale=5, min_width=340, elem_id="media_col"):
                upload = gr.File(label="Image or video", file_types=["image", "video"], elem_id="upload", height=120)
                media_info = gr.Markdown(elem_id="media_info")
                tool = gr.Radio(list(ui.TOOLS), value=ui.TOOL_CLICK, show_label=False, elem_id="tool")
                sketch = gr.Image(label="Sketch", show_label=False, interactive=False, format="png", height=380,
                                  elem_id="sketch", buttons=[], placeholder="Upload an image or a video, or pick an example below.")
                with gr.Row(elem_id="prompt_row"):
                    prompt_list = gr.HTML(elem_id="prompt_list", js_on_load=None, scale=4)
                    undo = gr.Button("↶ Undo", size="sm", elem_id="undo", scale=0, min_width=74)
                    clear = gr.Button("✕ Clear", size="sm", elem_id="clear_prompts", scale=0, min_width=74)
                with gr.Column(visible=False, elem_id="refine_box") as refine_box:
                    gr.Markdown("Click on the object (**Refine +**) or on background it wrongly covers (**Refine −**), "
                                "on any frame; then re-track. The object keeps its tag and colour.", elem_classes="hint")
                    with gr.Row(equal_height=True):
                        refine_obj = gr.Dropdown([], show_label=False, elem_id="refine_obj", scale=3)
                        refine_btn = gr.Button("Re-track", variant="primary", elem_id="refine_apply", scale=1)
                frame = gr.Slider(0, 1, value=0, step=1, label="Frame (sampled) to draw on and to view", visible=False, elem_id="frame")
                with gr.Group(visible=False) as video_box:
                    gr.Markdown("Sampled frames: the model sees these. Click one to draw on it.", elem_classes="hint strip-hint")
                    frames_strip = gr.Image(show_label=False, interactive=False, format="png", elem_id="frames_strip",
                                            buttons=[], container=False)
                    with gr.Row():
                        seg_start = gr.Number(label="Segment start (s)", value=None, minimum=0, elem_id="seg_start")
                        seg_end = gr.Number(label="Segment end (s)", value=None, minimum=0, elem_id="seg_end")
                        seg_btn = gr.Button("Analyse segment", elem_id="seg_apply", size="sm")
            # ------------------------------------------------ chat
            with gr.Column(scale=5, min_width=340, elem_id="chat_col"):
                chat = gr.Chatbot(elem_id="chat", height=470, label=f"Chat · {_model_label(engine)}", show_label=True,
                                  layout="bubble", feedback_options=None, buttons=["copy"],
                                  placeholder="**Ask anything about the media.**<br>Refer to your prompts as [0], [1]… — "
                                  "answers tag objects as coloured [obj_k] chips.")
                with gr.Row(elem_id="ask_row"):
                    question = gr.Textbox(show_label=False, placeholder="e.g. Please segment the red circle. · What is [0]?",
                                          lines=1, max_lines=4, elem_id="question", scale=5, autofocus=True)
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
                with gr.Row():
                    new_chat = gr.Button("New conversation", size="sm", elem_id="new_chat")
                notice = engine.notice if "unavailable" in (engine.notice or "") else ""  # a fallback says why
                status = gr.HTML(_status(f"⚠️ Serving the {html.escape(notice)}", "notice") if notice else "",
                                 elem_id="status", js_on_load=None)
            # ------------------------------------------------ result
            with gr.Column(scale=5, min_width=340, elem_id="result_col"):
                result_img = gr.Image(label="Result", interactive=False, format="png", height=330, elem_id="result_img",
                                      buttons=["fullscreen"], placeholder="Masks appear here. Click a mask to find its tag.")
                result_video = gr.Video(label="Overlay video", interactive=False, autoplay=True, loop=True, visible=False,
                                        elem_id="result_video", height=260)
                objects_html = gr.HTML(ui.object_list_html([], [], None, None, True), elem_id="objects", js_on_load=None)
                visible = gr.CheckboxGroup([], value=[], label="Show objects", elem_id="visible")
                with gr.Row(elem_id="downloads"):
                    dl_overlay = gr.DownloadButton("Overlay", size="sm", interactive=False, elem_id="dl_overlay")
                    dl_masks = gr.DownloadButton("Masks (PNG zip)", size="sm", interactive=False, elem_id="dl_masks")
                    dl_rle = gr.DownloadButton("COCO RLE", size="sm", interactive=False, elem_id="dl_rle")
                    dl_json = gr.DownloadButton("Conversation JSON", size="sm", interactive=False, elem_id="dl_json")
                with gr.Accordion("Copy as code (gradio_client)", open=False, elem_id="code_acc"):
                    code = gr.Code(language="python", value="# ask something first", elem_id="code", buttons=["copy"], lines=8)
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            with gr.Row():
                set_frames = gr.Slider(1, limits.MAX_SAMPLE_FRAMES, value=ui.DEFAULT_SETTINGS["frames"], step=1,
                                       label=f"Sampled video frames (max {limits.MAX_SAMPLE_FRAMES}; re-samples the video)",
                                       elem_id="set_frames")
                set_dense = gr.Checkbox(value=ui.DEFAULT_SETTINGS["dense"], label="Dense tracking (overlay video at the "
                                        f"source frame rate, up to {limits.DENSE_FRAMES} frames)", elem_id="set_dense")
                set_tokens = gr.Slider(16, limits.MAX_NEW_TOKENS, value=ui.DEFAULT_SETTINGS["max_new_tokens"], step=16,
                                       label="Max new tokens", elem_id="set_tokens")
        gr.Markdown("### Examples — click one to load its media and a ready-made question", elem_id="examples_title")
        examples = gr.Gallery([(str(EXAMPLES_DIR / ex.get("thumb", ex["media"])), ui.example_label(ex, engine.is_bundled))
                               for ex in EXAMPLES],
                              columns=9, height=170, allow_preview=False, show_label=False, elem_id="examples",
                              object_fit="cover", buttons=[])
        sink = gr.Textbox(visible="hidden", elem_id="ui_sink")

        # one programmatic endpoint (hidden components keep it out of the page)
        with gr.Group(visible=False):
            api_media = gr.File(label="media")
            api_question = gr.Textbox(label="question")
            api_prompts = gr.Textbox(label="prompts_json", value="[]")
            api_settings = gr.Textbox(label="settings_json", value=json.dumps({"frames": 16, "dense": False, "max_new_tokens": 256}))
            api_text = gr.Textbox(label="reply_text")
            api_overlay = gr.File(label="overlay")
            api_objects = gr.JSON(label="objects")
            api_btn = gr.Button("ask")

        # ------------------------------------------------------------------------------ views
        media_outs = [sketch, prompt_list, frame, video_box, frames_strip, media_info, seg_start, seg_end]
        result_outs = [chat, result_img, result_video, objects_html, visible, refine_obj]
        file_outs = [dl_overlay, dl_masks, dl_rle, dl_json]
        ALL = media_outs + result_outs + file_outs + [code, status, question, upload, tool, refine_box, state]

        def view(v: ui.Visitor, fr: int, tl: str, rtag: str | None, *, media=False, result=False, files=False,
                 sketch_only=False, video=True) -> dict:
            fr = v.clamp_frame(fr)
            out = {state: v}
            if media or result or sketch_only:
                out[sketch] = v.sketch_image(fr, tl, rtag)
                out[prompt_list] = v.prompt_list_html()
            if media:
                n = v.media.num_frames if v.media is not None else 1
                out[frame] = gr.update(maximum=max(n - 1, 1), value=fr, visible=v.is_video)
                out[video_box] = gr.update(visible=v.is_video)
                out[frames_strip] = ui.frames_strip(v.media.frames, fr, v.media.timestamps) if v.is_video else None
                out[media_info] = v.media_info()
                out[seg_start], out[seg_end] = v.segment
            if result:
                tags = [o.tag for o in v.objects]
                out[chat] = v.chat_messages()
                out[result_img] = v.result_image(fr)
                out[objects_html] = ui.object_list_html(v.objects, v.visible_tags, v.highlight, fr, not v.is_video)
                out[visible] = gr.update(choices=tags, value=v.visible_tags)
                out[refine_obj] = gr.update(choices=tags, value=rtag if rtag in tags else (tags[-1] if tags else None))
            path = None
            if result and video:
                path = v.result_video() if v.is_video and v.objects else None
                out[result_video] = gr.update(value=str(path) if path else None, visible=v.is_video)
            if files:
                ex = v.exports(fr, video=path)
                for comp, key in zip(file_outs, ("overlay", "masks", "rle", "conversation")):
                    out[comp] = gr.update(value=str(ex[key]) if ex[key] else None, interactive=ex[key] is not None)
            return out

        def refuse(v, message: str) -> dict:
            gr.Warning(message)
            return {state: v, status: _status(f"⚠️ {html.escape(message)}", "warn")}

        def guarded(fn):
            """Every handler (a function or a generator of updates): unexpected errors become a clear message;
            the server keeps serving."""
            streaming = inspect.isgeneratorfunction(fn)

            def updates(*args, **kwargs):
                try:
                    if streaming:
                        yield from fn(*args, **kwargs)
                    else:
                        yield fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as err:  # noqa: BLE001 - shown to the visitor, logged in full
                    log.exception("handler %s failed", fn.__name__)
                    gr.Warning(f"Something went wrong: {err}")
                    yield {status: _status(f"⚠️ Something went wrong ({type(err).__name__}: {html.escape(str(err))}). "
                                           "The page still works.", "warn")}
                finally:
                    release_memory()

            if streaming:
                return functools.wraps(fn)(updates)
            return functools.wraps(fn)(lambda *args, **kwargs: [*updates(*args, **kwargs)][-1])

        # ------------------------------------------------------------------------------ handlers
        @guarded
        def on_upload(file, frames, v, request: gr.Request):
            v = _visitor(v, request)
            if not file:
                return {state: v}
            src = Path(file)
            dst = v.workdir() / f"media-{int(time.time() * 1000)}{src.suffix.lower()}"
            try:
                shutil.copyfile(src, dst)
                _open(v, dst, src.name, frames)
            except (MediaError, ValueError, OSError) as err:
                dst.unlink(missing_ok=True)
                msg = f"Could not open {src.name}: {err}"
                return {**refuse(v, msg), upload: None}
            return {**view(v, 0, ui.TOOL_CLICK, None, media=True, result=True, files=True), tool: ui.TOOL_CLICK,
                    code: "# ask something first", refine_box: gr.update(visible=False),
                    status: _status(f"Loaded <b>{html.escape(src.name)}</b>. Draw prompts or just ask.")}

        @guarded
        def on_example(frames, v, evt: gr.SelectData, request: gr.Request):
            v = _visitor(v, request)
            ex = EXAMPLES[evt.index]
            try:
                _open(v, EXAMPLES_DIR / ex["media"], ex["media"], frames)
                v.pending = ui.prompts_from_json(ex.get("prompts", []), v.media.size)
            except (MediaError, ValueError) as err:
                return refuse(v, f"Could not load the example: {err}")
            v.followups = list(ex.get("followups", []))
            return {**view(v, 0, ui.TOOL_CLICK, None, media=True, result=True, files=True), question: ex["question"],
                    tool: ui.TOOL_CLICK, upload: None, refine_box: gr.update(visible=False), code: "# ask something first",
                    status: _status(f"Example loaded: <b>{ex['kind']}</b>. Press <b>Send</b>."
                                    + (f" ⚠️ {ui.BUNDLED_POINTS_HINT}." if ui.beyond_model(ex, engine.is_bundled) else ""))}

        @guarded
        def on_resample(frames, start, end, fr, v, request: gr.Request):
            v = _visitor(v, request)
            if v.media is None or not v.is_video:
                return {state: v}
            try:
                start, end = ui.check_segment(start, end)
                _open(v, v.media_path, v.media_name, frames, start, end)
            except (MediaError, ValueError) as err:
                return refuse(v, str(err))
            gr.Info("The video was re-sampled; the conversation starts over.")
            return {**view(v, 0, ui.TOOL_CLICK, None, media=True, result=True, files=True),
                    status: _status(f"Analysing {v.media.num_frames} frames of the segment.")}

        @guarded
        def on_sink(payload, tl, fr, rtag, v, request: gr.Request):
            v = _visitor(v, request)
            try:
                data = json.loads((payload or "").rsplit("#", 1)[0])
            except json.JSONDecodeError:
                return {state: v}
            if not isinstance(data, dict):  # the page always sends an object: anything else is ignored
                return {state: v}
            try:
                return sink_event(data, tl, fr, rtag, v)
            except (TypeError, ValueError, KeyError, IndexError) as err:  # malformed (the page never sends one)
                log.info("ignored a malformed sketch event (%s: %s)", type(err).__name__, err)
                return {state: v}

        def sink_event(data: dict, tl, fr, rtag, v: ui.Visitor) -> dict:
            kind = data.get("type")
            if kind == "sketch":
                if v.media is None:
                    return refuse(v, "Upload an image or a video first (or pick an example).")
                fr = v.clamp_frame(fr)
                p = ui.gesture_to_prompt(data, tl, v.media.size, fr)
                if p is None:
                    return {state: v}
                if p["kind"] == "click":
                    if not v.objects:
                        return refuse(v, "There is no object to refine yet: ask for a segmentation first.")
                    v.clicks.append((*p["xy"], p["label"], fr))
                else:
                    if len(v.all_prompts()) >= limits.MAX_PROMPTS:
                        return refuse(v, f"At most {limits.MAX_PROMPTS} prompts per conversation; start a new conversation.")
                    v.pending.append(p)
                return view(v, fr, tl, rtag, sketch_only=True)
            if kind == "strip":
                if not v.is_video:
                    return {state: v}
                k = ui.strip_index(float(data["x"]), float(data["y"]), v.media.num_frames)
                return {state: v} if k is None else {state: v, frame: k}
            if kind in ("tag", "mask", "frame"):
                if v.media is None or not v.objects:
                    return {state: v}
                if kind == "mask":
                    h, w = v.media.size
                    tag = ui.object_at(v.frame_masks(v.clamp_frame(fr)), float(data["x"]) * w, float(data["y"]) * h)
                else:
                    tag = data.get("tag")
                if kind == "frame":
                    fr = v.clamp_frame(data.get("frame"))
                    v.highlight = tag if tag in v.session.objects else v.highlight
                    return {**view(v, fr, tl, rtag, result=True, video=False), frame: fr}
                v.highlight = None if tag is None or tag == v.highlight or tag not in v.session.objects else tag
                return view(v, fr, tl, rtag, result=True)
            return {state: v}

        @guarded
        def on_frame(fr, tl, rtag, v, request: gr.Request):
            v = _visitor(v, request)
            if v.media is None:
                return {state: v}
            out = view(v, fr, tl, rtag, sketch_only=True)
            if v.is_video:
                out[frames_strip] = ui.frames_strip(v.media.frames, v.clamp_frame(fr), v.media.timestamps)
            if v.objects:
                out[result_img] = v.result_image(fr)
                out[objects_html] = ui.object_list_html(v.objects, v.visible_tags, v.highlight, v.clamp_frame(fr), not v.is_video)
            return out

        @guarded
        def on_tool(tl, fr, rtag, v, request: gr.Request):
            v = _visitor(v, request)
            refining = tl in (ui.TOOL_REFINE_POS, ui.TOOL_REFINE_NEG)
            if refining and not v.objects:
                gr.Info("Refine needs an object: ask for a segmentation first.")
            out = view(v, fr, tl, rtag, sketch_only=v.media is not None)
            out[refine_box] = gr.update(visible=refining)
            return out

        @guarded
        def on_undo(tl, fr, rtag, v, request: gr.Request):
            v = _visitor(v, request)
            if tl in (ui.TOOL_REFINE_POS, ui.TOOL_REFINE_NEG) and v.clicks:
                v.clicks.pop()
            elif v.pending:
                v.pending.pop()
            elif v.clicks:
                v.clicks.pop()
            return view(v, fr, tl, rtag, sketch_only=v.media is not None)

        @guarded
        def on_clear(tl, fr, rtag, v, request: gr.Request):
            v = _visitor(v, request)
            v.pending, v.clicks = [], []
            return view(v, fr, tl, rtag, sketch_only=v.media is not None)

        @guarded
        def on_visible(tags, fr, tl, rtag, v, request: gr.Request):
            v = _visitor(v, request)
            if v.media is None:
                return {state: v}
            v.visible = list(tags or [])
            if v.highlight not in v.visible:
                v.highlight = None
            return view(v, fr, tl, rtag, result=True, files=True)

        @guarded
        def on_new_chat(fr, tl, v, request: gr.Request):
            v = _visitor(v, request)
            v.reset_conversation()
            out = view(v, fr, tl, None, result=True, files=True, sketch_only=v.media is not None)
            return {**out, code: "# ask something first", status: _status("New conversation: same media, nothing asked yet.")}

        @guarded
        def on_submit(q, max_tokens, v, request: gr.Request):
            """Step 1 (instant): refuse what makes no sense before any GPU time is spent, else show the question."""
            v = _visitor(v, request)
            if v.media is None:
                return refuse(v, "Upload an image or a video first (or pick an example).")
            try:
                q = limits.clean_question(q or "")
                limits.check_new_tokens(int(max_tokens))
                pending = list(v.pending)
                limits.check_prompts([ui.to_session_prompt(p) for p in pending], len(v.session.regions),
                                     v.media.size, v.media.num_frames)
                limits.check_references(q, len(v.session.regions) + len(pending))
            except ValueError as err:
                return refuse(v, str(err)[:1].upper() + str(err)[1:])
            if len(v.turns) + len(v.asking) >= limits.MAX_TURNS:
                return refuse(v, f"This conversation reached {limits.MAX_TURNS} turns; start a new conversation.")
            if len(v.session.objects) >= limits.MAX_OBJECTS:
                return refuse(v, f"This conversation has {limits.MAX_OBJECTS} objects; start a new conversation.")
            v.asking.append((q, pending))
            shown = v.chat_messages() + [{"role": "user", "content": v.user_message_html(q, pending, len(v.sent))}]
            return {state: v, chat: shown, question: "", status: _status("Working on it…")}

        @guarded
        def on_ask(frames, dense, max_tokens, fr, tl, rtag, v, request: gr.Request, progress=gr.Progress()):
            """Step 2: the model turn (GPU), then the results: the answer and its image overlay first, the overlay
            video and the downloads once encoded (a video's encoding stays off the text reply's critical path)."""
            v = _visitor(v, request)
            if not v.asking or v.media is None:
                yield {state: v}
                return
            q, pending = v.asking.pop(0)
            prompts = [ui.to_session_prompt(p) for p in pending]
            dense_ok = bool(dense) and v.dense_possible()
            if dense and v.is_video and not dense_ok:
                gr.Info(f"Dense tracking skipped: the segment has {v.segment_frames()} frames (at most {v.dense_cap()} "
                        "at this size). Choose a shorter segment for an overlay at the source frame rate.")
            v.session.settings.max_new_tokens = int(max_tokens)
            settings = {"frames": v.media.num_frames, "dense": dense_ok, "max_new_tokens": int(max_tokens),
                        "start": v.segment[0], "end": v.segment[1]}
            turn = ui.Turn(q, pending, len(v.sent), settings)
            progress(0.0, desc="Decoding media")
            dense_error = None
            try:
                v.session, (turn.reply, dense_error) = _run(gpu_ask, v.session, q, prompts, dense_ok, progress)
            except gr.Error as err:  # from spaces (ZeroGPU): a ValueError, but not the visitor's input
                log.warning("ask failed: %s", err)
                turn.error = model_failure(err)
            except (MediaError, ValueError) as err:
                turn.error = str(err)
            except Exception as err:  # noqa: BLE001 - the turn shows the error, the session keeps working
                log.exception("ask failed")
                turn.error = model_failure(err)
            finally:
                _attach(v.session)
            sent = pending[: max(0, len(v.session.regions) - len(v.sent))]
            v.sent += sent
            v.pending = [p for p in v.pending if not any(p is s for s in sent)]
            v.turns.append(turn)
            v.visible, v.highlight = None, None
            streamed = v.is_video and bool(v.objects)
            if streamed:  # the answer now; the overlay video (seconds for long clips) follows
                yield {**view(v, fr, tl, rtag, result=True, video=False), status: _status("Encoding the overlay video…")}
            progress(0.92, desc="Encoding results")
            out = view(v, fr, tl, rtag, result=True, files=True)
            if streamed:  # already sent, unchanged: gradio would rewrite its cached file while the page reads it
                out.pop(result_img, None)
            previous = [{"question": t.question, "prompts": ui.prompts_to_json(t.prompts)}
                        for t in v.turns[:-1] if t.reply is not None]
            out[code] = ui.copy_as_code(_root_url(request), v.media_name, q, ui.prompts_to_json(pending), settings, previous)
            if v.followups and turn.reply is not None:  # an example's next question, ready to send
                out[question] = v.followups.pop(0)
            n = len(turn.reply.objects) if turn.reply is not None else 0
            problem = turn.error or dense_error
            hint = ui.prompt_hint(sent, engine.is_bundled)
            out[status] = (_status(f"⚠️ {html.escape(problem)}", "warn") if problem else
                           _status(f"Turn {len(v.turns)}: {n} object{'s' * (n != 1)} · {turn.reply.timings.get('total', 0):.1f} s"
                                   + (f" · ⚠️ {hint}" if hint else "")))
            yield out

        @guarded
        def on_refine(rtag, fr, tl, v, request: gr.Request, progress=gr.Progress()):
            v = _visitor(v, request)
            if v.media is None or rtag not in (v.session.objects if v.session else {}):
                return refuse(v, "Choose an object to refine.")
            if not v.clicks:
                return refuse(v, "Click on the object (Refine +) or the background (Refine −) first.")
            by_frame: dict[int, list] = {}
            for x, y, label, f in v.clicks:
                by_frame.setdefault(f, []).append((x, y, label))
            try:
                for f, clicks in by_frame.items():
                    limits.check_clicks(clicks, v.media.size, f, v.media.num_frames)
            except ValueError as err:
                return refuse(v, str(err))
            progress(0.3, desc="Segmenting")
            try:
                v.session, obj = _run(gpu_refine, v.session, rtag, by_frame)
            except gr.Error as err:  # from spaces (ZeroGPU): a ValueError, but not the visitor's input
                return refuse(v, model_failure(err))
            except ValueError as err:
                return refuse(v, str(err))
            except Exception as err:  # noqa: BLE001 - the object and the clicks stay; the visitor may retry
                log.exception("refine failed")
                return refuse(v, model_failure(err))
            finally:
                _attach(v.session)
            n = len(v.clicks)
            v.clicks = []
            v.turns.append(ui.Turn("", [], len(v.sent), {}, note=f"Refined [{rtag}] with {n} click{'s' * (n != 1)} on frame"
                                   f"{'s' * (len(by_frame) > 1)} {', '.join(map(str, sorted(by_frame)))}; confidence "
                                   f"{obj.confidence:.2f}."))
            progress(0.9, desc="Encoding results")
            return {**view(v, fr, tl, rtag, result=True, files=True), status: _status(f"Re-tracked [{html.escape(str(rtag))}].")}

        # ------------------------------------------------------------------------------ wiring
        private = dict(api_visibility="private")
        ui_ev = dict(concurrency_id="ui", concurrency_limit=limits.UI_CONCURRENCY, **private)
        model_ev = dict(concurrency_id="model", concurrency_limit=1, **private)
        upload.upload(on_upload, [upload, set_frames, state], ALL, **ui_ev)
        examples.select(on_example, [set_frames, state], ALL, **ui_ev)
        seg_btn.click(on_resample, [set_frames, seg_start, seg_end, frame, state], ALL, **ui_ev)
        set_frames.release(on_resample, [set_frames, seg_start, seg_end, frame, state], ALL, **ui_ev)
        sink.change(on_sink, [sink, tool, frame, refine_obj, state], ALL, trigger_mode="multiple", show_progress="hidden", **ui_ev)
        frame.change(on_frame, [frame, tool, refine_obj, state], ALL, show_progress="hidden", **ui_ev)
        tool.change(on_tool, [tool, frame, refine_obj, state], ALL, show_progress="hidden", **ui_ev)
        refine_obj.change(on_tool, [tool, frame, refine_obj, state], ALL, show_progress="hidden", **ui_ev)
        undo.click(on_undo, [tool, frame, refine_obj, state], ALL, show_progress="hidden", **ui_ev)
        clear.click(on_clear, [tool, frame, refine_obj, state], ALL, show_progress="hidden", **ui_ev)
        visible.input(on_visible, [visible, frame, tool, refine_obj, state], ALL, **ui_ev)
        new_chat.click(on_new_chat, [frame, tool, state], ALL, **ui_ev)
        ask_inputs = [set_frames, set_dense, set_tokens, frame, tool, refine_obj, state]
        for trigger in (send.click, question.submit):
            trigger(on_submit, [question, set_tokens, state], ALL, show_progress="hidden", **ui_ev).then(
                on_ask, ask_inputs, ALL, show_progress_on=[chat, result_img], **model_ev)
        refine_btn.click(on_refine, [refine_obj, frame, tool, state], ALL, show_progress_on=[result_img], **model_ev)
        api_btn.click(api_ask, [api_media, api_question, api_prompts, api_settings], [api_text, api_overlay, api_objects],
                      api_name="ask", concurrency_id="model", concurrency_limit=1)
        demo.unload(on_unload)
    return demo


# ---------------------------------------------------------------------------------------------- API
API_DIR = TMP_ROOT / "api"


def _prune_api_results() -> None:
    """Bounded: keep the newest ``API_RESULTS_KEPT`` result folders, none older than ``API_RESULT_TTL_S``.
    Calls run one at a time (the "model" queue), and Gradio copies a call's files to its cache before the next
    one starts, so older folders are no longer needed."""
    API_DIR.mkdir(parents=True, exist_ok=True)
    aged = []
    for entry in API_DIR.iterdir():
        try:
            aged.append((entry.stat().st_mtime, entry))
        except OSError:  # already gone
            pass
    for i, (mtime, old) in enumerate(sorted(aged, reverse=True)):
        if i >= limits.API_RESULTS_KEPT or time.time() - mtime > limits.API_RESULT_TTL_S:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


@releasing_memory
def api_ask(media: str, question: str, prompts_json: str = "[]", settings_json: str = "{}", progress=gr.Progress()):
    """Answer one question about an image or a video.

    Args:
        media: the image or video file.
        question: the question; refer to visual prompts as [0], [1], ... (in order).
        prompts_json: JSON list in the CLI's conventions, original pixels, sampled-frame index:
            [{"point": [x, y], "frame": 0}, {"box": [x0, y0, x1, y1], "frame": 2},
             {"scribble": [[x, y], ...], "width": 5, "frame": 0}, {"mask": {"size": [H, W], "counts": "<COCO RLE>"}}]
        settings_json: JSON object: {"frames": 16, "dense": false, "max_new_tokens": 256, "start": s, "end": s,
            "previous_turns": [{"question": ..., "prompts": [...]}]} (earlier turns replayed first).
    Returns:
        reply text with [obj_k] tags, the overlay file (PNG for an image, MP4 for a video) and a JSON object
        {"text", "objects": [{"tag", "color", "confidence", "frames", ...}], "media": {...}, "turn"}, with "notice"
        when dense tracking was skipped or the bundled demo model was given points/boxes (it does not read them).
    """
    try:
        if not media:
            raise ValueError("give an image or a video file")
        settings = ui.settings_from_json(settings_json)
        question = limits.clean_question(question or "")
        _prune_api_results()
        v = ui.Visitor(root=str(API_DIR))
        _open(v, Path(media), Path(media).name, settings["frames"], settings["start"], settings["end"])
        v.session.settings.max_new_tokens = settings["max_new_tokens"]
        dense = settings["dense"] and v.dense_possible()
        turns = [(t["question"], ui.prompts_from_json(t.get("prompts", []), v.media.size)) for t in settings["previous_turns"]]
        turns.append((question, ui.prompts_from_json(prompts_json, v.media.size)))
        checked = []
        for q, ps in turns:
            q = limits.clean_question(q)
            prompts = [ui.to_session_prompt(p) for p in ps]
            limits.check_prompts(prompts, sum(len(p) for _, p in checked), v.media.size, v.media.num_frames)
            checked.append((q, prompts))
    except (MediaError, ValueError) as err:
        raise gr.Error(str(err), print_exception=False) from None
    try:
        for q, prompts in checked:
            v.session, (reply, dense_error) = _run(gpu_ask, v.session, q, prompts, dense, progress)
    except gr.Error as err:  # from spaces (ZeroGPU): a ValueError, but not the caller's input
        log.warning("ask (API) failed: %s", err)
        raise gr.Error(model_failure(err), print_exception=False) from None
    except (MediaError, ValueError) as err:
        raise gr.Error(str(err), print_exception=False) from None
    except Exception as err:  # noqa: BLE001 - a clear message instead of the exception's
        log.exception("ask (API) failed")
        raise gr.Error(model_failure(err), print_exception=False) from None
    finally:
        if v.session is not None:
            _attach(v.session)
    v.visible = [o.tag for o in reply.objects]
    files = v.exports(0)
    notices = [n for n in (dense_error, ui.prompt_hint([p for _, ps in turns for p in ps], ENGINE.is_bundled)) if n]
    result = {"text": reply.text, "turn": reply.turn, "reply": reply.to_dict(),
              "objects": [o.to_dict() for o in reply.objects],
              "media": v.conversation()["media"], **({"notice": "; ".join(notices)} if notices else {})}
    overlay = files["overlay"]
    if overlay is None:  # nothing segmented: the plain media, so the output is always a file
        overlay = v.new_file("overlay", ".png")
        from PIL import Image

        Image.fromarray(v.media.frames[0]).save(overlay)
    return reply.text, str(overlay), result


# ---------------------------------------------------------------------------------------------- main
# System fonts only: the page makes no request outside the server (works offline and behind firewalls).
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **options):
    """Queue and launch ``demo`` with the app's limits and file rules (``main`` uses it; tests pass
    ``prevent_thread_lock=True``). Only the examples folder is served besides Gradio's own upload/cache folders."""
    demo.queue(default_concurrency_limit=1, max_size=limits.QUEUE_MAX_SIZE)
    return demo.launch(server_name=host, server_port=port, share=share, css=ui.CSS, js=ui.JS, theme=THEME,
                       max_file_size=limits.MAX_UPLOAD_BYTES, allowed_paths=[str(EXAMPLES_DIR)], ssr_mode=False,
                       show_error=True, **options)


def _stop(signum, frame):
    raise KeyboardInterrupt  # gradio's launch() closes the server on it, then main() returns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("UNIPIXEL_MODEL"),
                        help="checkpoint directory or hub id (default: PolyU-ChenLab/UniPixel-3B, else the bundled model)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from unipixel.loading import CheckpointError

    try:
        load(args.model)
    except CheckpointError as err:
        raise SystemExit(f"could not load the model: {err}") from None
    signal.signal(signal.SIGTERM, _stop)  # a clean stop: temporary files go (atexit) on `kill` too
    serve(build(), args.host, args.port, args.share)


if __name__ == "__main__":
    main()
