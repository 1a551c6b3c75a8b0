"""fgad-captions draft/check, with fake language-model commands (small Python scripts)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fgad.cli.captions import main
from fgad.methods.finegrained.captions.llm import IMAGE_ENV, build_prompt, parse_llm_json
from fgad.methods.finegrained.captions.schema import COLORS, CaptionError, caption_from_dict, read_caption_file

# What the fake model answers: a valid record for class "widget" that the heuristics could not
# produce (two entities, a foreground noun of its own).
LLM_RECORD: dict[str, Any] = {
    "Level_1": [{"foreground": "red widget", "background": "pure black"}],
    "Level_2": [{"entity": ["widget cap", "widget stem"], "number": ["one", "one"], "location": ["top", "center"],
                 "relation": "The widget cap sits on top of the widget stem."}],
    "Level_3": [{"direction": ["", "vertical"], "color": ["red", "red and white"], "texture": ["glossy", "matte"],
                 "shape": ["round", "cylindrical"],
                 "entity_caption": ["A glossy widget cap crowns the part.", "The widget stem stands upright."]}],
    "caption": "A red widget standing on a pure black background.",
}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A red disc in the top-left third of a black 160 px image (BGR on disk)."""
    img = np.full((160, 160, 3), 12, np.uint8)
    cv2.circle(img, (30, 30), 20, (30, 30, 210), -1)
    path = tmp_path_factory.mktemp("img") / "widget.png"
    assert cv2.imwrite(str(path), img)
    return path


def _script(tmp_path: Path, body: str) -> str:
    """A fake model: a Python script run as `python script.py`, returned as an --llm-cmd string."""
    path = tmp_path / "fake_llm.py"
    path.write_text("import json, os, sys, time\nprompt = sys.stdin.read()\n" + body, encoding="utf-8")
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def _draft(args: list[str]) -> Any:
    return CliRunner().invoke(main, ["draft", *args])


def test_heuristic_draft_to_file_then_check(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "widget.json"
    res = _draft([str(image), "--class-name", "widget", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["draft"] is True and data["class_name"] == "widget"
    record = read_caption_file(out)
    assert record.colors == ("red",) and record.entities[0].location == "top left"
    assert "no description bank has defect phrases for class 'widget'" in res.stderr.lower()
    res = CliRunner().invoke(main, ["check", str(out)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.stdout and "draft" in res.stdout
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic write leaves no temporary file


def test_draft_prints_json_on_stdout_and_reports_bank_phrases(image: Path) -> None:
    res = _draft([str(image), "--class-name", "bottle", "--dataset", "mvtec"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # stdout holds only the record
    assert data["dataset"] == "mvtec" and data["Level_1"][0]["foreground"] == "bottle"
    caption_from_dict(data, "stdout")
    assert "with a chip in the glass" in res.stderr  # the first phrase of the mvtec bank for bottle


def test_llm_record_is_used_and_gets_the_prompt(image: Path, tmp_path: Path) -> None:
    # The fake model checks what it was given (exit 3 otherwise), then answers in prose + a code fence.
    cmd = _script(tmp_path, f"""
assert "Level_1" in prompt and "entity_caption" in prompt, "schema missing from the prompt"
assert {str(image.resolve())!r} in prompt, "image path missing from the prompt"
assert sys.argv[1] == os.environ[{IMAGE_ENV!r}] == {str(image.resolve())!r}, sys.argv
assert "transparent" in prompt and "throughout" in prompt, "vocabularies missing"
assert '"color"' in prompt and "red" in prompt, "heuristic hint missing"
print("Sure! Here is the record:")
print("```json")
print(json.dumps({LLM_RECORD!r}))
print("```")
print("Hope this helps.")
""")
    out = tmp_path / "llm.json"
    res = _draft([str(image), "--class-name", "widget", "--out", str(out), "--llm-cmd", cmd + " {image}", "--strict"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["draft"] is True and data["class_name"] == "widget"
    assert caption_from_dict(data, "llm") == caption_from_dict({"class_name": "widget", **LLM_RECORD}, "expected")
    assert "language model" in res.stderr


@pytest.mark.parametrize(("body", "reason"), [
    ('print("I cannot see images, sorry.")\n', "no JSON object"),
    ("bad = " + repr(LLM_RECORD).replace("'glossy'", "'velvety'") + "\nprint(json.dumps(bad))\n", "velvety"),
    ("sys.stderr.write('model file missing')\nsys.exit(2)\n", "status 2"),
])
def test_unusable_llm_output_falls_back_to_the_heuristic_draft(image: Path, tmp_path: Path, body: str,
                                                               reason: str) -> None:
    out = tmp_path / "fallback.json"
    cmd = _script(tmp_path, body)
    res = _draft([str(image), "--class-name", "widget", "--out", str(out), "--llm-cmd", cmd])
    assert res.exit_code == 0, res.output
    assert "warning" in res.stderr and reason in res.stderr
    record = read_caption_file(out)
    assert record.foreground == "widget" and record.colors == ("red",)  # the heuristic draft
    res = _draft([str(image), "--class-name", "widget", "--out", str(tmp_path / "strict.json"), "--llm-cmd", cmd,
                  "--strict"])
    assert res.exit_code != 0 and reason in res.output
    assert not (tmp_path / "strict.json").exists()


def test_llm_command_missing_or_too_slow(image: Path, tmp_path: Path) -> None:
    res = _draft([str(image), "--class-name", "widget", "--llm-cmd", "/nonexistent/llm-binary", "--strict"])
    assert res.exit_code != 0 and "not found" in res.output
    slow = _script(tmp_path, "time.sleep(30)\n")
    res = _draft([str(image), "--class-name", "widget", "--llm-cmd", slow, "--llm-timeout", "1"])
    assert res.exit_code == 0 and "did not finish within 1 s" in res.stderr
    json.loads(res.stdout)


def test_draft_of_an_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    res = _draft([str(bad), "--class-name", "widget"])
    assert res.exit_code == 1 and "bad.png" in res.output


def test_check_reports_every_bad_file_and_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"class_name": "widget", **LLM_RECORD}))
    wrong = dict(LLM_RECORD, caption="A part on black.")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(wrong))
    res = CliRunner().invoke(main, ["check", str(good), str(bad), str(tmp_path / "missing.json")])
    assert res.exit_code == 1
    assert f"ok   {good}" in res.stdout
    assert f"{bad}: caption" in res.stderr and "missing.json" in res.stderr
    assert "2 of 3 file(s) invalid" in res.stderr


def test_check_passes_on_all_shipped_records() -> None:
    folder = resources.files("fgad.data").joinpath("captions")
    files = [str(f) for f in folder.iterdir() if f.name.endswith(".json") and f.name != "vocabulary.json"]
    assert len(files) == 31
    res = CliRunner().invoke(main, ["check", *files])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("ok   ") == 31 and "draft" not in res.stdout


def test_parse_llm_json_tolerates_wrapping() -> None:
    record = {"Level_1": [{"foreground": "x", "background": "y"}]}
    text = json.dumps(record)
    assert parse_llm_json(text) == record
    assert parse_llm_json(f"Here you go:\n```json\n{text}\n```\nBye") == record
    assert parse_llm_json(f'Note {{"a": 1}} then {text} done') == record  # the record wins over other objects
    with pytest.raises(CaptionError, match="no JSON object"):
        parse_llm_json("[1, 2, 3] and nothing else")


def test_prompt_lists_the_vocabularies_and_defects() -> None:
    prompt = build_prompt("/data/a.png", "widget", "widget", hint={"caption": "hint text", "_heuristics": {}},
                          defect_phrases=("with a crack",))
    assert all(c in prompt for c in COLORS)
    assert "hint text" in prompt and "_heuristics" not in prompt
    assert "a crack" in prompt and "'/data/a.png'" in prompt


def test_caption_tools_work_without_torch(image: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from click.testing import CliRunner\n"
        "from fgad.cli.captions import main\n"
        f"res = CliRunner().invoke(main, ['draft', {str(image)!r}, '--class-name', 'widget'])\n"
        "assert res.exit_code == 0, res.output\n"
        "print(res.stdout)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["class_name"] == "widget"


def test_run_llm_bounds_output_and_time_and_uses_no_shell(tmp_path: Path) -> None:
    from fgad.methods.finegrained.captions.llm import LLMCommandError, run_llm

    flood = _script(tmp_path, "while True:\n    sys.stdout.write('x' * 65536)\n")
    started = time.monotonic()
    with pytest.raises(LLMCommandError, match="printed more than 64 KiB"):
        run_llm(flood, "prompt", tmp_path / "a.png", timeout=60, max_output=65536)
    assert time.monotonic() - started < 30  # stopped at the bound, not at the timeout

    # a wrapper whose child outlives it and keeps the pipe open: the whole group is stopped at the timeout
    marker = tmp_path / "child-still-ran"
    child = f"import time; time.sleep(5); open({str(marker)!r}, 'w')"
    wrapper = _script(tmp_path, f"import subprocess\nsubprocess.Popen([sys.executable, '-c', {child!r}])\n"
                                "time.sleep(30)\n")
    started = time.monotonic()
    with pytest.raises(LLMCommandError, match="did not finish within 1 s"):
        run_llm(wrapper, "prompt", tmp_path / "a.png", timeout=1)
    assert time.monotonic() - started < 15
    time.sleep(6)
    assert not marker.exists()

    # shell syntax in the image path or the command is text, not a command
    echo = _script(tmp_path, "print(json.dumps(sys.argv[1:]))\n")
    odd = tmp_path / "x; touch pwned.png"
    assert json.loads(run_llm(echo + " {image} '$(touch pwned2)'", "p", odd)) == [str(odd), "$(touch pwned2)"]
    assert not (tmp_path / "pwned.png").exists() and not Path("pwned2").exists()
    with pytest.raises(ValueError, match="positive"):
        run_llm(echo, "p", odd, timeout=0)
