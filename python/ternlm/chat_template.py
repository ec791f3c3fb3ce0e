"""Chat templates (jinja2, as transformers renders them), rendered with bounded time and
size, every failure a ValueError naming where the template came from.

A chat template is code from the model file. jinja2's ImmutableSandboxedEnvironment
already keeps it from touching Python internals or mutating its inputs, and caps a single
range() at 100,000 items; it does not bound time (range(100000) nested twice is 10^10
iterations) or size ('x' * 10**10, s ~ s doubled in a loop). Here:

  time    the render runs in a worker thread whose trace function checks a deadline on
          every line of Python it executes (template code and the jinja2 filters it
          calls); past RENDER_SECONDS it raises, and the caller stops waiting then in any
          case (a single long C call can only be abandoned, not interrupted).
  size    every operation that can make a string or list much larger than its operands
          (+, *, % and ~, the padding / repeating / joining filters and str methods, the
          output itself) is checked against a limit before it runs: MAX_CHARS plus four
          times the characters of the messages.
  errors  syntax errors, undefined names used wrongly, sandbox violations, the template's
          own raise_exception(...) and the two bounds above all become ChatTemplateError,
          a ValueError (and a jinja2 TemplateError) whose message starts with the source.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

RENDER_SECONDS = 3.0
MAX_CHARS = 8 << 20          # far beyond any context's worth of text
MAX_JSON_INDENT = 64


class ChatTemplateError(ValueError, jinja2.exceptions.TemplateError):
    """A chat template that does not compile, fails, or exceeds its time or size bound."""


_AS_CHAT_ERROR: dict = {}


def _chat_error(kind: type, message: str) -> ChatTemplateError:
    """A ChatTemplateError that is also an instance of the jinja2 error class `kind`
    (SecurityError, UndefinedError, ...), so code catching that class still catches it."""
    if kind not in _AS_CHAT_ERROR:
        _AS_CHAT_ERROR[kind] = ChatTemplateError if kind is jinja2.exceptions.TemplateError else \
            type(f"ChatTemplate{kind.__name__}", (ChatTemplateError, kind), {})
    return _AS_CHAT_ERROR[kind](message)


class _Budget(Exception):
    """Raised inside the render when a bound is exceeded (turned into ChatTemplateError)."""


def _input_chars(value, depth=0) -> int:
    if isinstance(value, str):
        return len(value)
    if depth > 8:
        return 0
    if isinstance(value, dict):
        return sum(_input_chars(k, depth + 1) + _input_chars(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_input_chars(v, depth + 1) for v in value)
    return 0


_WIDTH = re.compile(r"\d+")


class _CodeGenerator(CodeGenerator):
    """jinja2's compiler, except that `a ~ b` calls the environment's size-checked join."""

    def visit_Concat(self, node, frame):
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["+", "*", "**", "%"])

    def __init__(self):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        self._render = threading.local()     # each render runs in its own worker thread
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.filters["tojson"] = self._tojson
        for name in ("center", "indent", "wordwrap", "format", "replace", "join"):
            self.filters[name] = self._bounded_filter(self.filters[name], name)

    # ---- size checks -------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The size bound of the render running in this thread (ChatTemplate.render sets it)."""
        return getattr(self._render, "limit", MAX_CHARS)

    def need(self, n, what):
        if n > self.limit:
            raise _Budget(f"{what} would make {n} characters or items (limit {self.limit})")

    def check_format(self, fmt: str, what):
        if "*" in fmt and what.startswith("%"):
            raise _Budget(f"{what} with a '*' width")
        for digits in _WIDTH.findall(fmt):
            if len(digits) > 9 or int(digits) > self.limit:
                raise _Budget(f"{what} with width {digits[:12]}")

    def bounded_concat(self, parts):
        parts = [str(p) for p in parts]
        self.need(sum(len(p) for p in parts), "~")
        return "".join(parts)

    def call_binop(self, context, operator, left, right):
        sized = (str, list, tuple)
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(n, int):
                    self.need(len(seq) * max(n, 0), "*")
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            self.need(len(left) + len(right), "+")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            self.need(max(right, 0) * abs(left).bit_length() // 8, "**")
        elif operator == "%" and isinstance(left, str):
            self.check_format(left, "% formatting")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature)
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > __self.limit:
                raise _Budget(f"a call with the argument {a}")
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            name = getattr(target, "__name__", "")
            if name in ("format", "format_map"):
                __self.check_format(owner, "str.format")
            elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
                __self.need(len(owner) + owner.count(args[0]) * max(len(args[1]) - len(args[0]), 0)
                            + (len(owner) + 1) * len(args[1]) * (args[0] == ""), "str.replace")
            elif name == "join" and args:
                items = [str(x) for x in args[0]]
                __self.need(sum(map(len, items)) + len(owner) * len(items), "str.join")
                args = (items,) + args[1:]
        return super().call(__context, __obj, *args, **kwargs)

    def _bounded_filter(self, func, name):
        def bounded(*args, **kwargs):
            # filters take (value, ...) or, when context-aware, (eval_ctx, value, ...)
            pos = [a for a in args if not isinstance(a, jinja2.nodes.EvalContext)]
            value = str(pos[0]) if pos and name != "join" else ""
            rest = pos[1:] + list(kwargs.values())
            if name in ("center", "indent", "wordwrap"):
                width = next((a for a in rest if isinstance(a, int) and not isinstance(a, bool)), 0)
                self.need(max(width, 0) * (value.count("\n") + 1) + len(value), name)
            elif name == "format":
                self.check_format(value, "% formatting")
            elif name == "replace" and len(rest) >= 2:
                old, new = str(rest[0]), str(rest[1])
                self.need(len(value) + (value.count(old) if old else len(value) + 1) * len(new), name)
            elif name == "join" and pos:
                items = list(pos[0])
                sep = str(rest[0]) if rest else ""
                self.need(sum(len(str(x)) for x in items) + len(sep) * len(items), name)
                args = tuple(items if a is pos[0] else a for a in args)
            return func(*args, **kwargs)
        for attr in ("jinja_pass_arg",):
            if hasattr(func, attr):
                setattr(bounded, attr, getattr(func, attr))
        return bounded

    def _tojson(self, x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; templates expect plain JSON.
        width = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
        if width > MAX_JSON_INDENT:
            raise _Budget(f"tojson with indent {indent!r:.20}")
        out = json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
        self.need(len(out), "tojson")
        return out


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


class ChatTemplate:
    """A compiled chat template; `source` names where it came from, for messages
    ("<folder>/tokenizer_config.json", "<file>.gguf: metadata key tokenizer.chat_template")."""

    def __init__(self, text: str, source: str):
        self.source = source
        if not isinstance(text, str):
            raise ChatTemplateError(f"{source}: chat template must be a string, got {type(text).__name__}")
        self._env = _BoundedSandbox()
        try:
            ast = self._env.parse(text)
            # the top-level names the template reads (messages, tools, bos_token, ...)
            self.variables = frozenset(jinja2.meta.find_undeclared_variables(ast))
            self._template = self._env.from_string(ast)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ChatTemplateError(f"{source}: chat template has a syntax error "
                                    f"(line {e.lineno}: {e.message})") from None
        except (RecursionError, MemoryError):
            raise ChatTemplateError(f"{source}: chat template is too deeply nested to compile") from None

    def render(self, **context) -> str:
        limit = MAX_CHARS + 4 * _input_chars(context)
        deadline = time.monotonic() + RENDER_SECONDS
        result: dict = {}

        def tracer(frame, event, arg):
            if time.monotonic() > deadline:
                raise _Budget(f"rendering took longer than {RENDER_SECONDS:g} s")
            return tracer

        def work():
            self._env._render.limit = limit
            sys.settrace(tracer)
            try:
                pieces, size = [], 0
                for piece in self._template.generate(**context):
                    size += len(piece)
                    if size > limit:
                        raise _Budget(f"the output exceeds {limit} characters")
                    pieces.append(piece)
                result["text"] = "".join(pieces)
            except BaseException as e:  # handed to the caller below
                result["error"] = e
            finally:
                sys.settrace(None)

        worker = threading.Thread(target=work, name="ternlm-chat-template", daemon=True)
        worker.start()
        worker.join(RENDER_SECONDS + 1.0)
        if worker.is_alive():      # stuck in one long C call: abandon it
            raise ChatTemplateError(f"{self.source}: chat template rendering took longer than "
                                    f"{RENDER_SECONDS:g} s") from None
        if "text" in result:
            return result["text"]
        e = result["error"]
        if isinstance(e, _Budget):
            raise ChatTemplateError(f"{self.source}: chat template stopped: {e}") from None
        if isinstance(e, jinja2.exceptions.TemplateError) and not isinstance(e, jinja2.exceptions.TemplateSyntaxError):
            raise _chat_error(type(e), f"{self.source}: chat template failed: {e.message or type(e).__name__}") from e
        if isinstance(e, (RecursionError, MemoryError)):
            raise ChatTemplateError(f"{self.source}: chat template failed: {type(e).__name__}") from None
        if isinstance(e, Exception):
            raise ChatTemplateError(f"{self.source}: chat template failed: {type(e).__name__}: {e}") from e
        raise e                    # KeyboardInterrupt / SystemExit in the worker
