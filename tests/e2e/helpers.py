"""Page helpers shared by the browser tests (selectors are the app's elem_ids)."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageColor

from .conftest import EXAMPLES, example_index

TIMEOUT_MS = 180_000  # one model turn on CPU, generous for the bundled model on a busy machine
UI_TIMEOUT_MS = 90_000  # a UI round trip (no model) on a busy 2-core machine


def load_example(pg, example_id: str) -> dict:
    ex = EXAMPLES[example_index(example_id)]
    pg.locator("#examples img").nth(example_index(example_id)).click()
    pg.wait_for_function("q => document.querySelector('#question textarea').value === q", arg=ex["question"], timeout=UI_TIMEOUT_MS)
    pg.wait_for_selector("#sketch img", timeout=UI_TIMEOUT_MS)
    return ex


def upload(pg, path) -> None:
    pg.locator("#upload input[type=file]").set_input_files(str(path))


def bot_messages(pg):
    return pg.locator("#chat .message-row.bot-row")


def user_messages(pg):
    return pg.locator("#chat .message-row.user-row")


def ask(pg, question: str | None = None, expect_bot: int | None = None) -> str:
    """Type (optionally) and send; wait for the ``expect_bot``-th assistant message; return its text."""
    n = bot_messages(pg).count() + 1 if expect_bot is None else expect_bot
    if question is not None:
        pg.locator("#question textarea").fill(question)
    pg.locator("#send").click()
    pg.wait_for_function("n => document.querySelectorAll('#chat .message-row.bot-row').length >= n", arg=n, timeout=TIMEOUT_MS)
    pg.wait_for_function("() => !document.querySelector('#send').disabled", timeout=TIMEOUT_MS)
    return bot_messages(pg).nth(n - 1).inner_text()


def rgb(css: str) -> tuple[int, int, int]:
    """``rgb(1, 2, 3)`` or ``#010203`` -> (1, 2, 3)."""
    if css.startswith("#"):
        return ImageColor.getrgb(css)[:3]
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def chip_rgb(pg, tag: str, scope: str = "#chat") -> tuple[int, int, int]:
    return rgb(pg.locator(f"{scope} .obj-chip.{tag}").first.evaluate("c => getComputedStyle(c).backgroundColor"))


def image_of(pg, selector: str) -> np.ndarray:
    """The RGB pixels of the image shown in ``selector`` (fetched from its src)."""
    src = pg.locator(f"{selector} img").first.get_attribute("src")
    body = pg.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def wait_new_image(pg, selector: str, old_src: str | None) -> str:
    pg.wait_for_function("([s, old]) => { const i = document.querySelector(s + ' img'); return i && i.src && i.src !== old; }",
                         arg=[selector, old_src or ""], timeout=TIMEOUT_MS)
    return pg.locator(f"{selector} img").first.get_attribute("src")


def client_point(pg, selector: str, x: float, y: float) -> tuple[float, float]:
    """Client coordinates of image pixel (x, y) of the image in ``selector`` (object-fit aware, like the app)."""
    pg.locator(f"{selector} img").first.scroll_into_view_if_needed()
    b = pg.locator(f"{selector} img").first.evaluate("""img => {
        const r = img.getBoundingClientRect(), nw = img.naturalWidth, nh = img.naturalHeight;
        const fit = getComputedStyle(img).objectFit;
        let sx = r.width / nw, sy = r.height / nh;
        if (fit === 'contain' || fit === 'scale-down') { let s = Math.min(sx, sy); if (fit === 'scale-down') s = Math.min(1, s); sx = sy = s; }
        else if (fit === 'none') { sx = sy = 1; }
        return {left: r.left + (r.width - nw * sx) / 2, top: r.top + (r.height - nh * sy) / 2, sx, sy};
    }""")
    return b["left"] + x * b["sx"], b["top"] + y * b["sy"]


def drag(pg, selector: str, p0: tuple[float, float], p1: tuple[float, float], steps: int = 10) -> None:
    (x0, y0), (x1, y1) = client_point(pg, selector, *p0), client_point(pg, selector, *p1)
    pg.mouse.move(x0, y0)
    pg.mouse.down()
    pg.mouse.move(x1, y1, steps=steps)
    pg.mouse.up()


def click_at(pg, selector: str, x: float, y: float) -> None:
    pg.mouse.click(*client_point(pg, selector, x, y))


def colour_mask(img: np.ndarray, colour, tol: int = 0) -> np.ndarray:
    return (np.abs(img.astype(int) - np.array(colour[:3])) <= tol).all(-1)


def toast_text(pg) -> str:
    pg.wait_for_selector(".toast-body", timeout=UI_TIMEOUT_MS)
    return " ".join(pg.locator(".toast-body").all_inner_texts())
