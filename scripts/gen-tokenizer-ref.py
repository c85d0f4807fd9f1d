#!/usr/bin/env python3
"""Generate tokenizer reference data from llama.cpp (llama-cpp-python).

Writes, for the SmolLM2 vocabulary with three pre-tokenizers:
  tests/data/tokenizer_ref.tsv        (pre "smollm", the model's own)
  tests/data/tokenizer_ref_gpt2.tsv   (same vocab, pre "gpt-2")
  tests/data/tokenizer_ref_qwen2.tsv  (same vocab, pre "qwen2")
One case per line:  hex(input bytes) TAB parse_special(0/1) TAB ids [TAB fffd]
ids are space separated (empty for empty input).

A trailing "fffd" column marks input that is not valid UTF-8.  llama.cpp
turns every invalid byte into U+FFFD before BPE (and decodes overlongs and
surrogates leniently, and aborts on code points above U+10FFFF), so it is
not asked about the raw bytes: the ids are llama.cpp's for the input with
each byte that starts no strictly valid sequence replaced by EF BF BD.  The
C test applies the same replacement before comparing, and checks the raw
input by round trip.

The strings are generated deterministically (seeded PRNG).  Usage:
  python3 scripts/gen-tokenizer-ref.py [model.gguf]
"""
import os
import random
import sys
import tempfile

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT_DIR = "tests/data"


# ---- strict UTF-8 (Unicode table 3-7), one invalid byte at a time ---------
def valid_seq_len(b, i):
    c = b[i]
    if c < 0x80:
        return 1
    if 0xC2 <= c <= 0xDF:
        n, lo, hi = 2, 0x80, 0xBF
    elif 0xE0 <= c <= 0xEF:
        n = 3
        lo, hi = (0xA0, 0xBF) if c == 0xE0 else (0x80, 0x9F) if c == 0xED else (0x80, 0xBF)
    elif 0xF0 <= c <= 0xF4:
        n = 4
        lo, hi = (0x90, 0xBF) if c == 0xF0 else (0x80, 0x8F) if c == 0xF4 else (0x80, 0xBF)
    else:
        return 0
    if i + n > len(b) or not (lo <= b[i + 1] <= hi):
        return 0
    for k in range(2, n):
        if b[i + k] & 0xC0 != 0x80:
            return 0
    return n


def replace_invalid(b):
    out, i, bad = bytearray(), 0, False
    while i < len(b):
        n = valid_seq_len(b, i)
        if n == 0:
            out += b"\xef\xbf\xbd"
            bad = True
            i += 1
        else:
            out += b[i:i + n]
            i += n
    return bytes(out), bad


# ---- test strings ------------------------------------------------------------
WORDS = ("the of and to in is was that for it with as his on be at by had are but from or "
         "have an they which one you were her all she there would their we him been has when "
         "who will more no if out so said what up its about into than them can only other new "
         "some could time these two may then do first any my now such like our over man me even "
         "most made after also did many before must through back years where much your way well "
         "down should because each just those people Mr how too little state good very make world "
         "still own see men work long get here between both life being under never day same "
         "another know while last might us great old year off come since against go came right "
         "used take three").split()

CODE = [
    "int main(void) {\n    printf(\"hello, %s\\n\", argv[1]);\n    return 0;\n}\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (let i = 0; i < arr.length; i++) { sum += arr[i] * 2; }",
    "fn main() -> Result<(), Box<dyn Error>> {\n\tlet x: Vec<u8> = vec![1, 2, 3];\n\tOk(())\n}",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
    "<div class=\"main\"><p>Hello&nbsp;world</p></div>",
    "{\"calls\":[{\"id\":\"c1\",\"to\":\"search\",\"args\":{\"q\":\"weather\"}}]}",
    "    if x == None:\n\t\tpass\r\n    else:\r\n        x += 1",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "$ ls -la | grep '^d' && echo \"done\" >> log.txt 2>&1",
    "public static void main(String[] args) throws IOException { System.out.println(args.length); }",
    "x = [i**2 for i in range(10) if i % 3 != 0]  # squares",
    "@media (max-width: 600px) { .nav { display: none !important; } }",
    "let f = |a: i32, b: i32| -> i32 { a.wrapping_mul(b) >> 3 };",
]

UNI = [
    "日本語のテキストです。東京は晴れ。", "中文分词测试，今天天气很好！", "한국어 문장도 있습니다.",
    "Привет, мир! Как дела?", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
    "สวัสดีชาวโลก", "café naïve résumé façade coöperate", "Ångström Øresund Ærø straße ß",
    "e\u0301 a\u0300 o\u0308 n\u0303 (combining)", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319algo",
    "😀😃😄 👍🏽 ❤️ 🇯🇵 🇺🇸", "👨\u200d👩\u200d👧\u200d👦 family, 🏳️\u200d🌈 flag, 👩🏾\u200d💻 coder",
    "math: ∑ ∫ √ ∞ ≠ ≤ ≥ ± × ÷ π", "fullwidth：ＡＢＣ１２３", "roman Ⅻ ⅷ, fractions ½ ¾ ⅞, superscript x² y³",
    "Arabic-Indic ٠١٢٣٤٥٦٧٨٩ and Devanagari ०१२३", "nbsp\u00a0here, em\u2003space, ideographic\u3000space",
    "zero\u200bwidth\u200cjoiner\u200d", "\u2028line sep\u2029para sep\u0085nel", "tab\there\x0bvt\x0cff",
    "Mixed: English日本語Русский123한국어", "\ufeffBOM at start", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝟘𝟙𝟚",
    "ꙮ ᚠᛇᚻ ᓄᓇᕗᑦ ⴰⵣⵓⵍ", "\U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1", "\u0000nul\u0001soh\u007fdel",
]

WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\t\t", " \t ", "\r\n\r\n",
      "\n\n\n", "    ", "\u00a0", "\u3000", " \u00a0 "]

CONTRACTIONS = ["don't", "I'm", "you're", "we've", "she'll", "he'd", "it's", "DON'T", "I'M", "YOU'RE",
                "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''", "'", "can't've", "o'clock",
                "rock'n'roll", "'S", "'Ll", "x'", "'\n"]

SPECIAL_TEXT = [
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|endoftext|>", "<|im_end|><|im_end|>", "x<|im_start|>y", "<|im_start|", "<|im_start|>>",
    "<<|im_end|>", "<repo_name>paraserve<file_sep>main.c", "<jupyter_code>print(1)<jupyter_output>1",
    " <|im_start|> ", "<|im_start|>\n\n", "text with <|fake|> token", "<|im_end|>\n<|endoftext|>",
]

INVALID = [b"\x80", b"\xbf", b"a\x80b", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(", b"\xf0\x9f\x98",
           b"\xf0\x9f", b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
           b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"hello\xffworld",
           b"\xc3\xa9\x80", b"abc\xe6\x97", b"\xe6\x97abc", b" \x80 ", b"12\x803", b"\x80\x80\x80",
           b"\xc2\xc2\xa9", b"don\x92t", b"caf\xe9", b"\xf0\x28\x8c\x28", b"\x80\n\x80"]


def gen_strings():
    rng = random.Random(20240517)
    out = []

    def add(s):
        out.append(s.encode("utf-8") if isinstance(s, str) else s)

    add("")
    for w in ["a", "A", " ", "hello", " hello", "Hello world", "hello  world", "hello\nworld",
              "1", "12", "123", "1234567890", "3.14159", "-42", "1,000,000", "v1.2.3", "2024-05-17",
              "0x1F", "1e-9", "$100", "50%", "#1", "a1b2c3", " 1", "  1", "1 ", "x  ", "  x"]:
        add(w)
    for s in CODE + UNI + CONTRACTIONS:
        add(s)
    for a in WS:
        for b in WS[:8]:
            add("word" + a + "next" + b)
            add(a + b)
    # prose
    for _ in range(250):
        n = rng.randint(1, 40)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        s = ""
        for w in words:
            s += w + rng.choice([" ", " ", " ", " ", ", ", ". ", "  ", "\n", "! ", "? ", "; ", " - "])
        if rng.random() < 0.3:
            s = s.rstrip()
        add(s)
    # numbers
    for _ in range(80):
        k = rng.randint(1, 20)
        add(rng.choice(["", "x", " ", "pi=", "n "]) + "".join(rng.choice("0123456789") for _ in range(k))
            + rng.choice(["", ".", " apples", "\n", "%", "th"]))
    # code mixes
    for _ in range(80):
        a = rng.choice(CODE)
        i, j = sorted(rng.sample(range(len(a) + 1), 2))
        add(a[i:j])
    # whitespace runs
    for _ in range(80):
        s = "".join(rng.choice(WS + ["a", "b", "1", ".", "x y"]) for _ in range(rng.randint(1, 12)))
        add(s)
    # unicode mixes
    for _ in range(120):
        parts = [rng.choice(UNI + WORDS + CONTRACTIONS + WS) for _ in range(rng.randint(1, 6))]
        add(rng.choice(["", " "]).join(parts))
    # random code points from assorted blocks
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0x1F00, 0x1FFF), (0x2000, 0x206F), (0x2100, 0x22FF), (0x3000, 0x30FF), (0x4E00, 0x4FFF),
              (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x10000, 0x1007F),
              (0x1D400, 0x1D7FF), (0x20000, 0x200FF), (0xE000, 0xE0FF)]
    for _ in range(150):
        s = ""
        for _ in range(rng.randint(1, 16)):
            lo, hi = rng.choice(blocks)
            cp = rng.randint(lo, hi)
            if 0xD800 <= cp <= 0xDFFF:
                continue
            s += chr(cp)
        add(s)
    # invalid UTF-8
    for b in INVALID:
        add(b)
    for _ in range(60):
        s = bytearray(rng.choice(UNI + CODE).encode("utf-8"))
        for _ in range(rng.randint(1, 3)):
            if len(s) == 0:
                break
            i = rng.randrange(len(s))
            op = rng.random()
            if op < 0.4:
                del s[i]
            elif op < 0.7:
                s[i] = rng.randrange(256)
            else:
                s[i:i] = bytes([rng.choice([0x80, 0xBF, 0xC0, 0xC1, 0xE0, 0xF0, 0xF5, 0xFF])])
        add(bytes(s))
    # random bytes
    for _ in range(60):
        add(bytes(rng.randrange(256) for _ in range(rng.randint(1, 24))))
    # special-looking text, tokenized as text
    for s in SPECIAL_TEXT:
        add(s)
    return out


def make_variant(model, pre):
    """Vocab-only GGUF: the model's metadata with tokenizer.ggml.pre replaced."""
    import gguf
    r = gguf.GGUFReader(model)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    path = os.path.join(tempfile.gettempdir(), "tokref-%s-%d.gguf" % (pre, os.getpid()))
    w = gguf.GGUFWriter(path, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = f.types[0]
        if key == "tokenizer.ggml.pre":
            w.add_string(key, pre)
        elif vt == gguf.GGUFValueType.ARRAY:
            et = f.types[1]
            if et == gguf.GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]
            else:
                vals = [f.parts[i].tolist()[0] for i in f.data]
            w.add_array(key, vals)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(key, bytes(f.parts[f.data[0]]).decode("utf-8"))
        else:
            w.add_key_value(key, f.parts[f.data[0]].tolist()[0], vt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_ref(model_path, path, strings):
    from llama_cpp import Llama
    m = Llama(model_path=model_path, vocab_only=True, verbose=False)
    n_bad = 0
    with open(path, "w") as f:
        for special in (0, 1):
            cases = strings if special == 0 else [s.encode() for s in SPECIAL_TEXT] + strings[:50]
            for s in cases:
                fixed, bad = replace_invalid(s)
                n_bad += bad
                ids = m.tokenize(fixed, add_bos=False, special=bool(special)) if fixed else []
                f.write("%s\t%d\t%s%s\n" % (s.hex(), special, " ".join(map(str, ids)),
                                            "\tfffd" if bad else ""))
    print("%s: %d cases (%d not valid UTF-8)" % (path, sum(1 for _ in open(path)), n_bad))


def main():
    strings = gen_strings()
    write_ref(MODEL, os.path.join(OUT_DIR, "tokenizer_ref.tsv"), strings)
    # llama.cpp spells the GPT-2 pre-tokenizer "gpt-2"
    for pre, name in (("gpt-2", "gpt2"), ("qwen2", "qwen2")):
        p = make_variant(MODEL, pre)
        try:
            write_ref(p, os.path.join(OUT_DIR, "tokenizer_ref_%s.tsv" % name), strings)
        finally:
            os.unlink(p)


if __name__ == "__main__":
    main()
