"""``dopd generate``: streamed text, --json output, and clear errors (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dopd.cli import main as cli_main
from dopd.engine.engine_options import EngineOptions
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import SamplingParams, build_tiny

COMMAND = "dopd.cli.generate_cmd"


@pytest.fixture(autouse=True)
def _with_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    if COMMAND not in cli_main.COMMANDS:
        monkeypatch.setattr(cli_main, "COMMANDS", (*cli_main.COMMANDS, COMMAND))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main.main(["generate", "--threads", "1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_matches_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--prompt", "Hello there", "--max-tokens", "9",
                       "--temperature", "0.7", "--seed", "4", "--json")
    assert code == 0
    data = json.loads(out)
    engine = LLMEngine(build_tiny(), EngineOptions(num_blocks=16, seed=4))
    ref = engine.generate(["Hello there"], SamplingParams(max_tokens=9, temperature=0.7, seed=4))
    assert data["token_ids"] == list(ref[0].token_ids)
    assert data["text"] == ref[0].text
    assert data["completion_tokens"] == len(data["token_ids"]) <= 9
    assert data["prompt_tokens"] == 12 and data["finish_reason"] in ("length", "stop")
    assert data["model"] == "dopd-tiny" and data["elapsed_s"] >= data["ttft_s"] >= 0


def test_streamed_text_equals_json_text(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--prompt", "stream", "--max-tokens", "12", "--temperature", "0", "--ignore-eos")
    code, out, err = run(capsys, *args)
    assert code == 0 and "12 tokens, finish length" in err
    _, js, _ = run(capsys, *args, "--json")
    data = json.loads(js)
    assert out == data["text"] + "\n" and len(data["token_ids"]) == 12


def test_chat_template_and_stop_string(capsys: pytest.CaptureFixture[str]) -> None:
    _, plain, _ = run(capsys, "--prompt", "hi", "--chat", "--max-tokens", "10",
                      "--temperature", "0", "--ignore-eos", "--json")
    data = json.loads(plain)
    assert data["prompt_tokens"] == len(build_tiny().tokenizer.encode_chat(
        [{"role": "user", "content": "hi"}]))
    stop = data["text"][3:5]
    _, cut, _ = run(capsys, "--prompt", "hi", "--chat", "--max-tokens", "10",
                    "--temperature", "0", "--ignore-eos", "--stop", stop, "--json")
    assert json.loads(cut)["text"] == data["text"][: data["text"].index(stop)]
    assert json.loads(cut)["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prompt", "x" * 50, "--max-model-len", "40"), "longer than the context window"),
        (("--prompt", "x", "--max-tokens", "0"), "max_tokens must be"),
        (("--prompt", "x", "--temperature", "-1"), "temperature must be"),
        (("--prompt", "x", "--model", "no-such-model"), "unknown model"),
    ],
)
def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                           message: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_folder_that_is_not_a_checkpoint_exits_2(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = run(capsys, "--prompt", "x", "--model", str(tmp_path))
    assert code == 2 and "not a model checkpoint" in err
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    code, _, err = run(capsys, "--prompt", "x", "--model", str(tmp_path))
    assert code == 2 and "unsupported architecture BertModel" in err
