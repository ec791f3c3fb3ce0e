"""Tokenizer: Hugging Face `tokenizers` for text <-> ids, jinja2 for chat templates, and an
incremental decoder for streaming.

It tokenizes exactly like transformers' (v5) AutoTokenizer on the same folder:
tokenizer.json is the pipeline and its post-processor alone decides BOS/EOS (transformers
ignores tokenizer_config's add_bos_token / add_eos_token when tokenizer.json exists), and
for the LlamaTokenizer / GPT2Tokenizer classes the normalizer, pre-tokenizer and decoder
are rebuilt the way those transformers classes rebuild them (see _apply_class_pipeline).
"""
from __future__ import annotations

import json
import os

import tokenizers
from tokenizers import AddedToken, processors

from .chat_template import ChatTemplate
from .config import config_int
from .io.jsonfile import id_list, read_json

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                      "cls_token", "mask_token")


def _token_str(value, key, where):
    """tokenizer_config.json stores special tokens as strings or AddedToken dicts
    ({"content": str, ...}); None when absent. Anything else: ValueError naming file and key."""
    text = value.get("content") if isinstance(value, dict) else value
    if text is None or isinstance(text, str):
        return text
    raise ValueError(f"{where}: {key} must be a string or an AddedToken object with a \"content\" "
                     f"string, got {value!r:.80}")


def _has_byte_level(component) -> bool:
    if isinstance(component, dict):
        return component.get("type") == "ByteLevel" or any(_has_byte_level(v) for v in component.values())
    if isinstance(component, list):
        return any(_has_byte_level(v) for v in component)
    return False


# config.json model types whose tokenizer transformers registers as TokenizersBackend (or
# MistralCommonBackend, which needs Mistral's own tokenizer files): for them a differing
# tokenizer_class (Mistral's repos say LlamaTokenizer) is not used, tokenizer.json is
# taken as it is (AutoTokenizer.from_pretrained, transformers v5).
_MODEL_TYPES_KEEPING_TOKENIZER_JSON = frozenset({"mistral"})


def _apply_class_pipeline(backend, tcfg: dict, tok_json: dict, where: str, model_type=None):
    """transformers v5 does not use tokenizer.json's normalizer / pre-tokenizer / decoder for
    tokenizer classes with their own constructor: it keeps the vocabulary, merges, added
    tokens and post-processor and rebuilds the rest as the class defines it. For the classes
    of the models ternlm runs we do the same, so that we tokenize like AutoTokenizer:
      LlamaTokenizer (Llama 2, TinyLlama): no normalizer, Metaspace pre-tokenizer (prepend
        "first" unless legacy, so no "▁" after special tokens), byte-fallback decoder;
        a ByteLevel tokenizer.json declared as LlamaTokenizer is left alone (as transformers).
      GPT2Tokenizer (SmolLM2): ByteLevel pre-tokenizer and decoder only.
    Any other class (PreTrainedTokenizerFast, TokenizersBackend: Llama 3, BitNet; Qwen2Tokenizer,
    whose pipeline tokenizer.json holds already) keeps tokenizer.json as is, and so does any
    class in a folder whose config.json model_type is one of _MODEL_TYPES_KEEPING_TOKENIZER_JSON."""
    from tokenizers import decoders, pre_tokenizers
    cls = tcfg.get("tokenizer_class") or ""
    if not isinstance(cls, str):
        raise ValueError(f"{where}: tokenizer_class must be a string, got {cls!r:.80}")
    cls = cls.removesuffix("Fast")
    if tok_json.get("model", {}).get("type") != "BPE" or model_type in _MODEL_TYPES_KEEPING_TOKENIZER_JSON:
        return
    if cls == "LlamaTokenizer":
        if _has_byte_level(tok_json.get("pre_tokenizer")) or _has_byte_level(tok_json.get("decoder")):
            return
        add_prefix_space = tcfg.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
        scheme = ("first" if not tcfg.get("legacy", False) else "always") if add_prefix_space else "never"
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        backend.decoder = decoders.Sequence(steps)
    elif cls == "GPT2Tokenizer":
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(tcfg.get("add_prefix_space", False)))
        backend.decoder = decoders.ByteLevel()


class Tokenizer:
    """Text <-> token ids for one model.

    backend: a tokenizers.Tokenizer (the whole pipeline). bos_token_id / eos_token_ids: what
    generation starts from and stops on. add_bos_token: None keeps the backend's own
    post-processor; True/False (with add_eos_token) installs `[bos] $A [eos]` as transformers
    does when these flags are explicit. special_tokens: {"bos_token": "<s>", ...} strings the
    chat template can use.
    """

    def __init__(self, backend: tokenizers.Tokenizer, bos_token_id=None, eos_token_ids=(),
                 chat_template=None, add_bos_token=None, special_tokens=None,
                 add_eos_token=False, clean_up_tokenization_spaces=False, derive_special_tokens=True,
                 chat_template_source="chat_template"):
        self.backend = backend
        self.bos_token_id = None if bos_token_id is None else int(bos_token_id)
        self.eos_token_ids = [int(i) for i in eos_token_ids]
        self.chat_template = chat_template
        self.chat_template_source = chat_template_source     # where it came from, for messages
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        # callers that know only ids (GGUF metadata) still get bos/eos strings for templates;
        # from_folder turns this off to match transformers exactly.
        for key, tid in (("bos_token", self.bos_token_id),
                         ("eos_token", self.eos_token_ids[0] if self.eos_token_ids else None)):
            if derive_special_tokens and key not in self.special_tokens and tid is not None:
                text = backend.id_to_token(tid)
                if text is not None:
                    self.special_tokens[key] = text
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._compiled_template = None
        if add_bos_token is not None:
            self._install_post_processor(bool(add_bos_token), bool(add_eos_token))
        self.add_bos_token = self._adds_bos()

    def _install_post_processor(self, add_bos: bool, add_eos: bool):
        bos = self.special_tokens.get("bos_token")
        eos = self.special_tokens.get("eos_token")
        bos_id = self.backend.token_to_id(bos) if bos else None
        eos_id = self.backend.token_to_id(eos) if eos else None
        add_bos = add_bos and bos_id is not None
        add_eos = add_eos and eos_id is not None
        single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (f" {eos}:0" if add_eos else "")
        pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
        special = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if add_eos else [])
        self.backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special)

    def _adds_bos(self) -> bool:
        if self.bos_token_id is None:
            return False
        ids = self.backend.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == self.bos_token_id

    # ---- construction from a Hugging Face folder ------------------------------------
    @classmethod
    def from_folder(cls, path) -> "Tokenizer":
        path = os.fspath(path)
        tok_json_path = os.path.join(path, "tokenizer.json")
        if not os.path.exists(tok_json_path):
            raise FileNotFoundError(f"{path}: no tokenizer.json (ternlm needs the fast-tokenizer file)")
        try:
            backend = tokenizers.Tokenizer.from_file(tok_json_path)
            with open(tok_json_path, encoding="utf-8") as f:
                tok_json = json.load(f)
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{tok_json_path}: cannot be read by the tokenizers library ({e})") from e
        tcfg_path = os.path.join(path, "tokenizer_config.json")
        legacy_path = os.path.join(path, "special_tokens_map.json")
        tcfg = read_json(tcfg_path, missing_ok=True)
        legacy = read_json(legacy_path, missing_ok=True)
        gen = read_json(os.path.join(path, "generation_config.json"), missing_ok=True)
        mcfg = read_json(os.path.join(path, "config.json"), missing_ok=True)

        special = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = (_token_str(tcfg[key], key, tcfg_path) if key in tcfg
                     else _token_str(legacy.get(key), key, legacy_path))
            if value is not None:
                special[key] = value
        if not isinstance(tcfg.get("tokenizer_class") or "", str):
            raise ValueError(f"{os.path.join(path, 'tokenizer_config.json')}: tokenizer_class must be a string")
        # transformers adds named special tokens the vocabulary lacks as special tokens.
        missing = [s for s in special.values() if backend.token_to_id(s) is None]
        if missing:
            backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])

        bos_id = backend.token_to_id(special["bos_token"]) if "bos_token" in special else None
        if bos_id is None:
            where = os.path.join(path, "generation_config.json" if "bos_token_id" in gen else "config.json")
            bos_id = gen.get("bos_token_id", mcfg.get("bos_token_id"))
            bos_id = None if bos_id is None else config_int(bos_id, "bos_token_id", where, minimum=0)
        eos_ids = []
        for src in (id_list(mcfg.get("eos_token_id"), "eos_token_id", os.path.join(path, "config.json")),
                    id_list(gen.get("eos_token_id"), "eos_token_id", os.path.join(path, "generation_config.json"))):
            eos_ids += [i for i in src if i not in eos_ids]
        if "eos_token" in special:
            i = backend.token_to_id(special["eos_token"])
            if i is not None and i not in eos_ids:
                eos_ids.append(i)

        model_type = mcfg.get("model_type")
        if model_type is not None and not isinstance(model_type, str):
            raise ValueError(f"{os.path.join(path, 'config.json')}: model_type must be a string, "
                             f"got {model_type!r:.80}")
        _apply_class_pipeline(backend, tcfg, tok_json, tcfg_path, model_type)
        # With a tokenizer.json, transformers ignores tokenizer_config's add_bos_token /
        # add_eos_token: the file's post-processor alone decides (none = add nothing).
        template, template_source = cls._find_chat_template(path, tcfg)
        return cls(backend, bos_token_id=bos_id, eos_token_ids=eos_ids,
                   chat_template=template, chat_template_source=template_source,
                   add_bos_token=None,
                   special_tokens=special,
                   clean_up_tokenization_spaces=bool(tcfg.get("clean_up_tokenization_spaces", False)),
                   derive_special_tokens=False)

    @staticmethod
    def _find_chat_template(path, tcfg):
        """(template text or None, where it came from)."""
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.exists(jinja_file):
            try:
                with open(jinja_file, encoding="utf-8") as f:
                    return f.read(), jinja_file
            except UnicodeDecodeError as e:
                raise ValueError(f"{jinja_file}: not UTF-8 text ({e})") from e
        tpl = tcfg.get("chat_template")
        if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
            tpl = named.get("default")
        return tpl, os.path.join(path, "tokenizer_config.json") + ": chat_template"

    def save_to_folder(self, folder):
        """Write tokenizer.json + tokenizer_config.json that from_folder reads back the same."""
        self.backend.save(os.path.join(folder, "tokenizer.json"))
        cfg = dict(self.special_tokens)
        cfg["add_bos_token"] = self.add_bos_token
        cfg["add_eos_token"] = False
        cfg["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)

    # ---- text <-> ids -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        # transformers skips this clean-up for BPE models (it would eat real spaces).
        if self.clean_up_tokenization_spaces and type(self.backend.model).__name__ != "BPE":
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tools=None, documents=None,
                            **kwargs) -> str:
        """The conversation rendered with the model's chat template, as transformers'
        apply_chat_template(..., tokenize=False) renders it: the template sees `messages`,
        `tools` (JSON-schema dicts; Python functions are converted with transformers'
        get_json_schema when transformers is installed), `documents`,
        `add_generation_prompt`, the special tokens (bos_token, eos_token, ...) and every
        other keyword argument (e.g. enable_thinking=False for templates that read it)."""
        if not self.chat_template:
            raise ValueError("this model's tokenizer has no chat_template "
                             "(tokenizer_config.json / chat_template.jinja); use generate() with plain text")
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
        context = {**self.special_tokens, **kwargs}
        # bounded in time and size; any failure is a ValueError naming the template's source
        return self._template().render(messages=list(messages), tools=_tool_schemas(tools),
                                              documents=documents, add_generation_prompt=add_generation_prompt,
                                              **context)

    def chat_template_variables(self) -> frozenset:
        """The top-level names the chat template reads (messages, tools, bos_token, ...)."""
        return self._template().variables if self.chat_template else frozenset()

    def _template(self) -> ChatTemplate:
        """The compiled chat template (compiled once; a syntax error is a ValueError naming
        the template's source, ternlm/chat_template.py)."""
        if self._compiled_template is None:
            self._compiled_template = ChatTemplate(self.chat_template, self.chat_template_source)
        return self._compiled_template


def _tool_schemas(tools):
    """tools for a chat template: None, or a list of JSON-schema dicts (functions converted
    the way transformers converts them)."""
    if tools is None:
        return None
    if isinstance(tools, dict) or not isinstance(tools, (list, tuple)):
        raise TypeError(f"tools must be a list of JSON-schema dicts (or functions), got {type(tools).__name__}")
    out = []
    for tool in tools:
        if isinstance(tool, dict):
            out.append(tool)
        elif callable(tool):
            try:
                from transformers.utils import get_json_schema
            except ImportError:
                raise TypeError(f"tool {getattr(tool, '__name__', tool)!r} is a function: pass its JSON schema "
                                "({'type': 'function', 'function': {'name': ..., 'parameters': ...}}), or "
                                "install transformers to convert functions") from None
            out.append(get_json_schema(tool))
        else:
            raise TypeError(f"each tool must be a JSON-schema dict or a function, got {type(tool).__name__}")
    return out


class StreamDecoder:
    """Turns a stream of token ids into text pieces, emitting text only once its bytes form
    complete UTF-8 (a multi-byte character split over byte-fallback / byte-level tokens
    shows up as U+FFFD until its last byte arrives).

    It decodes a short window ids[prefix:] and compares with ids[prefix:read], so that
    decoders which treat the first token specially (Metaspace stripping a leading space)
    see the same start in both and only the new suffix is emitted.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list = []
        self.prefix = 0    # window start
        self.read = 0      # ids[:read] have been emitted as text

    def _text(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes ('' if none yet)."""
        self.ids.append(int(token_id))
        before = self._text(self.ids[self.prefix:self.read])
        after = self._text(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is left (possibly an incomplete character as U+FFFD) at the end."""
        before = self._text(self.ids[self.prefix:self.read])
        after = self._text(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""
