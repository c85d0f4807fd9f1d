"""Differential property test of the JSON-Schema grammar (host/grammar)
against the `jsonschema` package (Draft 2020-12, format checking for the
formats the grammar writes).

With a fixed seed it generates a few hundred random schemas inside the
supported subset (grammar.h), and for each one documents that are valid
(generated from the schema, written in the grammar's canonical layout) and
mutated ones (values out of range, wrong types, missing / extra properties,
longer strings, bad UTF-8 and escapes, other layouts).  The compiled grammar
(tests/unit/grammar_check.c, a byte-level vocabulary) decides each document;
then
  soundness:    every accepted document parses and is valid under the oracle;
  completeness: every oracle-valid document whose bytes are its canonical
                layout (canonical() below) is accepted.
Schemas the compiler refuses are counted (and must be a small minority).

The oracle is jsonschema's Draft202012Validator with three documented
adjustments, each one a stated contract of the grammar (grammar.h, README):
  * an object schema without additionalProperties means false (strict);
  * oneOf is treated as anyOf (exclusivity is not enforced); documents where
    this matters are counted and printed;
  * pattern: '$' matches only at the very end as in ECMA-262 (Python's also
    matches before a final newline), and a string must match under both
    readings of \\d \\w \\s: ASCII (ECMA-262) and Unicode (Python's re).
    Shorthand complements (\\D \\W \\S) and negated classes with a shorthand
    match no non-ASCII character in the grammar (right under both readings,
    documented in grammar.h): the oracle reads them so too.
Canonical layout: ", " and ": " separators, no other whitespace; strings as
json.dumps(ensure_ascii=False); integral numbers without a fraction (at most
15 digits), others positional with at most 15 significant digits;
object keys in schema order (properties, then required names, then extra
keys); enum/const values as written in the schema; UUIDs in lower case.
"""
import json
import os
import random
import re
import subprocess
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

SEED = int(os.environ.get("PARASERVE_GRAMMAR_DIFF_SEED", "20240611"))
N_SCHEMAS = int(os.environ.get("PARASERVE_GRAMMAR_DIFF_SCHEMAS", "400"))
ROOT = Path(__file__).resolve().parents[2]


def _driver():
    """grammar_check sits next to the paraserve binary (same build dir)."""
    binary = Path(os.environ.get("PARASERVE_BIN", ROOT / "build" / "paraserve"))
    path = binary.parent / "grammar_check"
    if not path.exists():
        pytest.fail(f"grammar_check not found at {path}: build first (cmake --build {binary.parent})")
    return str(path)


# ---- oracle ------------------------------------------------------------------

# The grammar's ASCII-only complements (grammar.h), as Python class ranges.
_ASCII_COMPL = {"D": "\\x00-\\x2f\\x3a-\\x7f", "W": "\\x00-\\x2f\\x3a-\\x40\\x5b-\\x5e\\x60\\x7b-\\x7f",
                "S": "\\x00-\\x08\\x0e-\\x1b\\x21-\\x7f"}


def _ecma_pattern(pattern, ascii_compl=False):
    """Python regex with ECMA-262 '$': an unescaped '$' outside a class is
    the very end of the string.  ascii_compl: \\D \\W \\S and negated classes
    with a shorthand match no non-ASCII character (the grammar's reading)."""
    out, i, in_cls, neg_short, out_neg = [], 0, False, False, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            e = pattern[i + 1]
            if ascii_compl and e in _ASCII_COMPL:
                out.append(_ASCII_COMPL[e] if in_cls else "[" + _ASCII_COMPL[e] + "]")
            else:
                out.append(pattern[i:i + 2])
            if in_cls and e in "dwsDWS":
                neg_short = neg_short or out_neg
            i += 2
            continue
        if in_cls:
            in_cls = ch != "]"
            if not in_cls and ascii_compl and neg_short:
                out.append("\\x80-\\U0010ffff")
        elif ch == "[":
            in_cls = True
            out_neg = neg_short = False
            if pattern[i + 1:i + 2] == "^":
                out_neg = True
                out.append("[^")
                i += 2
                if pattern[i:i + 1] == "]":
                    out.append("]")
                    i += 1
                continue
            if pattern[i + 1:i + 2] == "]":
                out.append("[]")
                i += 2
                continue
        elif ch == "$":
            out.append(r"\Z")
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _pattern_keyword(validator, pattern, instance, schema):
    if not validator.is_type(instance, "string"):
        return
    py = _ecma_pattern(pattern)
    if not (re.search(py, instance, re.ASCII) and re.search(py, instance) and
            re.search(_ecma_pattern(pattern, True), instance)):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r} (ASCII and Unicode reading)")


_FORMATS = jsonschema.FormatChecker(["date", "uuid", "ipv4"])
_Oracle = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern_keyword})


def _adjust(schema, one_of_as_any=True):
    """The oracle's view of a schema (see the module docstring)."""
    if isinstance(schema, list):
        return [_adjust(s, one_of_as_any) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in ("enum", "const"):
            out[k] = v
        elif k == "properties":
            out[k] = {name: _adjust(s, one_of_as_any) for name, s in v.items()}
        elif k == "$defs":
            out[k] = {name: _adjust(s, one_of_as_any) for name, s in v.items()}
        elif k == "oneOf" and one_of_as_any:
            out["anyOf"] = _adjust(v, one_of_as_any)
        else:
            out[k] = _adjust(v, one_of_as_any)
    t = schema.get("type")
    is_obj = t == "object" or (isinstance(t, list) and "object" in t) or \
        (t is None and any(k in schema for k in ("properties", "required")))
    if is_obj and "additionalProperties" not in schema and "enum" not in schema and "const" not in schema:
        out["additionalProperties"] = False
    return out


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _NotJSON(Exception):
    pass


def _parse(doc):
    """bytes -> value; _NotJSON for bytes that are not UTF-8 JSON (strict:
    no NaN / Infinity)."""
    try:
        text = doc.decode("utf-8")
        def bad_const(c):
            raise ValueError(c)
        return json.loads(text, parse_constant=bad_const)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _NotJSON(str(e)) from None


# ---- canonical layout ----------------------------------------------------------

def _num(v):
    """Canonical number text, or None outside the documented range."""
    if isinstance(v, bool):
        raise TypeError
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        s = str(int(v))
        return s if len(s.lstrip("-")) <= 15 else None
    if v != v or v in (float("inf"), float("-inf")):
        return None
    s = format(Decimal(repr(v)), "f")
    ip, _, fp = s.lstrip("-").partition(".")
    return s if len((ip + fp).lstrip("0")) <= 15 else None


def ser(v):
    """Canonical text of v with dict keys in insertion order (None when a
    number is outside the documented range)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        parts = [ser(x) for x in v]
        return None if None in parts else "[" + ", ".join(parts) + "]"
    parts = []
    for k, x in v.items():
        s = ser(x)
        if s is None:
            return None
        parts.append(json.dumps(k, ensure_ascii=False) + ": " + s)
    return "{" + ", ".join(parts) + "}"


def _json_equal(a, b):
    """JSON Schema equality (booleans are not numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class Canon:
    """The grammar's canonical text of a value under a schema."""

    def __init__(self, root, oracle):
        self.root, self.oracle = root, oracle

    def resolve(self, ref):
        node = self.root
        for part in ref.lstrip("#").split("/")[1:]:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def valid(self, v, schema):
        return self.oracle.evolve(schema=_adjust(schema)).is_valid(v)

    def text(self, v, schema, depth=0):
        if depth > 60 or not isinstance(schema, dict) or schema == {}:
            return ser(v)
        if "$ref" in schema:
            return self.text(v, self.resolve(schema["$ref"]), depth + 1)
        if "allOf" in schema:
            return self.text(v, schema["allOf"][0], depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                for b in schema[key]:
                    if self.valid(v, b):
                        return self.text(v, b, depth + 1)
                return ser(v)
        if "const" in schema or "enum" in schema:
            for m in [schema["const"]] if "const" in schema else schema["enum"]:
                if _json_equal(m, v):
                    return ser(m)
            return ser(v)
        if isinstance(v, dict):
            props = schema.get("properties", {})
            order = list(props) + [r for r in schema.get("required", []) if r not in props]
            keys = [k for k in order if k in v] + [k for k in v if k not in order]
            addl = schema.get("additionalProperties", True)
            parts = []
            for k in keys:
                sub = props[k] if k in props else (addl if isinstance(addl, dict) else True)
                s = self.text(v[k], sub, depth + 1)
                if s is None:
                    return None
                parts.append(json.dumps(k, ensure_ascii=False) + ": " + s)
            return "{" + ", ".join(parts) + "}"
        if isinstance(v, list):
            prefix = schema.get("prefixItems", [])
            items = schema.get("items", True)
            parts = [self.text(x, prefix[i] if i < len(prefix) else items, depth + 1) for i, x in enumerate(v)]
            return None if None in parts else "[" + ", ".join(parts) + "]"
        if isinstance(v, str) and schema.get("format") == "uuid" and not _UUID.fullmatch(v):
            return None  # the grammar writes RFC 9562's form: 8-4-4-4-12 lower-case hex
        return ser(v)


# ---- random schemas --------------------------------------------------------------

NAMES = ["a", "b", "id", "name", "value", "x1", "long_name", "with space", "q\"uote", "back\\slash",
         "caf\u00e9", "\u20ac", "emoji\U0001F600", "tab\tkey", "k/s", "UP"]
EXTRA_KEYS = ["zz", "extra", "k2", "a b", "\u00fcber", "\u65e5\u672c", "x\"y", "p\\q", "n\nl", "~", "aa"]
CHARS = (list("abcXYZ019 -_.,:;!?/#@[]{}()'+*$^|") + ["\"", "\\", "\n", "\t", "\r", "\x01", "\x1f", "\x7f",
         "\u00e9", "\u00df", "\u20ac", "\u2028", "\u4e2d", "\U0001F600", "\U00010348", "\u0663", "\u00a0"])
ANY_CHAR = CHARS  # what '.' and negated classes draw from


def rand_text(rng, n, pool=CHARS):
    return "".join(rng.choice(pool) for _ in range(n))


def rand_scalar(rng):
    r = rng.random()
    if r < 0.35:
        return rand_text(rng, rng.randint(0, 5))
    if r < 0.6:
        return rng.randint(-50, 50)
    if r < 0.75:
        return rng.choice([0.5, -1.25, 3.75, 0.001, 12.5])
    if r < 0.88:
        return rng.choice([True, False])
    return None


# pattern ASTs: ("lit", ch) ("cls", chars, neg) ("sh", letter) ("dot",)
# ("cat", [..]) ("alt", [..]) ("rep", node, lo, hi|None)
SHORT = {"d": "0123456789", "w": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
         "s": " \t\n\r\x0b\x0c"}
CLASSES = [("a-z", "abcdefghijklmnopqrstuvwxyz"), ("0-9", "0123456789"), ("A-F", "ABCDEF"),
           ("xyz", "xyz"), (",;", ",;"), ("a-c_", "abc_"), ("\\d.", "0123456789."), ("\\-+", "-+")]
LITS = list("abcxyzABZ019-_ :,/#@=") + ["\\.", "\\\"", "\\\\", "\\$", "\\(", "\\n", "\u00e9", "\u20ac"]
LIT_CHAR = {"\\.": ".", "\\\"": "\"", "\\\\": "\\", "\\$": "$", "\\(": "(", "\\n": "\n"}


def rand_re(rng, depth=0):
    r = rng.random()
    if depth < 2 and r < 0.2:
        return ("cat", [rand_re(rng, depth + 1) for _ in range(rng.randint(2, 3))])
    if depth < 2 and r < 0.3:
        return ("alt", [rand_re(rng, depth + 1) for _ in range(rng.randint(2, 3))])
    if depth < 3 and r < 0.55:
        lo = rng.randint(0, 2)
        hi = rng.choice([None, lo, lo + rng.randint(1, 3)])
        return ("rep", rand_re(rng, 3), lo, hi)
    r = rng.random()
    if r < 0.4:
        return ("lit", rng.choice(LITS))
    if r < 0.7:
        src, chars = rng.choice(CLASSES)
        return ("cls", src, chars, rng.random() < 0.25)
    if r < 0.9:
        return ("sh", rng.choice("dwsDWS"))
    return ("dot",)


def re_src(n):
    k = n[0]
    if k == "lit":
        return n[1]
    if k == "cls":
        return "[" + ("^" if n[3] else "") + n[1] + "]"
    if k == "sh":
        return "\\" + n[1]
    if k == "dot":
        return "."
    if k == "cat":
        return "".join(re_src(x) for x in n[1])
    if k == "alt":
        return "(" + "|".join(re_src(x) for x in n[1]) + ")"
    inner = re_src(n[1])
    if n[1][0] in ("cat",):
        inner = "(?:" + inner + ")"
    lo, hi = n[2], n[3]
    q = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((lo, hi))
    if q is None:
        q = "{%d}" % lo if hi == lo else "{%d,}" % lo if hi is None else "{%d,%d}" % (lo, hi)
    return inner + q


def re_sample(rng, n):
    k = n[0]
    if k == "lit":
        return LIT_CHAR.get(n[1], n[1])
    if k == "cls":
        if n[3]:
            pool = [c for c in ANY_CHAR if c < "\x80"] if "\\" in n[1] else ANY_CHAR
            return rng.choice([c for c in pool if c not in n[2]])
        return rng.choice(n[2])
    if k == "sh":
        base = SHORT[n[1].lower()]
        if n[1].isupper():
            return rng.choice([c for c in ANY_CHAR if c not in base and c < "\x80"])
        return rng.choice(base)
    if k == "dot":
        return rng.choice([c for c in ANY_CHAR if c != "\n"])
    if k == "cat":
        return "".join(re_sample(rng, x) for x in n[1])
    if k == "alt":
        return re_sample(rng, rng.choice(n[1]))
    lo, hi = n[2], n[3]
    count = rng.randint(lo, lo + 3 if hi is None else hi)
    return "".join(re_sample(rng, n[1]) for _ in range(count))


UNSUPPORTED = [{"type": "array", "uniqueItems": True}, {"type": "integer", "multipleOf": 3},
               {"not": {"type": "null"}}, {"type": "object", "minProperties": 1}]


class Gen:
    """Random schemas inside the grammar's subset, with the information to
    sample valid values (patterns keep their AST)."""

    def __init__(self, rng):
        self.rng = rng
        self.patterns = {}
        self.defs = {}

    def number_bounds(self, s, integer):
        rng = self.rng
        scale = rng.choice([10, 1000, 10 ** 6, 10 ** 12])
        def pick():
            v = rng.randint(-scale, scale)
            if not integer or rng.random() < 0.3:
                if rng.random() < 0.5:
                    v = v + rng.choice([0.5, 0.25, 0.1, 0.75, 0.125, 0.3])
            return v
        lo, hi = pick(), pick()
        if lo > hi:
            lo, hi = hi, lo
        if integer and isinstance(lo, float) and isinstance(hi, float) and int(lo) == int(hi):
            hi += 3
        r = rng.random()
        if r < 0.3:
            s["minimum"], s["maximum"] = lo, hi
        elif r < 0.45:
            s["exclusiveMinimum"], s["maximum"] = lo, hi + 1
        elif r < 0.6:
            s["minimum"], s["exclusiveMaximum"] = lo, hi + 1
        elif r < 0.7:
            s["minimum"] = lo
        elif r < 0.8:
            s["exclusiveMaximum"] = hi
        elif r < 0.85:
            s["minimum"], s["exclusiveMinimum"] = lo, lo + rng.choice([-1, 0, 1])

    def scalar(self):
        rng = self.rng
        t = rng.choice(["string", "string", "integer", "integer", "number", "number", "boolean", "null",
                        "enum", "const", "pattern", "format"])
        if t == "string":
            s = {"type": "string"}
            r = rng.random()
            if r < 0.3:
                s["minLength"] = rng.randint(0, 4)
            if rng.random() < 0.5:
                s["maxLength"] = s.get("minLength", 0) + rng.randint(0, 5)
            return s
        if t in ("integer", "number"):
            s = {"type": t}
            if rng.random() < 0.8:
                self.number_bounds(s, t == "integer")
            return s
        if t in ("boolean", "null"):
            return {"type": t}
        if t == "enum":
            vals = [rand_scalar(rng) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.2:
                vals.append({"k": rand_scalar(rng), "l": [1, 2]})
            if rng.random() < 0.1:
                vals.append([rand_scalar(rng), None])
            s = {"enum": vals}
            if rng.random() < 0.2:
                s["type"] = {str: "string", int: "integer", float: "number", type(None): "null",
                             bool: "boolean", dict: "object", list: "array"}[type(rng.choice(vals))]
            if rng.random() < 0.1:  # sibling constraints on enum
                s.update(rng.choice([{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 0}]))
            return s
        if t == "const":
            v = rand_scalar(rng) if rng.random() < 0.85 else {"n": rand_scalar(rng)}
            return {"const": v}
        if t == "pattern":
            branches = []
            for _ in range(1 if rng.random() < 0.8 else 2):
                ast = rand_re(rng)
                branches.append((ast, rng.random() < 0.7, rng.random() < 0.7))
            src = "|".join(("^" if a else "") + re_src(ast) + ("$" if e else "") for ast, a, e in branches)
            self.patterns[src] = branches
            return {"type": "string", "pattern": src}
        return {"type": "string", "format": rng.choice(["date", "date", "uuid", "ipv4"])}

    def schema(self, depth=0):
        rng = self.rng
        r = rng.random()
        if depth >= 3 or r < 0.4:
            if self.defs and rng.random() < 0.12:
                return {"$ref": "#/$defs/" + rng.choice(sorted(self.defs))}
            if rng.random() < 0.05:
                return rng.choice([{}, True])
            if rng.random() < 0.08:
                s = self.scalar()
                t = s.get("type")
                if isinstance(t, str) and "enum" not in s and "const" not in s and t != "null":
                    s["type"] = [t, "null"]
                return s
            return self.scalar()
        if r < 0.65:
            return self.object(depth)
        if r < 0.85:
            return self.array(depth)
        key = rng.choice(["anyOf", "anyOf", "oneOf"])
        return {key: [self.schema(depth + 1) for _ in range(rng.randint(2, 3))]}

    def object(self, depth):
        rng = self.rng
        names = rng.sample(NAMES, rng.randint(0, 4))
        s = {"type": "object", "properties": {n: self.schema(depth + 1) for n in names}}
        req = [n for n in names if rng.random() < 0.5]
        r = rng.random()
        if r < 0.35:
            s["additionalProperties"] = False
        elif r < 0.55:
            s["additionalProperties"] = True
        elif r < 0.75:
            s["additionalProperties"] = self.schema(depth + 1)
        if s.get("additionalProperties", False) is not False and rng.random() < 0.3:
            req.append(rng.choice(EXTRA_KEYS))
        if req:
            s["required"] = req
        return s

    def array(self, depth):
        rng = self.rng
        s = {"type": "array"}
        r = rng.random()
        if r < 0.6:
            s["items"] = self.schema(depth + 1)
        elif r < 0.85:
            s["prefixItems"] = [self.schema(depth + 1) for _ in range(rng.randint(1, 3))]
            x = rng.random()
            if x < 0.4:
                s["items"] = False
            elif x < 0.7:
                s["items"] = self.schema(depth + 1)
        if rng.random() < 0.4:
            s["minItems"] = rng.randint(0, 3)
        if rng.random() < 0.4:
            s["maxItems"] = s.get("minItems", 0) + rng.randint(0, 3)
        if s.get("items") is False and s.get("minItems", 0) > len(s["prefixItems"]):
            s["minItems"] = len(s["prefixItems"])
        return s

    def root(self):
        rng = self.rng
        self.defs = {}
        r = rng.random()
        if r < 0.03:  # unsupported keywords: must be refused, naming the keyword
            return dict(rng.choice(UNSUPPORTED))
        if r < 0.15:  # recursive definitions
            node = {"type": "object", "properties": {"v": self.scalar(), "kids": {
                "type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
                "required": ["v"], "additionalProperties": False}
            return {"$defs": {"node": node}, "$ref": "#/$defs/node"}
        if r < 0.2:  # a linked list through "#"
            return {"type": "object", "properties": {"v": self.scalar(), "next": {"$ref": "#"}},
                    "required": ["v"], "additionalProperties": False}
        if r < 0.35:
            self.defs = {f"d{i}": self.schema(1) for i in range(rng.randint(1, 2))}
            body = self.schema(0)
            if not isinstance(body, dict) or "$ref" in body:
                body = {"type": "array", "items": {"$ref": "#/$defs/d0"}}
            return {"$defs": dict(self.defs), **body}
        return self.schema(0)


# ---- values ----------------------------------------------------------------------

class Unsat(Exception):
    pass


class Values:
    """Valid values of a schema (dict keys in the grammar's order)."""

    def __init__(self, rng, root, patterns):
        self.rng, self.root, self.patterns = rng, root, patterns

    def resolve(self, ref):
        node = self.root
        for part in ref.lstrip("#").split("/")[1:]:
            node = node[part]
        return node

    def number(self, s, integer):
        rng = self.rng
        lo = max([x for x in (s.get("minimum"), s.get("exclusiveMinimum")) if x is not None], default=None)
        hi = min([x for x in (s.get("maximum"), s.get("exclusiveMaximum")) if x is not None], default=None)
        lo_ex = "exclusiveMinimum" in s and s["exclusiveMinimum"] == lo
        hi_ex = "exclusiveMaximum" in s and s["exclusiveMaximum"] == hi
        ok = lambda v: (lo is None or v > lo or (v == lo and not lo_ex)) and \
            (hi is None or v < hi or (v == hi and not hi_ex))
        a = lo if lo is not None else (hi - 100 if hi is not None else -1000)
        b = hi if hi is not None else a + 1000
        cands = []
        for edge in (lo, hi):
            if edge is not None:
                for d in (0, 1, -1, 0.5, -0.5, 0.25, -0.25):
                    cands.append(edge + d)
        for _ in range(20):
            cands.append(rng.uniform(a, b))
        rng.shuffle(cands)
        for v in cands:
            if integer or rng.random() < 0.4:
                v = round(v)
            else:
                v = round(v, rng.randint(1, 3))
            if abs(v) < 1e15 and ok(v):
                return int(v) if integer or float(v).is_integer() else v
        raise Unsat("no number")

    def string(self, s):
        rng = self.rng
        if "pattern" in s:
            parts = []
            ast, anchored_start, anchored_end = rng.choice(self.patterns[s["pattern"]])
            pre = "" if anchored_start else rand_text(rng, rng.randint(0, 2))
            post = "" if anchored_end else rand_text(rng, rng.randint(0, 2))
            parts = pre + re_sample(rng, ast) + post
            return parts
        if "format" in s:
            f = s["format"]
            if f == "date":
                y = rng.randint(1, 9999)
                m = rng.randint(1, 12)
                d = rng.choice([1, 9, 10, 28, 29, 30, 31])
                return f"{y:04d}-{m:02d}-{d:02d}"
            if f == "uuid":
                h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
                return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            if f == "ipv4":
                return ".".join(str(rng.choice([0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 255]))
                                for _ in range(4))
            return rng.choice(["a@b.cd", "john.doe@example.com", "x1@mail.server.org"])
        lo = s.get("minLength", 0)
        hi = s.get("maxLength", lo + 6)
        return rand_text(rng, rng.randint(lo, hi))

    def value(self, s, depth=0):
        rng = self.rng
        if depth > 12:
            raise Unsat("too deep")
        if s is True or s == {}:
            return rand_scalar(rng)
        if s is False:
            raise Unsat("false")
        if "$ref" in s:
            return self.value(self.resolve(s["$ref"]), depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in s:
                branches = list(s[key])
                rng.shuffle(branches)
                for b in branches:
                    try:
                        return self.value(b, depth + 1)
                    except Unsat:
                        pass
                raise Unsat("no branch")
        if "const" in s:
            return s["const"]
        if "enum" in s:
            return rng.choice(s["enum"])
        t = s.get("type")
        if isinstance(t, list):
            t = rng.choice(t)
        if t == "null":
            return None
        if t == "boolean":
            return rng.random() < 0.5
        if t in ("integer", "number"):
            return self.number(s, t == "integer")
        if t == "string":
            return self.string(s)
        if t == "array":
            prefix = s.get("prefixItems", [])
            items = s.get("items", True)
            lo = s.get("minItems", 0)
            hi = s.get("maxItems", max(lo, len(prefix)) + 2)
            if items is False:
                hi = min(hi, len(prefix))
            if depth > 6:
                hi = lo
            n = rng.randint(lo, hi)
            return [self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(n)]
        if t == "object":
            props = s.get("properties", {})
            req = s.get("required", [])
            addl = s.get("additionalProperties", False)
            out = {}
            for name, sub in props.items():
                if name in req or (depth <= 6 and rng.random() < 0.6):
                    out[name] = self.value(sub, depth + 1)
            for name in req:
                if name not in props:
                    out[name] = self.value(addl if isinstance(addl, dict) else True, depth + 1)
            if addl is not False and rng.random() < 0.4 and depth <= 6:
                for k in rng.sample(EXTRA_KEYS, rng.randint(1, 2)):
                    if k not in props and k not in out:
                        out[k] = self.value(addl if isinstance(addl, dict) else True, depth + 1)
            return out
        raise Unsat(f"type {t}")


# ---- mutations -------------------------------------------------------------------

def mutate_value(rng, v):
    """A random change somewhere inside v (a new value)."""
    if isinstance(v, dict) and v and rng.random() < 0.7:
        k = rng.choice(list(v))
        r = rng.random()
        out = dict(v)
        if r < 0.3:
            del out[k]
        elif r < 0.5:
            out[rng.choice(EXTRA_KEYS + NAMES)] = rand_scalar(rng)
        else:
            out[k] = mutate_value(rng, v[k])
        return out
    if isinstance(v, list) and v and rng.random() < 0.7:
        i = rng.randrange(len(v))
        r = rng.random()
        out = list(v)
        if r < 0.25:
            del out[i]
        elif r < 0.5:
            out.append(v[i])
        else:
            out[i] = mutate_value(rng, v[i])
        return out
    r = rng.random()
    if isinstance(v, bool) or v is None:
        return rand_scalar(rng) if r < 0.7 else [v]
    if isinstance(v, (int, float)):
        if r < 0.6:
            return v + rng.choice([1, -1, 0.5, -0.5, 0.25, 100, -100, 10 ** 6])
        if r < 0.75:
            return -v if v else 1
        if r < 0.85:
            return float(v) + 0.001
        return str(v)
    if isinstance(v, str):
        if r < 0.4:
            i = rng.randint(0, len(v))
            return v[:i] + rand_text(rng, rng.randint(1, 3)) + v[i:]
        if r < 0.6 and v:
            i = rng.randrange(len(v))
            return v[:i] + v[i + 1:]
        if r < 0.8 and v:
            i = rng.randrange(len(v))
            return v[:i] + rng.choice(CHARS) + v[i + 1:]
        return rng.choice([v + v, v.upper(), 5, None])
    return rand_scalar(rng)


BYTE_MUTATIONS = [
    lambda d, r: d.replace(b", ", b",", 1), lambda d, r: d.replace(b": ", b":", 1),
    lambda d, r: b" " + d, lambda d, r: d + b"\n", lambda d, r: d.replace(b"[", b"[ ", 1),
    lambda d, r: d.replace(b"{", b"{\n", 1), lambda d, r: d[:-1] if len(d) > 1 else d + b"}",
    lambda d, r: d + b"0", lambda d, r: d + b", 1",
    lambda d, r: d.replace(b"\"", b"\"\\x", 1), lambda d, r: d.replace(b"\"", b"\"\\ud83d", 1),
    lambda d, r: d.replace(b"\"", b"\"\\ud83d\\ude00", 1), lambda d, r: d.replace(b"\"", b"\"\\u00E9", 1),
    lambda d, r: d.replace(b"\"", b"\"\\u12", 1), lambda d, r: d.replace(b"\"", b"\"\xc3", 1),
    lambda d, r: d.replace(b"\"", b"\"\xed\xa0\x80", 1), lambda d, r: d.replace(b"\"", b"\"\xc0\xaf", 1),
    lambda d, r: d.replace(b"\"", b"\"\xff", 1), lambda d, r: d.replace(b"\"", b"\"\x01", 1),
    lambda d, r: d.replace(b"\"", b"\"\\/", 1), lambda d, r: d.replace(b"\"", b"\"\\u0041", 1),
    lambda d, r: d.replace(b"\xc3\xa9", b"\\u00e9", 1), lambda d, r: d.replace(b"0", b"00", 1),
    lambda d, r: d.replace(b"1", b"1.0", 1), lambda d, r: d.replace(b"1", b"1e0", 1),
    lambda d, r: d.replace(b"-", b"-0", 1), lambda d, r: d.replace(b"true", b"True", 1),
    lambda d, r: d.replace(b"null", b"NaN", 1),
]


# ---- the test ----------------------------------------------------------------------

def _run_driver(cases):
    """cases: [(schema_text, [doc bytes])] -> [(compile line, [verdicts])]."""
    buf = bytearray()
    for schema, docs in cases:
        buf += b"S %d\n%s\n" % (len(schema), schema)
        for d in docs:
            buf += b"D %d\n%s\n" % (len(d), d)
    r = subprocess.run([_driver()], input=bytes(buf), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    lines = r.stdout.decode().split("\n")
    out, i = [], 0
    for _, docs in cases:
        head = lines[i]
        verdicts = lines[i + 1:i + 1 + len(docs)]
        i += 1 + len(docs)
        out.append((head, verdicts))
    return out


def test_grammar_differential():
    rng = random.Random(SEED)
    cases, meta = [], []
    for _ in range(N_SCHEMAS):
        gen = Gen(rng)
        schema = gen.root()
        vals = Values(rng, schema, gen.patterns)
        valid = []
        for _ in range(40):
            if len(valid) >= 4:
                break
            try:
                valid.append(vals.value(schema))
            except Unsat:
                pass
        values = list(valid)
        for v in valid[:3]:
            for _ in range(3):
                values.append(mutate_value(rng, v))
        docs = []
        canon = Canon(schema, _Oracle(_adjust(schema), format_checker=_FORMATS))
        for v in values:
            t = canon.text(v, schema) or ser(v)
            if t is not None:
                docs.append(t.encode())
        for d in list(docs[:4]):
            docs.append(rng.choice(BYTE_MUTATIONS)(d, rng))
        docs = list(dict.fromkeys(docs))
        cases.append((json.dumps(schema, ensure_ascii=False).encode(), docs))
        meta.append((schema, canon))

    results = _run_driver(cases)
    n_schema = n_ok = n_docs = n_acc = n_rej = n_noncanon = n_oneof = 0
    refused, failures = [], []
    for (schema_text, docs), (schema, canon), (head, verdicts) in zip(cases, meta, results):
        n_schema += 1
        if schema in UNSUPPORTED:
            key = next(k for k in schema if k != "type")
            assert head.startswith("refused 5 ") and f"'{key}'" in head, (schema, head)
        if head != "ok":
            refused.append((schema_text.decode(), head))
            assert head.startswith("refused "), head
            continue
        n_ok += 1
        strict = _Oracle(_adjust(schema, one_of_as_any=False), format_checker=_FORMATS)
        for doc, verdict in zip(docs, verdicts):
            n_docs += 1
            accepted = verdict == "1"
            n_acc += accepted
            n_rej += not accepted
            try:
                value = _parse(doc)
            except _NotJSON:
                if accepted:
                    failures.append(("accepted non-JSON", schema_text, doc))
                continue
            ok = canon.oracle.is_valid(value)
            if accepted and not ok:
                errs = "; ".join(e.message for e in canon.oracle.iter_errors(value))[:300]
                failures.append(("UNSOUND: accepted an invalid document", schema_text, doc, errs))
                continue
            if accepted and not strict.is_valid(value):
                n_oneof += 1  # documented: oneOf exclusivity is not enforced
            if ok and not accepted:
                c = canon.text(value, schema)
                if c is not None and c.encode(errors="surrogatepass") == doc:
                    failures.append(("INCOMPLETE: rejected a valid canonical document", schema_text, doc))
                else:
                    n_noncanon += 1
    print(f"\ngrammar differential: seed {SEED}, schemas {n_schema}, compiled {n_ok}, refused {len(refused)}, "
          f"documents {n_docs}, accepted {n_acc}, rejected {n_rej} "
          f"(valid but not canonical layout {n_noncanon}, oneOf-overlap accepted {n_oneof})")
    for s, why in refused:
        print(f"  refused: {why}  <- {s[:160]}")
    failures.sort(key=lambda f: (not f[0].startswith("UNSOUND"), len(f[1]) + len(f[2])))
    msg = "\n".join(" | ".join(x.decode(errors="backslashreplace") if isinstance(x, bytes) else str(x)
                               for x in f) for f in failures[:25])
    kinds = {k: sum(f[0] == k for f in failures) for k in {f[0] for f in failures}}
    assert not failures, f"{len(failures)} disagreements {kinds} (shortest first):\n{msg}"
    assert n_ok >= 0.85 * n_schema, f"only {n_ok}/{n_schema} schemas compiled"
    assert n_acc >= 0.3 * n_docs and n_rej >= 0.2 * n_docs, (n_acc, n_rej, n_docs)
