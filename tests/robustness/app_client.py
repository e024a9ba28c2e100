"""Drive the real Gradio app in-process through ``gradio_client``: the documented ``/ask`` endpoint, and the UI's
own events (upload, sketch, submit, ask, refine...) as a browser tab would send them, each
:class:`UIVisitor` with its own server-side ``gr.State`` (its own session hash).

The UI events are private in the app (no client may call them); :func:`running_app` makes them callable on the
test's copy of the app only, so the tests run the exact handlers, queue and state handling a visitor gets.
The server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import html
import json
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningApp:
    url: str
    demo: gr.Blocks


@contextmanager
def running_app(engine, expose_ui: bool = True) -> Iterator[RunningApp]:
    """``app.build()`` with ``engine``, launched with the app's own ``serve`` settings on a free local port."""
    import app

    previous = app.ENGINE
    app.ENGINE = engine
    demo = app.build()
    if expose_ui:
        for fn in demo.fns.values():
            if fn.api_visibility == "private":
                fn.api_visibility = "public"
    port = free_port()
    try:
        app.serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        yield RunningApp(f"http://127.0.0.1:{port}/", demo)
    finally:
        demo.close()
        app.ENGINE = previous


def raw_upload(url: str, path) -> dict:
    """Upload a file the way the page does; returns the FileData to pass to an event."""
    import httpx

    with open(path, "rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (Path(path).name, handle)}, timeout=60)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def raw_call(url: str, api_name: str, data: list, session_hash: str | None = None) -> tuple[str, Any]:
    """Call an event over plain HTTP (``/gradio_api/call/<name>``) with any JSON a client could send, lone
    surrogates and server paths included. Returns ``(event, data)``: ``("complete", outputs)`` or
    ``("error", message)``; an HTTP refusal raises ``httpx.HTTPStatusError``."""
    import httpx

    body = json.dumps({"data": data, **({"session_hash": session_hash} if session_hash else {})})  # ASCII escapes
    response = httpx.post(f"{url}gradio_api/call/{api_name.lstrip('/')}", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    event, payload = None, None
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name.lstrip('/')}/{event_id}", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1])
                break
    return event, payload


def text_of(value: Any) -> str:
    """Visible text of an HTML value (tags dropped, entities decoded)."""
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", str(value or ""))).split())
    return re.sub(r" ([.,;:!?)])", r"\1", text)


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and not TRACEBACK.search(message)


class UIVisitor:
    """One browser tab: calls the UI events by name and returns their outputs keyed by ``elem_id``."""

    def __init__(self, live: RunningApp):
        from gradio_client import Client

        self.url = live.url
        self.client = Client(live.url, verbose=False)
        self.outputs: dict[str, list[str]] = {}
        for fn in live.demo.fns.values():
            comps = [b for b in fn.outputs if isinstance(b, gr.components.Component) and not isinstance(b, gr.State)]
            self.outputs[f"/{fn.api_name}"] = [b.elem_id for b in comps]
        self.last: dict[str, Any] = {}

    def call(self, api_name: str, *args) -> dict[str, Any]:
        values = self.client.predict(*args, api_name=api_name)
        values = values if isinstance(values, (list, tuple)) else (values,)
        out = {}
        for key, value in zip(self.outputs[api_name], values):
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" not in value:
                    continue  # no change
                value = value["value"]
            out[key] = self.last[key] = value  # what the page now shows
        return out

    # ------------------------------------------------------------------ gestures
    def upload(self, path, frames: int = 8) -> dict:
        from gradio_client import handle_file

        return self.call("/on_upload", handle_file(str(path)), frames)

    def sketch(self, payload: dict | str, tool: str = "Point / box", frame: int = 0) -> dict:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return self.call("/on_sink", text, tool, frame, None)

    def ask(self, question: str, frames: int = 8, dense: bool = False, tokens: int = 32) -> dict:
        """Send: the instant check (``on_submit``), then the model turn (``on_ask``), as the page chains them."""
        submitted = self.call("/on_submit", question, tokens)
        return {**submitted, **self.call("/on_ask", frames, dense, tokens, 0, "Point / box", None)}

    def new_chat(self) -> dict:
        return self.call("/on_new_chat", 0, "Point / box")

    # ------------------------------------------------------------------ what the page shows
    @property
    def status(self) -> str:
        return text_of(self.last.get("status"))

    @property
    def chat(self) -> list[dict]:
        value = self.last.get("chat")
        return value if isinstance(value, list) else []

    def chat_texts(self, role: str | None = None) -> list[str]:
        """The chat's messages as the visitor reads them."""
        return [text_of(m) for m in self.chat_html(role)]

    def chat_html(self, role: str | None = None) -> list[str]:
        """The chat's messages as sent to the page (HTML)."""
        out = []
        for message in self.chat:
            if role is not None and message.get("role") != role:
                continue
            content = message.get("content")
            parts = content if isinstance(content, list) else [content]
            out.append(" ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts))
        return out

    @property
    def media_info(self) -> str:
        return text_of(self.last.get("media_info"))

    @property
    def prompt_list(self) -> str:
        return text_of(self.last.get("prompt_list"))

    def object_tags(self) -> list[str]:
        return re.findall(r"\[(obj_\d+)\]", text_of(self.last.get("objects")))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - best effort
            pass
