"""A few hundred varied strings for tokenizer comparisons: plain prose, code, whitespace runs,
digits, unicode from several scripts, emoji (incl. ZWJ sequences), control-like text and
special-token look-alikes. Deterministic."""
import random

PIECES = [
    "Hello world", "hello", "HELLO", "The quick brown fox jumps over the lazy dog.",
    "I'm", "don't", "they'll", "we've", "It's", "O'Neill", "rock'n'roll",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "import numpy as np", "x = {'a': [1, 2, 3], \"b\": None}", "<div class=\"x\">&amp;</div>",
    "SELECT * FROM t WHERE id = 42;", "#include <stdio.h>", "fn main() -> i32 { 0 }",
    "    ", "  ", " ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "   leading", "trailing   ",
    "0", "7", "42", "123", "2024", "12345", "3.14159", "1,000,000", "1e-5", "-17", "0x1F",
    "v1.2.3", "+49 30 1234567", "$9.99", "100%", "10^9",
    "Café", "naïve", "résumé", "über", "straße", "Ångström", "ﬁ ligature",
    "日本語の文章", "中文句子", "한국어 문장", "Привет, мир", "Γειά σου κόσμε", "مرحبا بالعالم",
    "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt",
    "😀", "🚀🚀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "™", "©", "½", "∑∫√∞", "→←↑↓",
    "...", "!!!", "???", "—", "–", "“quoted”", "‘single’", "«guillemets»", "¿Qué?", "¡Hola!",
    "a\u00a0b", "zero\u200bwidth", "tab\tseparated\tvalues", "snake_case_name", "camelCaseName",
    "kebab-case-name", "URL: https://example.com/a?b=c&d=e#f", "email@example.org", "@user #tag",
    "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "[INST]", "<think>",
]


def varied_strings(n=300, seed=1234):
    rng = random.Random(seed)
    out = list(PIECES)
    seps = ["", " ", "  ", "\n", "\t", ", ", " - ", "\n\n"]
    while len(out) < n:
        k = rng.randint(2, 5)
        parts = [rng.choice(PIECES) for _ in range(k)]
        s = parts[0]
        for p in parts[1:]:
            s += rng.choice(seps) + p
        out.append(s)
    return out[:n]
