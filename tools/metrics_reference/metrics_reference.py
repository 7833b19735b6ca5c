"""Reference outputs for mmloop-metrics' non-caption metrics (tests/fixtures/metrics/).

Every expected number in the fixtures is computed by the reference implementation
itself, loaded unchanged; only the inputs are made here (deterministically, from a fixed
seed and hand-written hard cases). Run it through metrics_reference.sh, which builds tools/.venv-metrics-vqa.

Where each reference comes from:
- VQA official: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py at
  master a013f0043c1e2cdc995922dfe257f7149aa9af06, read from --vqa-repo. It is Python 2;
  the only edit made in memory is turning its two `print "..."` statements into calls, as
  needed to run it under the pinned CPython 3.11. Its `vqa.py` is not used: the VQAEval
  class only needs `.qa` dicts and `getQuesIds()`, given here by a small stand-in.
  `setEvalQA` is wrapped to also record the unrounded accuracy it receives.
- VQA lmms-eval: lmms-eval 0.7.3 from PyPI; `vqav2_process_results`,
  `textvqa_process_results` and the `mean` aggregation, loaded from the installed files.
- VQA VLMEvalKit: ms-vlmeval 0.0.20 from PyPI (VLMEvalKit packaged for EvalScope);
  `process_line`, `hit_calculate`, `process_punctuation` and helpers, loaded from the
  installed files; `Overall = np.mean(hit) * 100` as in ImageVQADataset.evaluate_heuristic.
- SQuAD EM/F1: the official evaluate-v1.1.py, read from --squad-script.
- ANLS: lmms-eval 0.7.3 `anls` (a copy of the DocVQA/InfographicVQA official
  evaluate_method's per-question code); the corpus is `totalScore += q; totalScore / N`
  as in evaluate_method.
- Multiple choice: ms-vlmeval 0.0.20 `can_infer`, `eval_vanilla`, `mcq_circular_eval`
  (with model=None, i.e. no LLM judge) and `report_acc`.
- MME: the official calculation.py (MME eval_tool), read from --mme-calculation; its
  printed scores are parsed (Python prints floats with repr, so they round-trip).
- Krippendorff's alpha: krippendorff 0.9.0 from PyPI.
- Calibration: scikit-learn 1.9.1 `calibration_curve` (binning) and
  `brier_score_loss`; ECE = np.sum(count/N * |prob_true - prob_pred|) over its bins.
- Paired bootstrap: no external reference exists for our documented procedure; this
  script implements the documentation in Python (SplitMix64, Lemire, numpy percentile)
  so that the Rust code is checked against the written definition.

How the committed fixtures were produced: metrics_reference.sh with CPython 3.11.7 and the
pinned PyPI packages. The VQA repository, evaluate-v1.1.py and MME calculation.py were not
at hand as checkouts, so each was read verbatim (length-checked) from a public code index
into a scratch directory outside this repository and passed with the three flags:
vqaEval.py at GT-Vision-Lab/VQA a013f0043c1e2cdc995922dfe257f7149aa9af06; an unmodified
copy of the official SQuAD v1.1 evaluate-v1.1.py (as vendored in seominjoon/denspi); MME
calculation.py as vendored in RBDash-Team/RBDash (playground/data/eval/MME/eval_tool). The
fixtures' `environment.non_pypi_sources` says the same. Anyone with those files can rerun
the script and must get identical fixtures.

Only functions are pulled out of the installed lmms-eval and ms-vlmeval files (with
`ast`), because importing those packages pulls in model and dataset stacks.
"""

import argparse
import ast
import contextlib
import importlib.metadata as md
import io
import json
import os
import pickle
import platform
import random
import re
import statistics
import string
import sys
import tempfile

import numpy as np


def pkg_file(dist, rel):
    path = md.distribution(dist).locate_file(rel)
    if not os.path.exists(path):
        sys.exit(f"{dist}: {rel} not found; rerun metrics_reference.sh to reinstall it")
    return str(path)


def load_functions(path, names, namespace):
    """Executes only the named top-level defs of a file in `namespace`, bodies unchanged.

    Registry decorators (lmms-eval's `@register_metric`) are dropped: they only file the
    function in a registry that is not loaded here.
    """
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    for n in body:
        n.decorator_list = []
    missing = set(names) - {n.name for n in body}
    if missing:
        sys.exit(f"{path}: missing {sorted(missing)}")
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace


def versions():
    out = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "note": "CPython <= 3.11 sums floats left to right (3.12+ compensates); Python 3 round() ties to even",
    }
    for d in ["numpy", "scikit-learn", "pandas", "krippendorff", "lmms-eval", "ms-vlmeval"]:
        out[d] = md.version(d)
    return out


def write(out_dir, name, data):
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ---------------------------------------------------------------- inputs

# Surface forms that real annotators and models produce for the same answer.
GROUPS = [
    ["yes", "Yes", "YES", "yes.", "Yes!", "yes ", "yes?", "yeah", "yes, it is", "Yes it is"],
    ["no", "No", "NO", "no.", "No!", "nope", "no, it isn't", "not", "none", "No."],
    ["2", "two", "Two", "2.", "2.0", "two.", "TWO", "2 ", " 2", "\uff12"],
    ["1,000", "1000", "1, 000", "one thousand", "1.000", "1,000.", "1000s", "10,000 feet", "1,000 t-shirts"],
    ["dog", "a dog", "the dog", "Dog", "dogs", "the dogs", "dog.", "a dog's", "an dog", "DOG!"],
    ["don't know", "dont know", "Dont know", "do not know", "dont", "don't", "I don't know", "idk"],
    ["t-shirt", "t shirt", "tshirt", "T-Shirt", "t-shirts", "tee shirt", "T - shirt", "t -shirt"],
    ["red/blue", "red / blue", "red and blue", "blue/red", "red, blue", "red,blue", "red-blue", "Red/Blue"],
    ["u.s.a.", "U.S.A", "usa", "USA", "u.s.a", "U. S. A.", "united states", "us"],
    ["5:30", "5.30", "530", "5:30 pm", "5 30", "half past five", "5.", "5.5", "5.."],
    ["caf\u00e9", "CAF\u00c9", "cafe", "Caf\u00e9.", "caf\u00e9 ", "the caf\u00e9", "cafe\u0301"],
    ["\u6771\u4eac", "\u6771\u4eac\u3002", "tokyo", "Tokyo", "\u6771\u4eac "],
    ["stra\u00dfe", "STRASSE", "strasse", "Stra\u00dfe", "\ufb01ne", "fine"],
    ["\u03a3\u0391\u03a3", "\u03c3\u03b1\u03c2", "\u03a3\u03b1\u03c2", "\u039f\u0394\u039f\u03a3 \u03a3"],
    ["\u0130stanbul", "istanbul", "Istanbul", "ISTANBUL"],
    ["\u0661\u0662\u0663", "123", "1,2,3", "1,,2", "1 2 3", "\u0661,\u0662", "\u0661.\u0662", "\uff11,\uff12"],
    ["3.14", "3.14.", "pi", "3,14", "3 .14", ".5", "0.5", "\u00bd", "\u00b2"],
    ["hello...", "hello", "...", "hello.", "Hello!!", "hello?!", "hello . . ."],
    ["", " ", "\t", "\n", "  \n ", "."],
    ["ow's'at", "'ows'at", "somebody'd", "somebodyd", "y'all", "yall", "Im", "i'm", "ive", "Ive"],
    ["whats", "what's", "whatll", "thats", "that's", "its", "it's", "itll", "youre", "you're"],
    ["@home", "at home", "home", "<3", "c++", "c#", "r&b", "rock 'n' roll", "50's", "50s"],
    ["(left)", "left", "[left]", "{left}", "left side", "left!", '"left"', "`left`", "left_side", "left=side"],
    ["a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g.h.i.",
     "abcdefghijklmnopqrstuvwxyzabcdefghi", "abcdefghijklmnopqrstuvwxyzabcdef.g.h.i."],
    ["none", "zero", "0", "nothing", "None.", "no one", "0.0"],
    ["ten", "10", "Ten", "10.", "eleven", "11", "one hundred"],
    ["new\nline", "new line", "tab\tsep", "tab sep", "x\u00a0y", "x y", "a\u3000b", "a b", "x\u001fy", "x\u0085y"],
    ["Mr. Smith", "mr smith", "Mr Smith", "st. louis", "st louis", "St. Louis", "mr.smith"],
    ["e.g.", "eg", "e.g", "i.e.", "etc."],
    ["1.5", "1.50", "one and a half", "1,5", "1 .5", "1. 5"],
    ["100%", "100", "100 %", "hundred percent", "99.9%"],
    ["$5", "5 $", "$ 5", "5 dollars", "$5.00", "\u00a35", "5\u20ac"],
    ["a/b", "b", "a / b", "ab", "an/a", "the/a"],
    ["left-hand", "left hand", "lefthand", "left - hand", "left -hand", "left- hand"],
]

QUESTION_TYPES = ["what color is the", "how many", "is the", "what is the", "what", "none of the above",
                  "are there", "what is on the", "why"]
ANSWER_TYPES = ["yes/no", "number", "other"]


def make_vqa_questions(seed=20240601, n=400):
    rng = random.Random(seed)
    out = []
    for qid in range(1, n + 1):
        g = rng.randrange(len(GROUPS))
        group = GROUPS[g]
        k = 10 if rng.random() < 0.93 else rng.choice([1, 3, 5, 9])
        mode = rng.random()
        if mode < 0.12:
            answers = [rng.choice(group)] * k  # all identical: the official skips normalisation
        elif mode < 0.3:
            dominant = rng.choice(group)
            answers = [dominant if rng.random() < 0.7 else rng.choice(group) for _ in range(k)]
        else:
            answers = [rng.choice(group) if rng.random() < 0.8 else rng.choice(rng.choice(GROUPS)) for _ in range(k)]
        r = rng.random()
        if r < 0.15:
            pred = answers[0]
        elif r < 0.85:
            pred = rng.choice(group)
        else:
            pred = rng.choice(rng.choice(GROUPS))
        out.append({
            "question_id": qid,
            "question_type": rng.choice(QUESTION_TYPES),
            "answer_type": rng.choice(ANSWER_TYPES),
            "answers": answers,
            "prediction": pred,
        })
    # Hand-picked cases from the eval-metrics notes.
    extra = [
        (["yes"] * 10, "Yes"),
        (["yes"] * 10, "yes"),
        (["2"] * 10, "two"),
        (["1,000 t-shirts"] + ["1000 tshirts"] * 9, "1,000 t-shirts"),
        (["a/b"] * 5 + ["b"] * 5, "b"),
        (["5."] * 3 + ["5"] * 7, "5."),
        (["u.s.a."] * 4 + ["usa"] * 6, "U.S.A."),
        (["one, two"] * 2 + ["1 2"] * 8, "one, two"),
        (["\uff12"] * 4 + ["2"] * 6, "\uff12,\uff13"),
    ]
    for answers, pred in extra:
        qid = len(out) + 1
        out.append({"question_id": qid, "question_type": "how many", "answer_type": "other",
                    "answers": answers, "prediction": pred})
    return out


# ---------------------------------------------------------------- VQA references

class _Holder:
    def __init__(self, qa, ids):
        self.qa = qa
        self._ids = ids

    def getQuesIds(self):
        return list(self._ids)


def vqa_official(vqa_repo, questions):
    path = os.path.join(vqa_repo, "PythonEvaluationTools", "vqaEvaluation", "vqaEval.py")
    src = open(path, encoding="utf-8").read()
    # Python 2 print statements -> calls; nothing else changes.
    src3, n = re.subn(r'^(\s*)print (".*")\s*$', r"\1print(\2)", src, flags=re.M)
    assert n == 2, f"expected 2 print statements in {path}, found {n}"
    ns = {"__name__": "vqaEval"}
    exec(compile(src3, path, "exec"), ns)
    VQAEval = ns["VQAEval"]

    ids = [q["question_id"] for q in questions]
    gts = {q["question_id"]: {
        "question_id": q["question_id"],
        "question_type": q["question_type"],
        "answer_type": q["answer_type"],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(q["answers"])],
    } for q in questions}
    res = {q["question_id"]: {"question_id": q["question_id"], "answer": q["prediction"]} for q in questions}
    ev = VQAEval(_Holder(gts, ids), _Holder(res, ids), n=2)
    raw = {}
    orig = ev.setEvalQA

    def set_eval_qa(qid, acc):
        raw[qid] = acc
        return orig(qid, acc)

    ev.setEvalQA = set_eval_qa
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    items = [dict(q, accuracy=raw[q["question_id"]], per_item=ev.evalQA[q["question_id"]]) for q in questions]
    return {
        "reference": "GT-Vision-Lab/VQA vqaEval.py master a013f0043c1e2cdc995922dfe257f7149aa9af06 "
                     "(print statements made calls), CPython 3.11",
        "questions": items,
        "overall": ev.accuracy["overall"],
        "per_question_type": ev.accuracy["perQuestionType"],
        "per_answer_type": ev.accuracy["perAnswerType"],
    }


def lmms_namespace():
    metric = pkg_file("lmms-eval", "lmms_eval/tasks/_task_utils/vqa_eval_metric.py")
    ns = load_functions(metric, ["EvalAIAnswerProcessor"], {"re": re, "statistics": statistics})
    load_functions(pkg_file("lmms-eval", "lmms_eval/tasks/vqav2/utils.py"), ["vqav2_process_results"], ns)
    load_functions(pkg_file("lmms-eval", "lmms_eval/tasks/textvqa/utils.py"), ["textvqa_process_results"], ns)
    load_functions(pkg_file("lmms-eval", "lmms_eval/api/metrics.py"), ["mean", "anls", "levenshtein_distance"], ns)
    return ns


def vqa_lmms(questions, task):
    ns = lmms_namespace()
    items = []
    for q in questions:
        if task == "vqav2":
            doc = {"question_id": q["question_id"],
                   "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                               for i, a in enumerate(q["answers"])]}
            r = ns["vqav2_process_results"](doc, [q["prediction"]])
        else:
            doc = {"question_id": q["question_id"], "answers": list(q["answers"])}
            r = ns["textvqa_process_results"](doc, [q["prediction"]])
        acc = float(r["exact_match"])
        items.append(dict(q, accuracy=acc, per_item=acc))
    overall = ns["mean"]([it["accuracy"] for it in items])
    return {
        "reference": f"lmms-eval 0.7.3 tasks/{task}/utils.py {task}_process_results; aggregation api/metrics.py mean",
        "questions": items,
        "overall": overall,
    }


def vlmeval_namespace():
    ns = {"np": np, "re": re, "string": string}
    load_functions(pkg_file("ms-vlmeval", "vlmeval/smp/misc.py"), ["process_punctuation", "istype", "listinstr"], ns)
    load_functions(pkg_file("ms-vlmeval", "vlmeval/dataset/utils/vqa_eval.py"),
                   ["_process_digit_article", "process_answer", "process_line", "hit_calculate",
                    "levenshtein_distance", "anls_compute"], ns)
    return ns


def vqa_vlmevalkit(questions):
    ns = vlmeval_namespace()
    res = []
    for q in questions:
        # VLMEvalKit keeps the answer list as its str() in the TSV and eval()s it back.
        line = {"answer": str(list(q["answers"])), "prediction": str(q["prediction"])}
        res.append(ns["process_line"](line))
    hit = ns["hit_calculate"](res, "VQAv2")
    items = [dict(q, accuracy=float(h), per_item=float(h)) for q, h in zip(questions, hit)]
    return {
        "reference": "ms-vlmeval 0.0.20 vlmeval/dataset/utils/vqa_eval.py process_line + hit_calculate; "
                     "Overall = np.mean(hit) * 100",
        "questions": items,
        "overall": float(np.mean(hit) * 100),
    }


# ---------------------------------------------------------------- text: SQuAD + ANLS

TEXT_EXTRA = [
    ("The Eiffel Tower", ["Eiffel Tower", "the eiffel tower in Paris"]),
    ("an apple a day", ["apple day", "An Apple"]),
    ("the the the", ["the"]),
    ("A", ["a", "A."]),
    ("theatre", ["the atre", "theatre"]),
    ("apple's", ["apples", "apple s"]),
    ("U.S.", ["US", "u s"]),
    ("3,000", ["3000", "3 000"]),
    ("", [""]),
    ("", ["something"]),
    ("na\u00efve caf\u00e9", ["naive cafe", "na\u00efve caf\u00e9"]),
    ("\uff26\uff55\uff4c\uff4c width", ["Full width"]),
    ("stra\u00dfe", ["STRASSE", "strasse"]),
    ("abef", ["  abcd  "]),
    ("abcd", ["ABCD", "abcd  "]),
    ("a\u0301 b", ["b"]),
    ("the_cat", ["cat", "the cat"]),
    ("  many   spaces\there ", ["many spaces here"]),
    ("\u0130stanbul", ["istanbul"]),
    ("\ufb01ne", ["fine", "FINE"]),
    ("cat cat dog", ["cat dog dog"]),
]


def make_text_items(seed=7, n=250):
    rng = random.Random(seed)
    items = [{"prediction": p, "answers": a} for p, a in TEXT_EXTRA]
    for _ in range(n):
        g = rng.choice(GROUPS)
        k = rng.choice([1, 1, 2, 3, 5])
        answers = [rng.choice(g) if rng.random() < 0.8 else rng.choice(rng.choice(GROUPS)) for _ in range(k)]
        pred = rng.choice(g) if rng.random() < 0.8 else rng.choice(rng.choice(GROUPS))
        if rng.random() < 0.3:
            pred = pred + " " + rng.choice(["in the picture", "the", "a", "!", "...", "dog", "  "])
        items.append({"prediction": pred, "answers": answers})
    return items


def squad_reference(squad_script, items):
    ns = {"__name__": "squad_eval"}
    exec(compile(open(squad_script, encoding="utf-8").read(), squad_script, "exec"), ns)
    dataset = [{"paragraphs": [{"qas": [
        {"id": str(i), "answers": [{"text": a} for a in it["answers"]]} for i, it in enumerate(items)]}]}]
    predictions = {str(i): it["prediction"] for i, it in enumerate(items)}
    corpus = ns["evaluate"](dataset, predictions)
    out = []
    for it in items:
        em = ns["metric_max_over_ground_truths"](ns["exact_match_score"], it["prediction"], it["answers"])
        f1 = ns["metric_max_over_ground_truths"](ns["f1_score"], it["prediction"], it["answers"])
        out.append(dict(it, exact_match=float(em), f1=float(f1)))
    return {
        "reference": "SQuAD v1.1 official evaluate-v1.1.py (evaluate, metric_max_over_ground_truths)",
        "items": out,
        "exact_match": corpus["exact_match"],
        "f1": corpus["f1"],
    }


def anls_reference(items):
    ns = lmms_namespace()
    out = []
    total = 0
    for it in items:
        q = ns["anls"](it["answers"], [it["prediction"]])["anls"]
        total += q
        out.append(dict(it, anls=float(q)))
    # InfographicVQA/DocVQA evaluate_method: totalScore / (N - excluded), excluded = 0.
    return {
        "reference": "lmms-eval 0.7.3 api/metrics.py anls (threshold 0.5, the DocVQA/InfographicVQA "
                     "evaluate_method per-question code); corpus totalScore/N as evaluate_method",
        "threshold": 0.5,
        "items": out,
        "score": total / len(items),
    }


# ---------------------------------------------------------------- multiple choice

MC_OPTIONS = [
    ["cat", "dog", "bird", "fish"],
    ["red", "green", "blue", "yellow"],
    ["1", "2", "3", "4"],
    ["on the table", "under the table", "next to the table", "behind the table"],
    ["Yes", "No"],
    ["a man riding a horse", "a woman", "two dogs", "nothing"],
    ["\u732b", "\u72d7", "\u9e1f"],
]
MC_TEMPLATES = [
    "{L}", "{L}.", "({L})", "The answer is {L}.", "Answer: {L}", "{L}. {T}", "I think {L} is correct",
    "{T}", "It is a {T}", "{L} or {O}", "Z", "Cannot determine the answer",
    "Sorry, I can't help with images of people yet.", "", "{l}", "The correct option is ({L}) {T} because it fits best overall",
    "Option {L}", "{L}: {T}", "none", "**{L}**", "#{L}", "{{{L}}}", "[{L}]", "{T} and {U}",
    "Failed to obtain answer via API", "A {T}", "{L}\n", "I would say the answer is {L} here", "{T}!", "{L}{O}",
]
CATEGORIES = [("coarse_perception", "image_scene"), ("logic_reasoning", "future_prediction"),
              ("attribute_reasoning", "physical_property_reasoning"), ("custom_l2", "ocr")]


def render(template, letter, text, other_letter, other_text):
    return (template.replace("{L}", letter).replace("{l}", letter.lower()).replace("{T}", text)
            .replace("{O}", other_letter).replace("{U}", other_text).replace("{{", "{").replace("}}", "}"))


def make_choice_rows(seed=11, n_questions=120):
    rng = random.Random(seed)
    rows = []
    for q in range(1, n_questions + 1):
        opts = list(rng.choice(MC_OPTIONS))
        rng.shuffle(opts)
        k = len(opts)
        answer_pos = rng.randrange(k)
        l2, cat = rng.choice(CATEGORIES)
        skill = rng.random()
        for r in range(k):
            # Rotation r moves every option r places, as MMBench's circular copies do.
            rot = opts[r:] + opts[:r]
            pos = (answer_pos - r) % k
            letters = string.ascii_uppercase[:k]
            correct = letters[pos]
            if rng.random() < skill:
                letter, text = correct, rot[pos]
            else:
                j = rng.randrange(k)
                letter, text = letters[j], rot[j]
            j2 = rng.randrange(k)
            pred = render(rng.choice(MC_TEMPLATES), letter, text, letters[j2], rot[j2])
            row = {"index": q + r * 1_000_000, "question": f"Question {q}?", "prediction": pred, "answer": correct,
                   "category": cat, "l2-category": l2}
            for L, t in zip(letters, rot):
                row[L] = t
            rows.append(row)
    return rows


def vlmeval_choice_namespace():
    import pandas as pd

    ns = {"np": np, "pd": pd, "re": re, "string": string, "os": os, "osp": os.path, "cp": __import__("copy"),
          "rd": random, "defaultdict": __import__("collections").defaultdict}

    class _Log:
        def __getattr__(self, _):
            return lambda *a, **k: None

    ns["logger"] = _Log()
    ns["get_logger"] = lambda *a, **k: _Log()
    tmp = tempfile.mkdtemp()

    def dump(obj, path):
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    def load(path):
        with open(path, "rb") as f:
            return pickle.load(f)

    counter = iter(range(10**9))
    # mcq_circular_eval round-trips its frame through f"/tmp/{timestr()}.{ext}".
    ns.update(dump=dump, load=load, get_pred_file_format=lambda: "pkl",
              timestr=lambda *a, **k: f"mmloop_metrics_ref_{os.getpid()}_{next(counter)}")
    load_functions(pkg_file("ms-vlmeval", "vlmeval/smp/misc.py"), ["istype"], ns)
    load_functions(pkg_file("ms-vlmeval", "vlmeval/utils/matching_util.py"),
                   ["can_infer_option", "can_infer_text", "can_infer"], ns)
    load_functions(pkg_file("ms-vlmeval", "vlmeval/dataset/utils/multiple_choice.py"),
                   ["report_acc", "build_choices", "prefetch_answer", "extract_answer_from_item", "eval_vanilla",
                    "prefetch_circular_group", "eval_circular_group", "mcq_circular_eval"], ns)
    ns["MMB_abbrs"] = {
        "coarse_perception": "CP", "finegrained_perception (instance-level)": "FP-S",
        "finegrained_perception (cross-instance)": "FP-C", "logic_reasoning": "LR",
        "relation_reasoning": "RR", "attribute_reasoning": "AR",
    }
    # extract_answer_from_item builds a judge prompt before it checks for a judge.
    ns.update(build_option_str=lambda c: "", build_prompt=lambda *a: "", cn_string=lambda s: False)
    return ns, tmp


def choice_reference(rows):
    import pandas as pd

    os.environ.pop("VERBOSE", None)
    ns, tmp = vlmeval_choice_namespace()
    # MMB_abbrs must be the module's own table.
    src = open(pkg_file("ms-vlmeval", "vlmeval/dataset/utils/multiple_choice.py"), encoding="utf-8").read()
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MMB_abbrs" for t in node.targets):
            ns["MMB_abbrs"] = ast.literal_eval(node.value)

    data = pd.DataFrame(rows)
    meta = data[["index", "answer"]].copy()
    # Vanilla: every row its own question.
    vanilla = data.copy()
    vanilla["GT"] = vanilla["answer"]
    hits = []
    for i in range(len(vanilla)):
        item = vanilla.iloc[i]
        hits.append(ns["eval_vanilla"](None, item)["hit"])
        pred = ns["can_infer"](item["prediction"], ns["build_choices"](item))
        rows[i]["can_infer"] = pred if pred else False
    vanilla["hit"] = hits
    vrep = ns["report_acc"](vanilla.drop(columns=["GT"]))
    # Circular.
    result_file = os.path.join(tmp, "circular.pkl")
    main = ns["mcq_circular_eval"](None, data.copy(), meta, 1, result_file, dataset_name="MMBench")
    crep = ns["report_acc"](main)
    for name in os.listdir("/tmp"):
        if name.startswith(f"mmloop_metrics_ref_{os.getpid()}_"):
            os.remove(os.path.join("/tmp", name))

    def rep(df):
        return {k: float(v[0]) for k, v in df.to_dict(orient="list").items() if k != "split"}

    return {
        "reference": "ms-vlmeval 0.0.20 vlmeval/utils/matching_util.py can_infer, "
                     "dataset/utils/multiple_choice.py eval_vanilla, mcq_circular_eval (model=None), report_acc",
        "rows": rows,
        "vanilla_hits": [int(h) for h in hits],
        "vanilla_report": rep(vrep),
        "circular_hits": {str(int(i)): int(h) for i, h in zip(main["index"], main["hit"])},
        "circular_report": rep(crep),
    }


# ---------------------------------------------------------------- MME

MME_TASKS = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
             "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
MME_PREDS = ["Yes", "No", "yes.", "no.", "Yes, there is.", "No, there isn't.", "not sure", "I don't know",
             "nope", "yes", "YES", "The answer is yes", "none", "n", "y", "", "ayes", "Nobody", "unknown", "no",
             "noyes", "Yes\u00a0indeed", "\u0130yes", "N/A", "  yes"]


def make_mme(seed=5):
    rng = random.Random(seed)
    rows = []
    for task in MME_TASKS:
        for img in range(rng.randrange(3, 9)):
            for gt in ("Yes", "No") if rng.random() < 0.5 else ("yes", "no"):
                rows.append({"task": task, "image": f"{task}_{img}.jpg", "question": f"Is it {img}?",
                             "answer": gt, "prediction": rng.choice(MME_PREDS)})
    return rows


def mme_reference(calc_path, rows):
    ns = {"__name__": "mme_calculation"}
    exec(compile(open(calc_path, encoding="utf-8").read(), calc_path, "exec"), ns)
    cal = ns["calculate_metrics"]()
    accs = []
    orig = cal.compute_metric

    def compute_metric(gts, preds):
        d = orig(gts, preds)
        accs.append(float(d["acc"]))
        return d

    cal.compute_metric = compute_metric
    with tempfile.TemporaryDirectory() as d:
        for task in MME_TASKS:
            with open(os.path.join(d, task + ".txt"), "w", encoding="utf-8") as f:
                for r in rows:
                    if r["task"] == task:
                        f.write("\t".join([r["image"], r["question"], r["answer"], r["prediction"]]) + "\n")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cal.process_result(d)
    text = buf.getvalue()
    totals = [float(x) for x in re.findall(r"^total score: (\S+)", text, flags=re.M)]
    tasks = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\t (\S+)  score: (\S+)$", text, flags=re.M)}
    return {
        "reference": "MME eval_tool calculation.py (calculate_metrics.process_result), scikit-learn 1.9.1",
        "rows": rows,
        "task_scores": tasks,
        "task_acc": dict(zip(MME_TASKS, accs)),
        "perception": totals[0],
        "cognition": totals[1],
    }


# ---------------------------------------------------------------- Krippendorff

def krippendorff_reference():
    import krippendorff

    rng = random.Random(3)
    cases = []
    nan = None
    doc = [[nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
           [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
           [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4]]
    cases.append(("docstring", doc))
    for c in range(12):
        coders = rng.choice([2, 3, 5, 10])
        units = rng.choice([5, 20, 60, 150])
        values = rng.choice([2, 3, 4, 7, 12])
        missing = rng.choice([0.0, 0.1, 0.4])
        agree = rng.random()
        data = []
        truth = [rng.randrange(values) for _ in range(units)]
        for _ in range(coders):
            row = []
            for u in range(units):
                if rng.random() < missing:
                    row.append(None)
                elif rng.random() < agree:
                    row.append(truth[u])
                else:
                    row.append(rng.randrange(values))
            data.append(row)
        cases.append((f"random{c}", data))
    out = []
    for name, data in cases:
        arr = np.array([[np.nan if v is None else v for v in row] for row in data], dtype=float)
        try:
            a = float(krippendorff.alpha(reliability_data=arr, level_of_measurement="nominal"))
        except ValueError as e:
            a = None
            name += f" (error: {e})"
        out.append({"name": name, "ratings": data, "alpha": a})
    # String labels, as annotators' categorical answers.
    labels = ["cat", "dog", "bird", "Cat", "\u732b", "fish"]
    data = [[rng.choice(labels) if rng.random() > 0.2 else None for _ in range(40)] for _ in range(4)]
    arr = np.array([[np.nan if v is None else v for v in row] for row in data], dtype=object).astype(str)
    out.append({"name": "strings", "ratings": data,
                "alpha": float(krippendorff.alpha(reliability_data=arr, level_of_measurement="nominal"))})
    return {"reference": "krippendorff 0.9.0 alpha(reliability_data, level_of_measurement='nominal')",
            "cases": out}


# ---------------------------------------------------------------- calibration

def calibration_reference():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    rng = random.Random(9)
    datasets = []
    conf = [rng.random() ** 0.5 for _ in range(500)]
    conf += [0.0, 0.1, 0.2, 0.5, 0.5, 0.5, 0.9, 1.0, 1.0, 0.3, 0.7, 0.6, 0.4, 0.8]
    correct = [rng.random() < c ** 1.3 for c in conf]
    datasets.append(("mixed", conf, correct))
    conf2 = [round(rng.random(), 1) for _ in range(97)]
    correct2 = [rng.random() < 0.5 for _ in conf2]
    datasets.append(("ties", conf2, correct2))
    conf3 = [rng.betavariate(5, 1) for _ in range(333)]
    correct3 = [rng.random() < 0.6 for _ in conf3]
    datasets.append(("overconfident", conf3, correct3))
    out = []
    for name, c, y in datasets:
        p = np.array(c, dtype=float)
        t = np.array(y, dtype=bool)
        case = {"name": name, "confidence": c, "correct": y, "bins": []}
        for strategy in ["uniform", "quantile"]:
            for n_bins in [5, 10, 15]:
                prob_true, prob_pred = calibration_curve(t, p, n_bins=n_bins, strategy=strategy)
                # Counts per bin as calibration_curve forms them (the same three lines).
                if strategy == "quantile":
                    edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
                else:
                    edges = np.linspace(0.0, 1.0, n_bins + 1)
                binids = np.searchsorted(edges[1:-1], p)
                total = np.bincount(binids, minlength=n_bins)
                nz = total != 0
                assert np.array_equal(np.bincount(binids, weights=t, minlength=n_bins)[nz] / total[nz], prob_true)
                ece = float(np.sum(total[nz] / len(p) * np.abs(prob_true - prob_pred)))
                case["bins"].append({
                    "strategy": strategy, "n_bins": n_bins, "edges": edges.tolist(),
                    "counts": total.tolist(), "prob_true": prob_true.tolist(), "prob_pred": prob_pred.tolist(),
                    "ece": ece,
                })
        case["brier_numpy"] = float(np.mean((p - t) ** 2))
        case["brier_sklearn"] = float(brier_score_loss(t, p))
        out.append(case)
    return {"reference": "scikit-learn 1.9.1 calibration_curve and brier_score_loss; ECE over its bins",
            "cases": out}


# ---------------------------------------------------------------- paired bootstrap

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        threshold = ((1 << 64) - n) % n
        while True:
            m = self.next() * n
            if (m & M64) >= threshold:
                return m >> 64


def bootstrap_reference():
    rng = random.Random(21)
    cases = []
    for name, n, pa, pb, B, seed, alpha in [("binary", 150, 0.7, 0.62, 2000, 0, 0.05),
                                            ("graded", 80, None, None, 1000, 12345, 0.1),
                                            ("equal", 40, 0.5, 0.5, 500, 7, 0.05)]:
        if pa is None:
            a = [rng.choice([0.0, 0.3, 0.6, 0.9, 1.0]) for _ in range(n)]
            b = [rng.choice([0.0, 0.3, 0.6, 0.9, 1.0]) for _ in range(n)]
        elif name == "equal":
            a = [float(rng.random() < pa) for _ in range(n)]
            b = list(a)
        else:
            a = [float(rng.random() < pa) for _ in range(n)]
            b = [float(rng.random() < pb) for _ in range(n)]
        mean_a = sum(a) / n
        mean_b = sum(b) / n
        delta = mean_a - mean_b
        g = SplitMix64(seed)
        deltas = []
        for _ in range(B):
            sa = sb = 0.0
            for _ in range(n):
                i = g.below(n)
                sa += a[i]
                sb += b[i]
            deltas.append(sa / n - sb / n)
        p = sum(1 for d in deltas if abs(d - delta) >= abs(delta)) / B
        lo, hi = np.percentile(np.array(deltas), [100 * (alpha / 2), 100 * (1 - alpha / 2)])
        cases.append({"name": name, "a": a, "b": b, "resamples": B, "seed": seed, "alpha": alpha,
                      "mean_a": mean_a, "mean_b": mean_b, "delta": delta,
                      "ci_low": float(lo), "ci_high": float(hi), "p_value": p})
    return {"reference": "the procedure documented in crates/mmloop-metrics/src/compare.rs, in Python "
                         "(numpy percentile for the interval)",
            "cases": cases}


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vqa-repo", required=True, help="checkout of GT-Vision-Lab/VQA (master a013f00)")
    ap.add_argument("--squad-script", required=True, help="official SQuAD v1.1 evaluate-v1.1.py")
    ap.add_argument("--mme-calculation", required=True, help="MME eval_tool calculation.py")
    ap.add_argument("--provenance", default="",
                    help="how the three non-PyPI reference files were obtained, recorded in the fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = versions()
    env["non_pypi_sources"] = args.provenance or "files given on the command line"
    questions = make_vqa_questions()

    def emit(name, data):
        write(args.out, name, {"generated_by": "tools/metrics_reference/metrics_reference.sh", "environment": env, **data})

    emit("vqa_official.json", vqa_official(args.vqa_repo, questions))
    emit("vqa_lmms_eval_vqav2.json", vqa_lmms(questions, "vqav2"))
    emit("vqa_lmms_eval_textvqa.json", vqa_lmms(questions, "textvqa"))
    emit("vqa_vlmevalkit.json", vqa_vlmevalkit(questions))
    text_items = make_text_items()
    emit("squad.json", squad_reference(args.squad_script, text_items))
    emit("anls.json", anls_reference(text_items))
    emit("choice.json", choice_reference(make_choice_rows()))
    emit("mme.json", mme_reference(args.mme_calculation, make_mme()))
    emit("krippendorff.json", krippendorff_reference())
    emit("calibration.json", calibration_reference())
    emit("bootstrap.json", bootstrap_reference())


if __name__ == "__main__":
    main()
