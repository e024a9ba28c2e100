"""Security: what a visitor sends can read no server file, run no code and reach no shell; uploads are limited;
checkpoints are loaded as data (safetensors only), never as code.

* The running app (in-process on 127.0.0.1, its real launch settings): ``/ask`` takes uploaded files only, the
  file route serves only uploads, Gradio's cache and the examples, uploads over the limit are refused, and hostile
  file names come back escaped.
* The source (every module of the package and ``app.py``, parsed): no eval/exec, no shell, no pickle or
  ``torch.load`` without ``weights_only=True``, no ``trust_remote_code``.
* Checkpoints holding pickles or remote code are refused or ignored without running anything.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import GOLDEN, REPO
from tests.robustness.app_client import UIVisitor, raw_call, raw_upload, running_app
from tests.robustness.corpus import plain_media
from unipixel import limits

TINY = GOLDEN / "checkpoints" / "tiny-tied"
SOURCES = [REPO / "app.py", *sorted((REPO / "unipixel").rglob("*.py"))]
requires_tiny = pytest.mark.skipif(not (TINY / "config.json").exists(), reason=f"golden tiny checkpoint not found at {TINY}")
SETTINGS = json.dumps({"frames": 4, "dense": False, "max_new_tokens": 16})


# ---------------------------------------------------------------------------------------------- the source
def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _calls() -> list[tuple[Path, ast.Call, str]]:
    out = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                out.append((path, node, _dotted(node.func)))
    return out


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_sources_are_found() -> None:
    assert len(SOURCES) > 20 and (REPO / "unipixel" / "session.py") in SOURCES
    names = {name for _, _, name in _calls()}
    assert {"subprocess.Popen", "json.loads", "safe_open"} <= names  # the scan sees real calls


def test_no_eval_exec_or_shell() -> None:
    banned = {"eval", "exec", "compile", "__import__", "os.system", "os.popen", "os.execv", "os.execl", "os.spawnl",
              "pty.spawn", "commands.getoutput", "subprocess.getoutput", "subprocess.getstatusoutput"}
    bad = []
    for path, call, name in _calls():
        if name in banned:
            bad.append(f"{_where(path, call)} {name}()")
        if name.startswith("subprocess.") or name in ("Popen", "run", "check_output", "check_call"):
            shell = _keyword(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                bad.append(f"{_where(path, call)} {name}(shell=...)")
            if name.startswith("subprocess.") and call.args and isinstance(call.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                bad.append(f"{_where(path, call)} {name}() with a command string")
    assert bad == []


def test_no_pickle_and_torch_load_is_weights_only() -> None:
    bad = []
    for path, call, name in _calls():
        if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "dill.loads", "joblib.load",
                    "marshal.load", "marshal.loads", "torch.jit.load", "yaml.unsafe_load", "shelve.open"):
            bad.append(f"{_where(path, call)} {name}()")
        if name == "torch.load":
            value = _keyword(call, "weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                bad.append(f"{_where(path, call)} torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(call, "Loader")
            if loader is None or "Safe" not in _dotted(loader):
                bad.append(f"{_where(path, call)} {name} without a safe loader")
        if name.endswith("np.load") or name == "numpy.load":
            value = _keyword(call, "allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                bad.append(f"{_where(path, call)} np.load(allow_pickle=...)")
    assert bad == []


def test_no_trust_remote_code_anywhere() -> None:
    found = [str(p.relative_to(REPO)) for p in SOURCES if "trust_remote_code" in p.read_text()]
    assert found == []


def test_no_user_text_reaches_a_shell_or_eval_through_copy_as_code() -> None:
    """The snippet the page offers keeps every visitor string a literal (the CLI line is a shell-quoted comment)."""
    from unipixel import ui

    hostile = 'x"); __import__("os").system("touch /tmp/x"); print("\'$(id)`id`'
    code = ui.copy_as_code("http://127.0.0.1:7860/", hostile + ".png", hostile, [{"point": [1, 2]}],
                           {"frames": 8, "dense": False})
    tree = ast.parse(code)
    called = {_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert called == {"Client", "client.predict", "handle_file", "print"}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert hostile in strings and hostile + ".png" in strings
    cli_line = next(line for line in code.splitlines() if "python -m unipixel infer" in line)
    assert cli_line.startswith("#") and "'" in cli_line  # quoted with shlex, and only a comment


# ---------------------------------------------------------------------------------------------- checkpoints
def _evil_pickle(sentinel: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    return pickle.dumps({"weight": Evil()})


@requires_tiny
def test_a_pickle_checkpoint_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    """Beyond tests/test_loading.py (a lone pytorch_model.bin): an index naming a pickle shard, and a pickle
    named model.safetensors. Neither is unpickled (the payload would create the sentinel file)."""
    from unipixel.loading import load_model

    sentinel = tmp_path / "unpickled"
    sharded = tmp_path / "sharded"
    shutil.copytree(TINY, sharded)
    (sharded / "model.safetensors").unlink()
    (sharded / "pytorch_model-00001-of-00001.bin").write_bytes(_evil_pickle(sentinel))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "pytorch_model-00001-of-00001.bin"}}))
    disguised = tmp_path / "disguised"
    shutil.copytree(TINY, disguised)
    (disguised / "model.safetensors").write_bytes(_evil_pickle(sentinel))
    torch.save({"w": torch.zeros(1)}, disguised / "pytorch_model.bin")
    for checkpoint in (sharded, disguised):
        with pytest.raises(Exception) as refused:
            load_model(checkpoint)
        assert "\n" not in str(refused.value).strip()
        assert not sentinel.exists(), f"{checkpoint.name}: the pickle was executed"


@requires_tiny
def test_remote_code_in_a_checkpoint_is_never_imported(tmp_path: Path) -> None:
    """``auto_map`` entries pointing at Python files in the checkpoint are ignored: the model loads, nothing runs."""
    from unipixel.loading import load_model

    sentinel = tmp_path / "imported"
    ckpt = tmp_path / "remote"
    shutil.copytree(TINY, ckpt)
    (ckpt / "evil.py").write_text(f"from pathlib import Path\nPath({str(sentinel)!r}).touch()\n"
                                  "class Evil:\n    pass\n")
    for name, mapping in [("config.json", {"AutoConfig": "evil.Evil", "AutoModel": "evil.Evil"}),
                          ("tokenizer_config.json", {"AutoTokenizer": ["evil.Evil", None]}),
                          ("processor_config.json", {"AutoProcessor": "evil.Evil", "AutoImageProcessor": "evil.Evil"})]:
        data = json.loads((ckpt / name).read_text()) if (ckpt / name).exists() else {}
        (ckpt / name).write_text(json.dumps({**data, "auto_map": mapping}))
    model, processor = load_model(ckpt)
    assert model is not None and processor.tokenizer is not None
    assert not sentinel.exists()


@requires_tiny
def test_a_checkpoint_yaml_cannot_name_code_to_run(tmp_path: Path) -> None:
    """sam2_config.yaml is data: a ``_target_`` outside SAM 2's modules must be refused, not called."""
    from unipixel.loading import load_model

    sentinel = tmp_path / "called"
    ckpt = tmp_path / "yaml"
    shutil.copytree(TINY, ckpt)
    lines, out, replaced = (ckpt / "sam2_config.yaml").read_text().splitlines(), [], False
    skipping = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skipping is not None and indent >= skipping and line.strip():
            continue
        skipping = None
        if not replaced and line.strip() == "_target_: sam2.modeling.position_encoding.PositionEmbeddingSine":
            out += [" " * indent + "_target_: pathlib.Path.touch", " " * indent + f"self: {sentinel}"]
            replaced, skipping = True, indent
            continue
        out.append(line)
    assert replaced
    (ckpt / "sam2_config.yaml").write_text("\n".join(out) + "\n")
    with pytest.raises(ValueError, match=r"names 'pathlib.Path.touch'; only sam2.modeling"):
        load_model(ckpt)
    assert not sentinel.exists(), "loading the checkpoint called pathlib.Path.touch from its YAML"


# ---------------------------------------------------------------------------------------------- the running app
@pytest.fixture(scope="module")
def engine():
    if not (TINY / "config.json").exists():
        pytest.skip(f"golden tiny checkpoint not found at {TINY}")
    from unipixel.engine import load_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_engine(str(TINY))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def live(engine):
    with running_app(engine, expose_ui=False) as app:  # exactly as served: only /ask is callable
        yield app


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return plain_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """Every media path the app opens (spy on ``app._open``)."""
    import app

    paths, real = [], app._open
    monkeypatch.setattr(app, "_open", lambda v, path, *a, **k: (paths.append(Path(path)), real(v, path, *a, **k))[1])
    return paths


def _upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def test_only_ask_is_documented(live) -> None:
    from gradio_client import Client

    api = Client(live.url, verbose=False).view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/ask"] and not api["unnamed_endpoints"]


SECRETS = {"/etc/passwd": "root:", str(REPO / "app.py"): "def api_ask", str(REPO / "README.md"): "UniPixel"}
SERVER_FILES = ["/etc/passwd", "../../app.py", "app.py", str(REPO / "app.py"), "/proc/self/environ"]


def _not_uploaded(live) -> list:
    """File references a client could send that are not its uploads."""
    return [*SERVER_FILES,
            *({"path": p, "meta": {"_type": "gradio.FileData"}} for p in SERVER_FILES),
            {"path": str(REPO / "examples" / "shapes_grey.png"), "meta": {"_type": "gradio.FileData"}},
            {"path": f"{_upload_folder()}/../../etc/passwd", "meta": {"_type": "gradio.FileData"}},
            {"path": f"{live.url}gradio_api/file=/etc/passwd", "meta": {"_type": "gradio.FileData"}},
            {"path": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}},
            {"path": "x", "url": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}}]


def _refused(live, api_name: str, data: list, session_hash: str | None = None) -> bool:
    try:
        event, payload = raw_call(live.url, api_name, data, session_hash)
    except httpx.HTTPStatusError as refused:
        event, payload = "http", refused.response.text
    return event in ("error", "http") and not any(marker in json.dumps(payload) for marker in SECRETS.values())


def test_the_page_events_take_uploaded_files_only(live, opened) -> None:
    """The UI's events are private (undocumented) but, like every Gradio event, reachable over HTTP: the upload
    event refuses server files just as /ask does."""
    for attempt in _not_uploaded(live):
        assert _refused(live, "/on_upload", [attempt, 8], session_hash="visitor-x"), attempt
    assert opened == []


def test_ask_takes_uploaded_files_only(live, media, opened) -> None:
    """A path, a FileData naming a server file or a local URL is refused; an upload is answered."""
    for attempt in _not_uploaded(live):
        assert _refused(live, "/ask", [attempt, "What is this?", "[]", SETTINGS]), attempt
    assert opened == []
    upload = _upload_folder()
    assert all(p.resolve().is_relative_to(upload) for p in opened), opened
    event, data = raw_call(live.url, "/ask", [raw_upload(live.url, media["image"]), "What is this?", "[]", SETTINGS])
    assert event == "complete" and data[2]["media"]["width"] == 160
    assert len(opened) == 1 and opened[0].resolve().is_relative_to(upload)


def test_file_route_serves_uploads_and_examples_only(live, media) -> None:
    import app

    def fetch(path: str) -> httpx.Response:
        return httpx.get(f"{live.url}gradio_api/file={path}", timeout=30)

    event, data = raw_call(live.url, "/ask", [raw_upload(live.url, media["image"]), "What is this?", "[]", SETTINGS])
    assert event == "complete"
    api_results = [p for p in app.API_DIR.rglob("*") if p.is_file()]
    assert api_results, "the app keeps its own result files outside Gradio's cache"
    refused = ["/etc/passwd", "app.py", "./app.py", str(REPO / "app.py"), "examples/../app.py",
               f"{REPO / 'examples'}/../app.py", "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fapp.py", "/proc/self/environ",
               str(REPO / "unipixel" / "limits.py"), str(api_results[0]), str(app.TMP_ROOT), str(_upload_folder()),
               str(REPO / ".git" / "config"), str(TINY / "config.json")]
    for path in refused:
        response = fetch(path)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert "root:" not in response.text and "def " not in response.text, path
    assert fetch(str(REPO / "examples" / "shapes_grey.png")).status_code == 200  # allowed_paths: the examples
    overlay = data[1]
    assert httpx.get(overlay["url"], timeout=30).status_code == 200  # an output, from Gradio's cache
    assert Path(overlay["path"]).resolve().is_relative_to(_upload_folder())


def test_examples_folder_holds_only_regular_files() -> None:
    """The folder served besides Gradio's own is plain files: no link can lead out of it."""
    entries = list((REPO / "examples").rglob("*"))
    assert entries and not [p for p in entries if p.is_symlink()]
    assert all(p.resolve().is_relative_to((REPO / "examples").resolve()) for p in entries)


def test_uploads_over_the_limit_are_refused(engine, media, monkeypatch, tmp_path) -> None:
    """``serve`` hands ``limits.MAX_UPLOAD_BYTES`` to Gradio, which refuses bigger uploads (1 MiB here)."""
    from gradio_client import Client, handle_file

    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", 2**20)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(2**20 + 4096))
    with running_app(engine, expose_ui=False) as small:
        with open(big, "rb") as handle:
            response = httpx.post(f"{small.url}gradio_api/upload", files={"files": ("big.mp4", handle)}, timeout=60)
        assert response.status_code == 413
        assert not any(p.name == "big.mp4" for p in _upload_folder().rglob("big.mp4"))
        client = Client(small.url, verbose=False)
        with pytest.raises(Exception, match="(?i)file.*(large|size)|413"):
            client.predict(handle_file(str(big)), "What is this?", "[]", SETTINGS, api_name="/ask")
        text, _, objects = client.predict(handle_file(str(media["image"])), "What is this?", "[]", SETTINGS, api_name="/ask")
        assert objects["media"]["width"] == 160


def test_main_serves_locally_with_the_limits(monkeypatch) -> None:
    """``python app.py``: 127.0.0.1 unless told otherwise, upload limit, queue bound, only examples/ allowed."""
    import gradio as gr

    import app

    launched = {}
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.setattr(app, "load", lambda model: monkeypatch.setattr(app, "ENGINE", _FakeEngine()))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw, queue=self._queue.max_size))
    monkeypatch.setattr(app.signal, "signal", lambda *a: None)
    app.main(["--model", "anything", "--port", "7999"])
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999 and not launched["share"]
    assert launched["max_file_size"] == limits.MAX_UPLOAD_BYTES
    assert launched["allowed_paths"] == [str(REPO / "examples")]
    assert launched["queue"] == limits.QUEUE_MAX_SIZE
    assert "blocked_paths" not in launched or not launched["blocked_paths"]


class _FakeEngine:
    name, notice, is_bundled = "bundled", "", True


def test_hostile_file_names_come_back_escaped(engine, tmp_path, media) -> None:
    """A file named like markup: the page's status and chat show it as text (Gradio also sanitises the name)."""
    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"
    shutil.copyfile(media["image"], hostile)
    with running_app(engine) as app_with_ui:
        page = UIVisitor(app_with_ui)
        out = page.upload(hostile)
        values = json.dumps([v for v in out.values() if isinstance(v, str)])
        assert "<img src=x" not in values and "onerror=alert(1)>" not in page.last["status"]
        assert page.status.startswith("Loaded ") and "onerror" in page.status  # shown, as text
        page.close()


def test_temporary_files_stay_in_the_temp_folder(live, media) -> None:
    import app

    assert Path(app.TMP_ROOT).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    raw_call(live.url, "/ask", [raw_upload(live.url, media["image"]), "What is this?", "[]", SETTINGS])
    assert all(p.resolve().is_relative_to(Path(app.TMP_ROOT).resolve()) for p in app.API_DIR.rglob("*"))
