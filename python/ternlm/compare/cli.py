"""`ternlm compare`: the command-line face of ternlm.compare (registered by ternlm/cli.py)."""
from __future__ import annotations

from ..cli import (MODEL_HELP, CliError, _add_revision_arg, _add_threads_arg, _model_path, _one_thread_count,
                   _positive_int)

DESCRIPTION = ("Load the model in each format, each in a fresh process, and print size, peak memory, load time, "
               "prefill and decode speed, perplexity on a text and the memory-bandwidth roofline as a table with "
               "a legend.")


def add_parser(sub):
    p = sub.add_parser("compare", help="compare bf16 / int4 / ternary: size, speed, perplexity",
                       description=DESCRIPTION)
    _add_compare_args(p)
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    from pathlib import Path

    from . import compare
    if args.plot:                                 # before minutes of measuring, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install matplotlib (or 'ternlm[plot]')") from None
    table = compare(_model_path(args), formats=args.formats, text=Path(args.text) if args.text else None,
                    threads=_one_thread_count(args), prompt_tokens=args.prompt_tokens,
                    decode_tokens=args.decode_tokens, max_tokens_ppl=args.ppl_tokens, window=args.window,
                    stride=args.stride, repeats=args.repeats, bandwidth=args.bandwidth,
                    refresh_bandwidth=args.refresh_bandwidth, progress=not args.quiet)
    print(table.to_markdown() if args.markdown else table)
    if args.json:
        table.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        table.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def _add_compare_args(p):
    # Distinct options declared one after another: the runs of add_argument lines look alike
    # (here and in the other subcommands' parsers) but each declares its own flag.
    from . import FORMATS
    p.add_argument("--model", metavar="PATH", help=MODEL_HELP)
    _add_revision_arg(p)
    p.add_argument("--formats", default=",".join(FORMATS), metavar="LIST",
                   help="comma-separated formats, from bf16,bf16c,int4,ternary,nano:BITS (default: bf16,int4,ternary)")
    p.add_argument("--text", metavar="FILE", help="UTF-8 text for perplexity (default: the GNU GPL v3 that "
                   "Debian's base-files installs at /usr/share/common-licenses/GPL-3; see ternlm.texts)")
    _add_threads_arg(p)
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON here")
    p.add_argument("--plot", metavar="FILE", help="write a figure here (PNG/SVG/PDF; needs matplotlib)")
    p.add_argument("--prompt-tokens", type=_positive_int, default=128, metavar="N",
                   help="prompt length for the prefill speed (default: 128)")
    p.add_argument("--decode-tokens", type=_positive_int, default=32, metavar="N",
                   help="tokens decoded for the decode speed (default: 32)")
    p.add_argument("--ppl-tokens", type=_positive_int, default=1024, metavar="N",
                   help="score at most N tokens of the text (default: 1024)")
    p.add_argument("--window", type=_positive_int, default=512, metavar="N",
                   help="perplexity window in tokens (default: 512)")
    p.add_argument("--stride", type=_positive_int, default=256, metavar="N",
                   help="perplexity stride in tokens (default: 256)")
    p.add_argument("--repeats", type=_positive_int, default=3, metavar="N",
                   help="timed runs per format; the best is kept (default: 3)")
    p.add_argument("--bandwidth", type=float, default=None, metavar="GB/S",
                   help="use this read bandwidth instead of the measured one")
    p.add_argument("--refresh-bandwidth", action="store_true",
                   help="measure the read bandwidth again (a cached figure is re-measured after 7 days)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
