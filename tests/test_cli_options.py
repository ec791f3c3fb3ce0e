"""The `ternlm` command's option vocabulary and the messages a first-time user meets, in
process (fast): one --threads form, one max-new-tokens default and its --max-tokens alias,
compare parsed by the main parser, --plot checked before measuring, warnings as one line,
Hub ids named as such, line editing in chat."""
import io
import sys
import types

import pytest

from ternlm import cli
from ternlm.hints import available_cores


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_one_max_new_tokens_default_and_the_max_tokens_alias():
    import inspect

    from ternlm.model import Model
    api_default = inspect.signature(Model.generate).parameters["max_new_tokens"].default
    assert cli.MAX_NEW_TOKENS == api_default == 128
    for cmd in ("generate", "chat"):
        assert parse(cmd).max_new_tokens == 128
        assert parse(cmd, "--max-tokens", "7").max_new_tokens == 7
        assert parse(cmd, "--max-new-tokens", "9").max_new_tokens == 9


def test_threads_take_the_same_form_in_every_command():
    assert parse("bench", "--threads", "1,2").threads == [1, 2]
    assert parse("bench", "--threads", "2").threads == [2]
    for cmd in ("generate", "chat", "compare"):
        assert parse(cmd, "--threads", "2").threads == [2]
        assert parse(cmd).threads is None


def test_compare_is_parsed_by_the_main_parser():
    args = parse("compare", "--model", "m.gguf", "--formats", "int4,ternary", "--threads", "2", "--json", "o.json",
                 "--plot", "o.png", "--window", "64", "-q")
    from ternlm.compare.cli import cmd_compare
    assert args.func is cmd_compare and args.command == "compare"
    assert (args.model, args.formats, args.threads, args.json, args.plot, args.window, args.quiet) == \
        ("m.gguf", "int4,ternary", [2], "o.json", "o.png", 64, True)
    with pytest.raises(SystemExit):
        parse("compare", "--window", "0")                  # the shared positive-int check


def test_compare_refuses_several_thread_counts_naming_bench(tmp_path, capsys):
    assert cli.main(["compare", "--model", str(tmp_path), "--threads", "1,2"]) == 2
    err = capsys.readouterr().err
    assert "runs at one thread count" in err and "ternlm bench --threads 1,2" in err


def test_plot_without_matplotlib_fails_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)           # import matplotlib -> ImportError
    monkeypatch.setattr(sys.modules["ternlm.compare"], "compare",
                        lambda *a, **k: pytest.fail("nothing may be measured when --plot cannot be drawn"))
    assert cli.main(["compare", "--model", str(tmp_path), "--plot", str(tmp_path / "x.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_threads_above_the_core_count_warn_in_one_line(llama_folders, capsys):
    too_many = available_cores() + 1
    code = cli.main(["compare", "--model", llama_folders["gqa_f32"], "--threads", str(too_many),
                     "--formats", "bf16", "--bandwidth", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"ternlm: warning: threads={too_many} is more than the {available_cores()} cores" in err
    assert "bandwidth must be > 0" in err and "Warning" not in err        # no file:line: UserWarning noise


def test_a_hub_id_is_named_as_such(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Hugging Face Hub id" in err
    assert "--local-dir ./SmolLM2-135M-Instruct" in err and "--model ./SmolLM2-135M-Instruct" in err
    assert cli.main(["generate", "--model", "./missing/model", "--prompt", "x"]) == 2
    assert "Hub" not in capsys.readouterr().err                  # a path, not an id


def test_chat_turns_on_line_editing_when_interactive(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_line_editing", lambda: calls.append(1) or True)
    fake = types.SimpleNamespace(tokenizer=types.SimpleNamespace(chat_template="{{ messages }}"), source="fake")
    monkeypatch.setattr(cli, "_load", lambda args: fake)

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stdin", Tty("/exit\n"))
    assert cli.main(["chat", "--model", "unused"]) == 0
    assert calls == [1]
    monkeypatch.setattr(sys, "stdin", io.StringIO("/exit\n"))     # piped input: no readline needed
    assert cli.main(["chat", "--model", "unused"]) == 0
    assert calls == [1]


def test_line_editing_imports_readline():
    pytest.importorskip("readline")
    assert cli._line_editing() is True and "readline" in sys.modules
