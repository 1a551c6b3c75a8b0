"""Ask a local language-model command to write an MFSC caption record (``fgad-captions --llm-cmd``).

The command is any program that reads a prompt on stdin and prints JSON on stdout, e.g. a
wrapper around a local multimodal model. It is run without a shell (``shlex.split``), with a
timeout and at most :data:`MAX_OUTPUT_BYTES` of output (past either it is killed, with its
process group); an argument containing ``{image}`` gets the image path substituted, and the path
is also in the environment as ``FGAD_CAPTION_IMAGE`` and in the prompt. The prompt states the
schema and the vocabularies and gives the heuristic draft as a hint. The reply may wrap the
JSON in prose or a code fence; the first JSON object that looks like a record is taken and
validated with :func:`fgad.methods.finegrained.captions.schema.caption_from_dict`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgad.methods.finegrained.captions.schema import (
    COLORS,
    LOCATIONS,
    MAX_ENTITIES,
    NUMBERS,
    SHAPES,
    TEXTURES,
    CaptionError,
    caption_from_dict,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "IMAGE_ENV",
    "IMAGE_PLACEHOLDER",
    "LLMCommandError",
    "MAX_OUTPUT_BYTES",
    "build_prompt",
    "llm_caption",
    "parse_llm_json",
    "run_llm",
]

DEFAULT_TIMEOUT_S = 300.0
#: Most stdout bytes taken from the command (a record is a few KiB); more and it is stopped.
MAX_OUTPUT_BYTES = 1 << 20
IMAGE_PLACEHOLDER = "{image}"
IMAGE_ENV = "FGAD_CAPTION_IMAGE"
LLM_SOURCE = "language-model output"
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)

_LAYOUT = """{
  "Level_1": [{"foreground": "<product noun phrase>", "background": "<background, e.g. pure black>"}],
  "Level_2": [{"entity": ["<part 1>", "..."], "number": ["<count word>", "..."],
               "location": ["<location>", "..."], "relation": "<one sentence on how the parts are arranged>"}],
  "Level_3": [{"direction": ["<direction or empty>", "..."], "color": ["<colour(s)>", "..."],
               "texture": ["<texture(s)>", "..."], "shape": ["<shape(s)>", "..."],
               "entity_caption": ["<one sentence per part>", "..."]}],
  "caption": "<one sentence describing the whole image>"
}"""


class LLMCommandError(RuntimeError):
    """The language-model command could not be run, failed, or timed out."""


def build_prompt(
    image_path: str | Path,
    class_name: str,
    foreground: str,
    hint: dict[str, Any] | None = None,
    defect_phrases: Sequence[str] = (),
) -> str:
    """The instruction text sent to the command on stdin."""
    lines = [
        "You describe product photos for an industrial visual inspection system.",
        f"The image file {str(image_path)!r} shows a NORMAL, defect-free {foreground} "
        f"(class id {class_name!r}). Look at it and describe what a normal {foreground} looks like.",
        "",
        "Answer with ONE JSON object and nothing else, in exactly this layout:",
        _LAYOUT,
        "",
        "Rules:",
        f"- 1 to {MAX_ENTITIES} entities: the visible parts of the product (or of its surface). Every list in "
        "Level_2 and Level_3 has exactly one value per entity, in the order of \"entity\".",
        f"- number: one of {', '.join(NUMBERS)}.",
        f"- location: one of {', '.join(LOCATIONS)}.",
        f"- color: one or more of {', '.join(COLORS)}, joined with \" and \" (e.g. \"blue and white\").",
        f"- texture: one or more of {', '.join(TEXTURES)}, joined with \" and \".",
        f"- shape: one or more of {', '.join(SHAPES)}, joined with \" and \".",
        "- direction: a short word such as \"vertical\", \"horizontal\" or \"diagonal\", or \"\" if none.",
        "- each entity_caption is one sentence that contains its entity's name as written in \"entity\".",
        "- relation contains at least one entity name exactly as written in \"entity\".",
        f"- caption contains the foreground text exactly (e.g. \"{foreground}\").",
        "- Use only the words listed above for number, location, color, texture and shape.",
    ]
    if defect_phrases:
        lines.append("- Describe only the normal look; do not mention defects such as: "
                     + "; ".join(p.removeprefix("with ") for p in defect_phrases) + ".")
    if hint:
        shown = {k: v for k, v in hint.items() if not k.startswith("_") and k not in ("draft", "dataset")}
        lines += [
            "",
            "A rough draft measured from the image by simple heuristics (it treats the whole product as one "
            "part; correct and refine it from what the image shows):",
            json.dumps(shown, ensure_ascii=False),
        ]
    return "\n".join(lines) + "\n"


def run_llm(cmd: str, prompt: str, image_path: str | Path, timeout: float = DEFAULT_TIMEOUT_S,
            max_output: int = MAX_OUTPUT_BYTES) -> str:
    """Run ``cmd`` (no shell) with ``prompt`` on stdin and return its stdout.

    The command's text is split with ``shlex`` and run as an argument list, never through a shell, so the
    image path and the prompt cannot inject commands. It gets ``timeout`` seconds in all and at most
    ``max_output`` bytes of stdout (stderr: the same bound, the rest discarded); past either it is killed, with
    its process group where the platform has them (a wrapper's children too).

    Raises:
        ValueError: ``cmd`` is empty or not parseable, or ``timeout``/``max_output`` not positive.
        LLMCommandError: the program is missing, exits non-zero, exceeds ``timeout`` seconds or prints more
            than ``max_output`` bytes.
    """
    if not timeout > 0:
        raise ValueError(f"--llm-timeout must be a positive number of seconds, got {timeout!r}")
    if max_output < 1:
        raise ValueError(f"max_output must be a positive number of bytes, got {max_output!r}")
    try:
        args = shlex.split(cmd)
    except ValueError as exc:
        raise ValueError(f"--llm-cmd {cmd!r} cannot be parsed ({exc}); check its quotes.") from exc
    if not args:
        raise ValueError("--llm-cmd is empty; pass a command that reads a prompt on stdin and prints JSON.")
    args = [a.replace(IMAGE_PLACEHOLDER, str(image_path)) for a in args]
    env = {**os.environ, IMAGE_ENV: str(image_path)}
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=os.name == "posix")
    except FileNotFoundError as exc:
        raise LLMCommandError(f"--llm-cmd: program {args[0]!r} not found; give its full path.") from exc
    except PermissionError as exc:
        raise LLMCommandError(f"--llm-cmd: program {args[0]!r} is not executable ({exc}).") from exc
    except OSError as exc:
        raise LLMCommandError(f"--llm-cmd: program {args[0]!r} cannot be started ({exc}).") from exc
    try:
        status, out, err, overflow = _bounded_run(proc, prompt.encode("utf-8"), timeout, max_output)
    except BaseException:  # Ctrl-C included: never leave the command running
        _kill(proc)
        raise
    if overflow:
        raise LLMCommandError(
            f"--llm-cmd {args[0]!r} printed more than {max_output // 1024} KiB on stdout; a caption record is a few "
            "KiB: make the command print only the JSON record."
        )
    if status is None:
        raise LLMCommandError(
            f"--llm-cmd {args[0]!r} did not finish within {timeout:g} s; raise --llm-timeout or use a smaller model."
        )
    if status != 0:
        tail = err.decode("utf-8", errors="replace").strip()[-500:]
        raise LLMCommandError(f"--llm-cmd {args[0]!r} exited with status {status}" + (f": {tail}" if tail else "."))
    return out.decode("utf-8", errors="replace")


def _bounded_run(proc: subprocess.Popen[bytes], data: bytes, timeout: float,
                 limit: int) -> tuple[int | None, bytes, bytes, bool]:
    """(exit status, or None when stopped, stdout, stderr, stdout overflowed): ``data`` on stdin, each stream
    read in a thread and kept up to ``limit`` bytes; a timeout or a stdout overflow stops the command."""
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    assert stdin is not None and stdout is not None and stderr is not None
    overflow = threading.Event()
    kept: dict[str, bytes] = {}

    def feed() -> None:
        try:
            stdin.write(data)
        except OSError:
            pass  # the command did not read all of its stdin: its answer (or status) tells
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def drain(name: str, stream: Any, stop_on_overflow: bool) -> None:
        chunks: list[bytes] = []
        size = 0
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed under us after a kill
            while block := stream.read1(65536):
                if size < limit:
                    chunks.append(block[: limit - size])
                size += len(block)
                if size > limit and stop_on_overflow:
                    overflow.set()
                    break
        kept[name] = b"".join(chunks)

    readers = [threading.Thread(target=drain, args=("out", stdout, True), daemon=True),
               threading.Thread(target=drain, args=("err", stderr, False), daemon=True)]
    for t in [threading.Thread(target=feed, daemon=True), *readers]:
        t.start()
    deadline = time.monotonic() + timeout
    status: int | None = None
    while not overflow.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            status = proc.wait(timeout=min(0.05, remaining))
            break
        except subprocess.TimeoutExpired:
            continue
    if status is None:
        _kill(proc)
    for attempt in range(2):  # the pipes close when every process holding them is gone
        for t in readers:
            t.join(timeout=5.0)
        if not any(t.is_alive() for t in readers):
            break
        if attempt == 0:
            _kill(proc)  # it exited, but something it started still holds stdout/stderr open
    if not any(t.is_alive() for t in readers):
        stdout.close()
        stderr.close()
    return status, kept.get("out", b""), kept.get("err", b""), overflow.is_set()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Stop the command and, on POSIX, every process left in its session (it was started in a new one)."""
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _objects(text: str) -> list[Any]:
    """JSON values found in ``text``: the whole text, fenced blocks, then objects starting at each '{'."""
    found: list[Any] = []
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for candidate in candidates:
        try:
            found.append(json.loads(candidate))
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        found.append(value)
        start = text.find("{", end)
    return found


def parse_llm_json(text: str) -> dict[str, Any]:
    """The record object in a command's output, tolerating prose and code fences around it.

    Raises:
        CaptionError: no JSON object is in the text.
    """
    objects = [o for o in _objects(text) if isinstance(o, dict)]
    if not objects:
        preview = " ".join(text.split())[:200]
        raise CaptionError(
            f"{LLM_SOURCE}: no JSON object found (output starts {preview!r}); the command must print the "
            "record as JSON on stdout."
        )
    for obj in objects:
        if "Level_1" in obj:
            return obj
    return objects[0]


def llm_caption(
    cmd: str,
    image_path: str | Path,
    class_name: str,
    foreground: str,
    hint: dict[str, Any] | None = None,
    defect_phrases: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Ask the command for a record and return it validated, marked as a draft.

    Raises:
        LLMCommandError: the command failed (see :func:`run_llm`).
        CaptionError: its output holds no valid record; the message names the field at fault.
    """
    prompt = build_prompt(image_path, class_name, foreground, hint, defect_phrases)
    data = parse_llm_json(run_llm(cmd, prompt, image_path, timeout))
    data = {k: v for k, v in data.items() if k not in ("class_name", "dataset", "draft")}
    record: dict[str, Any] = {
        "class_name": class_name,
        **({"dataset": dataset} if dataset else {}),
        "draft": True,
        "_note": "Written by a language model (fgad-captions --llm-cmd); review every field, then delete \"draft\".",
        **data,
    }
    caption_from_dict(record, LLM_SOURCE)
    return record
