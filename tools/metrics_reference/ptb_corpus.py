#!/usr/bin/env python3
"""Differential corpus for mmloop-metrics' PTB tokenizer (ptb.rs).

Generates a few thousand tricky captions (punctuation, quotes, brackets, hyphens, clitics,
numbers, currency, unicode, URLs, e-mails, abbreviations, ellipses, fractions, ...), runs
them through pycocoevalcap 1.2's PTBTokenizer (the Stanford CoreNLP 3.4.1 jar on Java,
plus its punctuation filter), and writes (input, expected) pairs.

Usage: python3 tools/metrics_reference/ptb_corpus.py
Writes tests/fixtures/metrics/ptb_tokens.jsonl (one caption per line, each its own image)
and tests/fixtures/metrics/ptb_batches.json (batches whose captions hold line breaks that
Java sees but Python does not replace, which shift the tokenizer's output lines).
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _venv  # noqa: E402

_venv.ensure()

from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402

SEED = 20240601
N_RANDOM = 3200

REAL = [
    "A man riding a horse on a beach.",
    "Two dogs playing with a red ball in the grass",
    "a plate of food with broccoli and rice",
    "A woman is holding an umbrella in the rain.",
    "A cat sitting on top of a wooden table next to a laptop.",
    "The kitchen has white cabinets, a stove, and a refrigerator.",
    "There's a bus parked at the side of the road.",
    "A young boy doesn't want to eat his vegetables.",
    "A group of people standing around a table with food on it .",
    "An old, rusty fire hydrant on a city sidewalk",
    "A black-and-white photo of a train at a station.",
    "Someone's hand holding a smartphone (an iPhone) over a desk.",
    "A giraffe standing next to a tree in a zoo enclosure",
    "A close up of a pizza with pepperoni & mushrooms",
    "A 3-year-old girl blowing out candles on a birthday cake.",
    "People waiting at a crosswalk at 5:30 p.m. in New York.",
    "a sign that says \"STOP\" at an intersection",
    "The man's shirt reads 'I <3 NY'.",
    "A skateboarder does a trick -- mid-air -- over a rail.",
    "Two zebras grazing in a field...",
    "A TV, a couch and a coffee table in a living room.",
    "A plane flying over the U.S. Capitol building.",
    "Dr. Smith's office has a large window.",
    "A surfer rides a 10-ft wave at Waimea Bay!",
    "Is that a dog or a wolf?",
    "a bowl of soup; some bread; a glass of water",
    "A bike leaning against a wall: red, old, and rusty.",
    "A laptop computer sitting on top of a desk\n",
    "  A  man   with   extra   spaces  ",
    "A MAN WEARING A HAT AND SUNGLASSES",
    "a tennis player swinging a racket at a ball",
    "Children playing soccer on a field (youth league)",
    "A street sign for 1st Ave. and E. 42nd St.",
    "A menu listing $4.99 burgers and $2 fries.",
    "The clock shows 10:45 on a rainy day",
    "A baby elephant with its mother, walking",
    "A café with outdoor seating in Paris",
    "A man in a t-shirt & jeans on a Segway",
    "Pizza with ½ cheese and ½ pepperoni",
    "A red double-decker bus in London, U.K.",
    "A woman's hand holding a hot dog w/ mustard",
    "An airplane (Boeing 747) on the runway",
    "a kite flying high in the blue sky",
    "A herd of sheep on a hillside -- very green",
    "The dog is wearing a Santa hat :)",
    "A desk with two monitors, a keyboard, etc.",
    "It's a sunny day at the beach!!!",
    "A sandwich cut in half on a white plate.",
    "\"A cat,\" he said, \"sits on the mat.\"",
    "Several people are skiing down a snow-covered slope",
    "Man on a motorcycle w/ a dog",
    "A woman talks on her cell phone @ the airport",
    "A flower vase – yellow tulips – on a windowsill",
    "A toilet in a small bathroom next to a sink…",
    "“A train on the tracks”",
    "A bear (grizzly?) in the woods",
    "The No. 7 train arrives at Times Sq.",
    "A stop sign at the corner of Main St. & 3rd Ave.",
    "a boy and his dad flying a kite; they're happy",
    "",
    ".",
    "...",
    "?!",
    "-",
    "''",
]

WORDS = (
    "a an the man woman dog cat boy girl people group street table plate pizza bus train "
    "sitting standing riding holding on in of with next to near top large small red white black "
    "green blue two three several some field water kitchen room city sign road snow beach sky "
    "is are was playing eating looking walking his her their its this that there front side"
).split()

FRAGMENTS = [
    # clitics and apostrophes
    "it's", "don't", "can't", "won't", "isn't", "I'm", "we'll", "they've", "he'd", "she'll",
    "ain't", "cannot", "Cannot", "CANNOT", "CAN'T", "Don'T", "isn’t", "it’s", "dog's", "dogs'",
    "James'", "'hello", "goin'", "'em", "ol'", "y'know", "y'all", "c'mon", "l'eau", "d'or",
    "O'Neil", "o'clock", "'twas", "'tis", "'90s", "'n'", "rock'n'roll", "nor'easter", "cont'd",
    "gonna", "gotta", "wanna", "lemme", "gimme", "shouldn't've", "y’all", "‘til", "'til",
    "Dunkin'", "somethin'", "e'er", "li'l", "Cap'n", "d'ye", "'cause", "''", "'", "`", "``",
    # quotes
    "\"", "\"hi\"", "'hi'", "‘a’", "“b”", "«x»", "„y“", "‹z›", "&quot;", "&apos;", "\"STOP\"",
    # brackets
    "(", ")", "[", "]", "{", "}", "<", ">", "(x)", "[y]", "{z}", "<b>", "</b>", "<br/>", "<3",
    "-LRB-", "-RRB-", "(a.k.a.", ":-)", ";)", ":(", "<<", ">>",
    # hyphens and dashes
    "co-ed", "e-mail", "x-ray", "T-shirt", "well-known", "3-year-old", "-", "--", "---", "----",
    "—", "–", "‐", "‑", "a—b", "x--y", "pro-life", "anti-war", "mid-air", "non-U.S.", "5-7",
    "-5", "+3", "10-15", "self-", "-ish", "_", "__init__", "a_b", "snake_case", "x_",
    # numbers
    "3.5", "1,000", "1,000,000", "10:30", "3:30pm", "9am", "5km", "5.5km", "1st", "2nd", "3rd",
    "42nd", "50%", "0.5", ".5", "5.", "10.5.3", "2014-01-02", "1/2/2014", "12/25/99", "1/2",
    "3/4", "5 7/8", "1 1/2", "1\\/2", "½", "⅓", "¼", "¾", "⅔", "⅛", "²", "³", "¹", "x²", "10⁶",
    "₂", "H₂O", "007", "1984", "+1", "555-123-4567", "(02) 1234 5678", "+44 20 7946 0958",
    "192.168.0.1", "٣", "١٢٣", "٫", "1.", "No.", "#1", "24/7", "1:1", "3x4", "4x4", "v2.0",
    # currency
    "$5", "$5.00", "$", "US$5", "US$", "A$5", "€5", "€", "£3", "£", "¥100", "¢", "5¢", "₹50",
    "฿", "₩", "¤", "#", "##",
    # punctuation
    ".", ",", ";", ":", "!", "?", "?!", "!!!", "??", "...", "..", "....", ".....", "......",
    ". . .", "…", "x...y", "¿", "¡", "¿qué?", "¡hola!", "a;b", "a:b", "a,b", "/", "\\", "|",
    "*", "**", "***", "\\*", "x*y", "&", "&amp;", "&lt;", "&gt;", "&mdash;", "&nbsp;", "&#39;",
    "=", "==", "+", "%", "~", "^", "@", "@@", "§", "¶", "•", "·", "†", "‰", "°", "±", "×", "÷",
    "™", "®", "©", "→", "←", "≥", "∞", "√", "♥", "★", "✓", "、", "。", "，",
    # abbreviations and acronyms
    "Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Ave.", "vs.", "etc.", "e.g.", "i.e.", "U.S.", "U.S.A.",
    "U.K.", "N.Y.", "a.m.", "p.m.", "Jan.", "Feb.", "Sept.", "Inc.", "Co.", "Corp.", "Ltd.",
    "Jr.", "Sr.", "Prof.", "Gen.", "Calif.", "Mass.", "No.", "approx.", "Mt.", "ft.", "oz.",
    "A.", "x.", "U.S", "C.D.s", "AT&T", "S&P", "S&P-500", "R&D", "Q&A", "S&Ls", "Ph.D.",
    # URLs, e-mails, handles
    "http://www.example.com/a/b?x=1", "https://x.y/z", "www.google.com", "WWW.GOOGLE.COM",
    "google.com", "foo.bar.org/path", "example.net.", "me@example.com", "john.doe@mail.co.uk",
    "x@y", "#hashtag", "@user", "@User_1", "#Tbt", "ftp://a.b/c", "http://a.com/(x)",
    # unicode letters and marks
    "naïve", "café", "Ελλάδα", "東京", "русский", "ΟΔΟΣ", "İstanbul", "straße", "STRASSE",
    "ǅemal", "ﬁne", "Ångström", "e\u0301", "ñ", "Ñandú", "ça", "ø", "ŀ", "ĳ", "Æsop", "œuvre",
    "مرحبا", "שלום", "नमस्ते", "한국", "ไทย", "ｆｕｌｌ", "ＡＢＣ", "１２３", "Ⅻ", "ⅷ",
    # emoji and symbols outside the BMP
    "😀", "🙂x", "👍🏽", "🇺🇸", "𝔘𝔫𝔦", "🍕", "❤️",
    # odd whitespace and controls
    "a\tb", "a\u00a0b", "a\u2009b", "a\u3000b", "a\u200bb", "a\ufeffb", "a\u00adb",
    "a\x7fb", "a\x00b", "a\x01b", "a\x1cb", "a\x85b", "a\u200eb", "a\nb",
    # emoticons, dotted words, abbreviations in context, odd leftovers
    ":)", ":-)", ";)", ":(", ":-(", ":D", ":P", "=)", ":]", ":[", ":'(", "^_^", "(^_^)", "x_x",
    "-_-", "(x.x)", "<3", "Sr.", "Calif.", "Bldg.", "fig.", "pp.", "ca.", "No. 5", "No.5",
    "Dept.", "Rd.", "Az.", "Rt.", "Ft.", "e.g.x", "hola!this", "ab?cd", "U.S.gotta", "#Tbt1",
    "x_'", "a@b.c,", "C++", "F#", "C#", "0x7f", "\u00ad", "’twas", "gonnabe", "cannotx",
    "'tisn't", "dunno", "I. In", "A. The", "U.S. The", "etc. The", "Inc. the", "a.m. The",
]

JOINERS = [" "] * 12 + [""] * 4 + ["  ", "\t", "\u00a0"]


def random_caption(rng):
    n = rng.randint(1, 14)
    parts = []
    for _ in range(n):
        if rng.random() < 0.45:
            w = rng.choice(WORDS)
            r = rng.random()
            if r < 0.1:
                w = w.capitalize()
            elif r < 0.13:
                w = w.upper()
            parts.append(w)
        else:
            parts.append(rng.choice(FRAGMENTS))
    out = parts[0]
    for p in parts[1:]:
        out += rng.choice(JOINERS) + p
    if rng.random() < 0.3:
        out += rng.choice([".", "!", "?", " .", "...", "…", "\"", "'", ")", ".\"", "'.", ". "])
    if rng.random() < 0.1:
        out = rng.choice([" ", "  ", "\t", "\"", "'", "(", "``"]) + out
    return out


def very_long(rng):
    return " ".join(random_caption(rng) for _ in range(40))


# Characters that CoreNLP treats as line breaks but pycocoevalcap does not replace.
BREAKS = ["\r", "\r\n", "\u2028", "\u2029", "\x0b", "\x0c"]


def tokenize(captions):
    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [out[i][0] if i in out else None for i in range(len(captions))]


def main():
    # `--seed N --n N --out PATH` writes a throwaway corpus to check the tokenizer on
    # captions it was not tuned on (see crates/mmloop-metrics/tests/ptb_parity.rs).
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    if "--out" in args:
        rng = random.Random(int(args.get("--seed", "1")))
        caps = [random_caption(rng) for _ in range(int(args.get("--n", "5000")))]
        for b in BREAKS:
            caps = [c.replace(b, " ") for c in caps]
        with open(args["--out"], "w") as f:
            f.write(json.dumps({"reference": _venv.versions()}) + "\n")
            for c, e in zip(caps, tokenize(caps)):
                f.write(json.dumps({"in": c, "out": e}, ensure_ascii=False) + "\n")
        return
    rng = random.Random(SEED)
    cases = list(REAL)
    cases += [f for f in FRAGMENTS]
    cases += [random_caption(rng) for _ in range(N_RANDOM)]
    cases += [very_long(rng) for _ in range(5)]
    # Line breaks other than "\n" would shift every later line; they get their own batches.
    for b in BREAKS:
        cases = [c.replace(b, " ") for c in cases]
    seen, uniq = set(), []
    for c in cases:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    expected = tokenize(uniq)
    root = os.path.join(_venv.ROOT, "tests", "fixtures", "metrics")
    with open(os.path.join(root, "ptb_tokens.jsonl"), "w") as f:
        f.write(json.dumps({"reference": _venv.versions(), "tokenizer": "pycocoevalcap 1.2 PTBTokenizer (stanford-corenlp-3.4.1.jar -preserveLines -lowerCase) + PUNCTUATIONS filter"}, ensure_ascii=False) + "\n")
        for c, e in zip(uniq, expected):
            f.write(json.dumps({"in": c, "out": e}, ensure_ascii=False) + "\n")

    batches = []
    for b in BREAKS:
        caps = [f"first caption{b}with a break", "second caption", "", "third one."]
        batches.append(caps)
    batches.append(["ends with a break" + BREAKS[0], "next", "last"])
    batches.append(["a", "b\u2028c\u2029d", "e", "f", "g"])
    batches.append(["only one\x0b"])
    with open(os.path.join(root, "ptb_batches.json"), "w") as f:
        json.dump([{"captions": caps, "tokenized": tokenize(caps)} for caps in batches], f, ensure_ascii=False, indent=0)
        f.write("\n")
    print("wrote", len(uniq), "cases and", len(batches), "batches")


if __name__ == "__main__":
    main()
