"""BitNet's `modules_to_not_convert` (config.json quantization_config) matched the way
transformers' should_convert_module matches it, without running the file's pattern as a
regular expression.

transformers (quantizers/quantizers_utils.py) leaves a module unconverted when a pattern
    1. matches the module name from its start up to a module boundary, as a regex:
       re.match(rf"(?:{key})(?:(?<=\\.)|(?=\\.|$))", name) -- "model.layers.1" matches
       "model.layers.1.mlp" but not "model.layers.11.mlp"; "model.layers.*.mlp" matches
       every layer's mlp; or
    2. is a plain suffix of the name: name.endswith(key) -- "down_proj".
Handing a config file's string to `re` lets the file crash the load (`(` is a re.error) or
hang it (catastrophic backtracking, e.g. "(a*)*b"). Here a pattern is parsed into the
part of regex syntax module patterns use, and all patterns together become one
nondeterministic automaton simulated with bit sets: time linear in the name's length
times the patterns' total length, whatever the pattern. Patterns with syntax outside that
part are refused with a ValueError naming the file and the pattern.

Supported: literal characters; `.` (any character); escapes `\\.` (any non-alphanumeric
character taken literally), `\\d`, `\\w`, `\\s`; classes `[...]` with ranges and `^`
negation; quantifiers `*`, `+`, `?` on one atom (a trailing `?` making them lazy is
accepted: laziness does not change whether a match exists); `|` between alternatives; `^`
at the start and `$` at the end of an alternative. Not supported: groups, `{m,n}`,
backreferences, lookarounds, anchors elsewhere.
"""
from __future__ import annotations

MAX_PATTERNS = 4096
MAX_TOTAL_CHARS = 65536      # bounds the automaton: a few microseconds per character of a name

_CLASS_ESCAPES = {
    "d": lambda c: c.isdecimal(),
    "w": lambda c: c.isalnum() or c == "_",
    "s": lambda c: c.isspace(),
}


class _Atom:
    """One position of a pattern: a literal character or a predicate on a character, and
    a quantifier ("1", "?" or "*"; "+" is stored as the atom followed by the atom with "*")."""

    __slots__ = ("lit", "test", "quant")

    def __init__(self, test, quant="1", lit=None):
        self.lit, self.test, self.quant = lit, test, quant

    def repeated(self):
        return _Atom(self.test, "*", self.lit)


def _literal(ch):
    return lambda c: c == ch


def _literal_atom(ch):
    return _Atom(_literal(ch), lit=ch)


def _any(c):
    return True


def _parse_class(p: str, i: int, bad):
    """p[i] == "["; returns (predicate, index after the closing "]")."""
    i += 1
    negate = i < len(p) and p[i] == "^"
    i += negate
    items, first = [], True
    while True:
        if i >= len(p):
            bad("an unterminated [ class")
        ch = p[i]
        if ch == "]" and not first:
            i += 1
            break
        first = False
        if ch == "\\":
            if i + 1 >= len(p):
                bad("a trailing backslash")
            esc = p[i + 1]
            i += 2
            if esc in _CLASS_ESCAPES:
                items.append(_CLASS_ESCAPES[esc])
                continue
            if esc.isalnum():
                bad(f"the escape \\{esc}")
            lo = esc
        else:
            lo = ch
            i += 1
        if i + 1 < len(p) and p[i] == "-" and p[i + 1] != "]":
            hi = p[i + 1]
            if hi == "\\":
                if i + 2 >= len(p) or p[i + 2].isalnum():
                    bad("an escape as the end of a range")
                hi, i = p[i + 2], i + 3
            else:
                i += 2
            if hi < lo:
                bad(f"the reversed range {lo}-{hi}")
            items.append(lambda c, lo=lo, hi=hi: lo <= c <= hi)
        else:
            items.append(_literal(lo))
    if negate:
        return (lambda c: not any(t(c) for t in items)), i
    return (lambda c: any(t(c) for t in items)), i


def _parse(pattern: str, bad):
    """pattern -> list of alternatives, each (atoms, anchored_at_end)."""
    alternatives, atoms, end_anchor = [], [], False
    i, n = 0, len(pattern)
    at_start = True
    while i <= n:
        if i == n or pattern[i] == "|":
            alternatives.append((atoms, end_anchor))
            atoms, end_anchor, at_start = [], False, True
            i += 1
            continue
        ch = pattern[i]
        if end_anchor:
            bad("$ before the end of the pattern")
        if ch == "^":
            if not at_start:
                bad("^ after the start of the pattern")
            i += 1
            at_start = False
            continue
        at_start = False
        if ch == "$":
            end_anchor = True
            i += 1
            continue
        if ch in "*+?":
            if not atoms or atoms[-1].quant != "1":
                bad(f"'{ch}' with nothing to repeat")
            if ch == "+":
                atoms.append(atoms[-1].repeated())
            else:
                atoms[-1].quant = ch
            i += 1
            if i < n and pattern[i] == "?":      # lazy: the same matches exist
                i += 1
            if i < n and pattern[i] in "*+?{":
                bad(f"the quantifier {pattern[i - 1:i + 1]}")
            continue
        if ch in "(){}":
            bad(f"'{ch}' (groups and counted repeats are not evaluated)")
        if ch == "[":
            test, i = _parse_class(pattern, i, bad)
            atoms.append(_Atom(test))
            continue
        if ch == "\\":
            if i + 1 >= n:
                bad("a trailing backslash")
            esc = pattern[i + 1]
            if esc in _CLASS_ESCAPES:
                atoms.append(_Atom(_CLASS_ESCAPES[esc]))
            elif esc.isalnum():
                bad(f"the escape \\{esc}")
            else:
                atoms.append(_literal_atom(esc))
            i += 2
            continue
        atoms.append(_Atom(_any) if ch == "." else _literal_atom(ch))
        i += 1
    return alternatives


class ModulePatterns:
    """Every pattern of one modules_to_not_convert list, as one bit-parallel automaton.

    State layout: each alternative of each pattern gets len(atoms) + 1 consecutive bits,
    bit k meaning "atoms[:k] have matched"; the last bit is the alternative's accept state.
    Matching atom k moves bit k to bit k + 1 (one shift for all states at once); a "*"
    atom also keeps bit k; "?" and "*" atoms may be skipped (bit k implies bit k + 1)."""

    def __init__(self, patterns, where: str, field: str = "quantization_config.modules_to_not_convert"):
        total = sum(len(p) for p in patterns)
        if len(patterns) > MAX_PATTERNS or total > MAX_TOTAL_CHARS:
            raise ValueError(f"{where}: {field} has {len(patterns)} entries of {total} characters "
                             f"(at most {MAX_PATTERNS} entries, {MAX_TOTAL_CHARS} characters)")
        self._suffixes = set(patterns)
        self._literals: dict = {}           # character -> bits of the atoms that are that literal
        self._tests = []                    # (bit, predicate) of the other atoms
        start = accept = accept_end = skip = stay = 0
        bit = 0
        for p in patterns:
            def bad(what, p=p):
                raise ValueError(f"{where}: {field} entry {p!r:.100} uses {what}; ternlm matches module "
                                 f"names without running regular expressions (see ternlm/io/module_names.py)")
            for atoms, end_anchor in _parse(p, bad):
                start |= 1 << bit
                for atom in atoms:
                    if atom.lit is not None:
                        self._literals[atom.lit] = self._literals.get(atom.lit, 0) | 1 << bit
                    else:
                        self._tests.append((bit, atom.test))
                    if atom.quant in "?*":
                        skip |= 1 << bit
                    if atom.quant == "*":
                        stay |= 1 << bit
                    bit += 1
                accept |= 1 << bit
                if end_anchor:
                    accept_end |= 1 << bit
                bit += 1
        self._start, self._accept, self._accept_end = start, accept, accept_end
        self._skip, self._stay = skip, stay
        self._by_char: dict = {}

    def _matching(self, c) -> int:
        """Bits of the atoms that accept character c (cached per character)."""
        m = self._by_char.get(c)
        if m is None:
            m = self._literals.get(c, 0)
            for bit, test in self._tests:
                if test(c):
                    m |= 1 << bit
            self._by_char[c] = m
        return m

    def _closure(self, states: int) -> int:
        """states plus everything reachable by skipping "?" / "*" atoms. Within a run of
        skippable bits a..b, a state at j reaches j..b+1: adding the states to the run mask
        carries from j through b into b+1 (never further: b+1 is not skippable), and the
        bits that flipped are exactly those."""
        k = self._skip
        return states | ((k + (states & k)) ^ k)

    def matches(self, name: str) -> bool:
        """Whether some pattern leaves module `name` unconverted (rule 1 or 2 above)."""
        if any(name[k:] in self._suffixes for k in range(len(name) + 1)):
            return True
        states = self._closure(self._start)
        for k in range(len(name) + 1):
            hit = states & self._accept
            if hit:
                if k == len(name):
                    return True
                if (hit & ~self._accept_end) and (name[k] == "." or (k > 0 and name[k - 1] == ".")):
                    return True
            if k == len(name):
                return False
            m = states & self._matching(name[k])
            states = self._closure(((m & ~self._stay) << 1) | (m & self._stay))
            if not states:
                return False
        return False
