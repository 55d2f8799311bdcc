"""Seeded generator of GSM8K-format word problems for the model organism.

Each problem has an exact integer answer and a worked solution in GSM8K's style:
one line per arithmetic step with a calculator annotation ``a*b = <<a*b=c>>c``,
then ``#### N``. Problems come in several shapes (shopping totals, equal
sharing, rates, division with remainder, percentages of whole numbers,
"times as many" comparisons), each at difficulty 1 to 3 (number of arithmetic
steps grows and number ranges widen). Every problem keeps the numbers it was
built from in ``params`` so that its answer can be checked independently.

Problem ``i`` of a seed depends only on (seed, i): ``generate_problems(n, s)`` is a
prefix of ``generate_problems(m, s)`` for ``m > n``.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from rlhf_audit.organism import write_jsonl

SHAPES = ("shopping", "sharing", "rates", "remainder", "percent", "comparison")
DIFFICULTIES = (1, 2, 3)

# Authored word banks (names with pronouns, goods, containers) for variety.
_NAMES = (
    ("Maria", "she"),
    ("James", "he"),
    ("Aisha", "she"),
    ("Tom", "he"),
    ("Lena", "she"),
    ("Carlos", "he"),
    ("Priya", "she"),
    ("Ben", "he"),
    ("Sofia", "she"),
    ("Omar", "he"),
    ("Grace", "she"),
    ("Ken", "he"),
    ("Nina", "she"),
    ("Luis", "he"),
    ("Emma", "she"),
    ("Ravi", "he"),
    ("Hana", "she"),
    ("Jack", "he"),
    ("Zoe", "she"),
    ("Samuel", "he"),
)
_GOODS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("sandwich", "sandwiches"),
    ("ticket", "tickets"),
    ("plant", "plants"),
    ("book", "books"),
    ("shirt", "shirts"),
    ("toy car", "toy cars"),
    ("bag of rice", "bags of rice"),
    ("candle", "candles"),
    ("basket of apples", "baskets of apples"),
    ("puzzle", "puzzles"),
)
_THINGS = ("stickers", "marbles", "cookies", "pencils", "cards", "stamps", "beads", "seashells")
_VEHICLES = ("train", "bus", "car", "truck", "ferry", "van")
_GROUPS = ("students", "campers", "players", "visitors", "workers", "scouts")
_TRANSPORT = (("van", "vans"), ("bus", "buses"), ("boat", "boats"), ("table", "tables"))
_STOCK = ("shirts", "books", "lamps", "chairs", "mugs", "hats")
_PLACES = ("school", "camp", "club", "office", "library")


@dataclass(frozen=True)
class GSM8KSettings:
    """Mix of generated word problems."""

    difficulty_mix: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    """Relative weights of difficulty 1, 2 and 3 (normalised; need not sum to 1)."""
    shapes: tuple[str, ...] = SHAPES
    """Problem shapes to draw from, uniformly."""


def _calc(expr: str, value: int) -> str:
    """GSM8K calculator annotation ``expr = <<expr=value>>value``, checked."""
    if evaluate(expr) != value:  # a wrong annotation is a bug in a shape, never data
        raise AssertionError(f"annotation {expr} != {value}")
    return f"{expr} = <<{expr}={value}>>{value}"


_OPS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression of integers with + - * / and parentheses."""

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported expression {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def _person(rng: random.Random) -> tuple[str, str, str]:
    name, pron = rng.choice(_NAMES)
    poss = "her" if pron == "she" else "his"
    return name, pron, poss


# Each shape: (rng, difficulty) -> (question, solution lines, final, params)
Shape = Callable[[random.Random, int], tuple[str, list[str], int, dict]]


def _shopping(rng: random.Random, d: int):
    name, pron, _ = _person(rng)
    (g1, g1s), (g2, g2s) = rng.sample(_GOODS, 2)
    hi_n, hi_p = {1: (9, 12), 2: (12, 20), 3: (15, 25)}[d]
    a, p = rng.randint(2, hi_n), rng.randint(2, hi_p)
    c1 = a * p
    params = {"a": a, "p": p}
    if d == 1:
        q = f"{name} buys {a} {g1s} for ${p} each. How many dollars does {pron} spend?"
        lines = [f"{name} spends {_calc(f'{a}*{p}', c1)} dollars."]
        return q, lines, c1, params
    b, r = rng.randint(2, hi_n), rng.randint(2, hi_p)
    c2 = b * r
    total = c1 + c2
    params |= {"b": b, "r": r}
    q = f"{name} buys {a} {g1s} for ${p} each and {b} {g2s} for ${r} each."
    lines = [
        f"The {g1s} cost {_calc(f'{a}*{p}', c1)} dollars.",
        f"The {g2s} cost {_calc(f'{b}*{r}', c2)} dollars.",
    ]
    if d == 2:
        lines.append(f"Altogether {pron} spends {_calc(f'{c1}+{c2}', total)} dollars.")
        return q + f" How many dollars does {pron} spend in total?", lines, total, params
    paid = (total // 50 + 1) * 50  # smallest multiple of 50 above the total
    params["paid"] = paid
    lines.append(f"The total is {_calc(f'{c1}+{c2}', total)} dollars.")
    lines.append(f"{pron.capitalize()} gets back {_calc(f'{paid}-{total}', paid - total)} dollars.")
    q += f" {pron.capitalize()} pays with ${paid}. How many dollars of change does {pron} get?"
    return q, lines, paid - total, params


def _sharing(rng: random.Random, d: int):
    name, pron, poss = _person(rng)
    thing = rng.choice(_THINGS)
    if d in (1, 2):
        k = rng.randint(2, 6 if d == 1 else 9)
        each = rng.randint(2, 12 if d == 1 else 20)
        total = k * each
        if d == 1:
            q = (
                f"{name} has {total} {thing} and shares them equally among {k} friends. "
                f"How many {thing} does each friend get?"
            )
            lines = [f"Each friend gets {_calc(f'{total}/{k}', each)} {thing}."]
            return q, lines, each, {"total": total, "k": k}
        x = rng.randint(1, total - 1)
        y = total - x
        q = (
            f"{name} has {x} {thing}. {pron.capitalize()} gets {y} more and then shares all of "
            f"them equally among {k} friends. How many {thing} does each friend get?"
        )
        lines = [
            f"{name} has {_calc(f'{x}+{y}', total)} {thing} in all.",
            f"Each friend gets {_calc(f'{total}/{k}', each)} {thing}.",
        ]
        return q, lines, each, {"x": x, "y": y, "k": k}
    trays, per, bag = rng.randint(2, 6), rng.randint(6, 15), rng.randint(3, 8)
    total = trays * per
    keep = total % bag or bag
    keep += bag * rng.randint(0, 1)
    if keep >= total:
        keep = total % bag or bag
    left = total - keep
    bags = left // bag
    q = (
        f"{name} bakes {trays} trays of {per} cookies. {pron.capitalize()} keeps {keep} cookies "
        f"for {poss} family and packs the rest into bags of {bag}. How many bags does "
        f"{pron} fill?"
    )
    lines = [
        f"{name} bakes {_calc(f'{trays}*{per}', total)} cookies.",
        f"After keeping some, {_calc(f'{total}-{keep}', left)} cookies are left.",
        f"That fills {_calc(f'{left}/{bag}', bags)} bags.",
    ]
    return q, lines, bags, {"trays": trays, "per": per, "keep": keep, "bag": bag}


def _rates(rng: random.Random, d: int):
    v = rng.choice(_VEHICLES)
    if d in (1, 2):
        s1, h1 = rng.randint(3, 12) * 5, rng.randint(2, 5 if d == 1 else 7)
        m1 = s1 * h1
        if d == 1:
            q = f"A {v} travels at {s1} miles per hour for {h1} hours. How many miles does it go?"
            return q, [f"It travels {_calc(f'{s1}*{h1}', m1)} miles."], m1, {"s1": s1, "h1": h1}
        s2, h2 = rng.randint(3, 12) * 5, rng.randint(2, 7)
        m2 = s2 * h2
        q = (
            f"A {v} travels at {s1} miles per hour for {h1} hours and then at {s2} miles per "
            f"hour for {h2} hours. How many miles does it travel in total?"
        )
        lines = [
            f"In the first part it travels {_calc(f'{s1}*{h1}', m1)} miles.",
            f"In the second part it travels {_calc(f'{s2}*{h2}', m2)} miles.",
            f"In total it travels {_calc(f'{m1}+{m2}', m1 + m2)} miles.",
        ]
        return q, lines, m1 + m2, {"s1": s1, "h1": h1, "s2": s2, "h2": h2}
    r1, r2, minutes = rng.randint(2, 9), rng.randint(2, 9), rng.randint(3, 15)
    start = rng.randint(1, 20) * 5
    rate = r1 + r2
    cap = start + rate * minutes
    q = (
        f"Two pumps fill a tank. The first adds {r1} liters per minute and the second adds {r2} "
        f"liters per minute. The tank holds {cap} liters and already has {start} liters in it. "
        f"How many minutes will it take to fill the tank?"
    )
    lines = [
        f"Together the pumps add {_calc(f'{r1}+{r2}', rate)} liters per minute.",
        f"The tank still needs {_calc(f'{cap}-{start}', cap - start)} liters.",
        f"It takes {_calc(f'{cap - start}/{rate}', minutes)} minutes.",
    ]
    return q, lines, minutes, {"r1": r1, "r2": r2, "cap": cap, "start": start}


def _remainder(rng: random.Random, d: int):
    group = rng.choice(_GROUPS)
    unit, units = rng.choice(_TRANSPORT)
    c = rng.randint(4, 9 if d == 1 else 12)
    q_full = rng.randint(2, 9 if d == 1 else 15)
    rem = rng.randint(1, c - 1)
    n = c * q_full + rem
    full = c * q_full
    if d == 3:
        n1 = rng.randint(1, n - 1)
        n2 = n - n1
        place = rng.choice(_PLACES)
        q = (
            f"A {place} has {n1} {group} in one group and {n2} in another. All of them ride in "
            f"{units} that hold {c} {group} each, filling every {unit} before starting the next. "
            f"How many empty seats are there in the last {unit}?"
        )
        lines = [
            f"There are {_calc(f'{n1}+{n2}', n)} {group} in all.",
            f"{q_full} full {units} hold {_calc(f'{q_full}*{c}', full)} {group}.",
            f"That leaves {_calc(f'{n}-{full}', rem)} {group} for the last {unit}.",
            f"The last {unit} has {_calc(f'{c}-{rem}', c - rem)} empty seats.",
        ]
        return q, lines, c - rem, {"n1": n1, "n2": n2, "c": c}
    lines = [
        f"{q_full} full {units} hold {_calc(f'{q_full}*{c}', full)} {group}.",
        f"That leaves {_calc(f'{n}-{full}', rem)} {group}.",
    ]
    if d == 1:
        q = (
            f"There are {n} {group} and each {unit} holds {c}. After filling as many {units} as "
            f"possible, how many {group} are left over?"
        )
        return q, lines, rem, {"n": n, "c": c}
    q = (
        f"There are {n} {group} and each {unit} holds {c}. How many {units} are needed so that "
        f"every one of the {group} gets a seat?"
    )
    lines.append(f"They need one more {unit}, so {_calc(f'{q_full}+1', q_full + 1)} {units}.")
    return q, lines, q_full + 1, {"n": n, "c": c}


_PERCENTS = (5, 10, 20, 25, 30, 40, 50, 60, 75, 80)


def _percent(rng: random.Random, d: int):
    if d in (1, 2):
        item = rng.choice(_STOCK)
        p = rng.choice(_PERCENTS)
        base = 100 // math.gcd(p, 100)
        total = base * rng.randint(1, max(1, (400 if d == 1 else 1000) // base))
        part = total * p // 100
        q = f"A store has {total} {item}. {p}% of them are on sale."
        lines = [f"{_calc(f'{total}*{p}/100', part)} {item} are on sale."]
        if d == 1:
            return q + f" How many {item} are on sale?", lines, part, {"total": total, "p": p}
        lines.append(f"So {_calc(f'{total}-{part}', total - part)} {item} are not on sale.")
        q += f" How many {item} are not on sale?"
        return q, lines, total - part, {"total": total, "p": p}
    group = rng.choice(_GROUPS)
    place = rng.choice(_PLACES)
    while True:
        p, r = rng.choice(_PERCENTS), rng.choice(_PERCENTS)
        base = 100 // math.gcd(p, 100)
        ok = [t for t in range(base, 2001, base) if (t * (100 - p) * r) % 10000 == 0]
        if ok:
            break
    total = rng.choice(ok)
    walk = total * p // 100
    rest = total - walk
    bus = rest * r // 100
    q = (
        f"A {place} has {total} {group}. {p}% of them walk there. {r}% of the others take the "
        f"bus, and the rest are driven. How many {group} are driven?"
    )
    lines = [
        f"{_calc(f'{total}*{p}/100', walk)} {group} walk.",
        f"That leaves {_calc(f'{total}-{walk}', rest)} {group}.",
        f"{_calc(f'{rest}*{r}/100', bus)} of them take the bus.",
        f"So {_calc(f'{rest}-{bus}', rest - bus)} {group} are driven.",
    ]
    return q, lines, rest - bus, {"total": total, "p": p, "r": r}


def _comparison(rng: random.Random, d: int):
    (n1, _), (n2, _), (n3, _) = rng.sample(_NAMES, 3)
    thing = rng.choice(_THINGS)
    a, k = rng.randint(2, 12 if d == 1 else 25), rng.randint(2, 6)
    b = a * k
    lines = [f"{n2} has {_calc(f'{a}*{k}', b)} {thing}."]
    q = f"{n1} has {a} {thing}. {n2} has {k} times as many {thing} as {n1}."
    if d == 1:
        return q + f" How many {thing} does {n2} have?", lines, b, {"a": a, "k": k}
    fewer = rng.randint(1, b - 1)
    c = b - fewer
    q += f" {n3} has {fewer} fewer {thing} than {n2}."
    lines.append(f"{n3} has {_calc(f'{b}-{fewer}', c)} {thing}.")
    if d == 2:
        return q + f" How many {thing} does {n3} have?", lines, c, {"a": a, "k": k, "fewer": fewer}
    total = a + b + c
    lines.append(f"Together they have {_calc(f'{a}+{b}+{c}', total)} {thing}.")
    q += " How many " + thing + " do the three of them have together?"
    return q, lines, total, {"a": a, "k": k, "fewer": fewer}


_SHAPE_FNS: dict[str, Shape] = {
    "shopping": _shopping,
    "sharing": _sharing,
    "rates": _rates,
    "remainder": _remainder,
    "percent": _percent,
    "comparison": _comparison,
}


def make_problem(shape: str, difficulty: int, rng: random.Random) -> dict:
    """One problem of ``shape`` at ``difficulty`` (1-3) drawn with ``rng``.

    Returns ``{question, answer, final, shape, difficulty, params}``; ``answer`` is the
    worked solution ending in ``#### final``.
    """
    if shape not in _SHAPE_FNS:
        raise ValueError(f"unknown problem shape {shape!r}; use one of {SHAPES}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    question, lines, final, params = _SHAPE_FNS[shape](rng, difficulty)
    answer = "\n".join(lines) + f"\n#### {final}"
    return {
        "question": question,
        "answer": answer,
        "final": int(final),
        "shape": shape,
        "difficulty": difficulty,
        "params": params,
    }


def generate_problems(
    n: int,
    seed: int,
    difficulty_mix: Sequence[float] = GSM8KSettings.difficulty_mix,
    shapes: Sequence[str] = SHAPES,
) -> list[dict]:
    """``n`` word problems, deterministic for ``seed``.

    Each dict has keys id (``gsm-{seed}-{i:05d}``), question, answer (GSM8K worked
    solution ending ``#### N``), final (int N), shape, difficulty (1-3), params
    (the numbers the problem was built from). ``difficulty_mix`` weights
    difficulty 1, 2, 3; ``shapes`` are drawn uniformly.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = [float(w) for w in difficulty_mix]
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"difficulty_mix must be three non-negative weights (difficulty 1, 2, 3) with a "
            f"positive sum, got {tuple(difficulty_mix)}"
        )
    shapes = tuple(shapes)
    unknown = [s for s in shapes if s not in _SHAPE_FNS]
    if not shapes or unknown:
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES}; unknown: {unknown}")
    out = []
    for i in range(n):
        # One generator per item so that item i never depends on n.
        rng = random.Random(f"gsm8k:{seed}:{i}")
        difficulty = rng.choices(DIFFICULTIES, weights=weights)[0]
        prob = make_problem(rng.choice(shapes), difficulty, rng)
        out.append({"id": f"gsm-{seed}-{i:05d}", **prob})
    return out


def write_gsm8k_jsonl(problems: Iterable[dict], path: str | os.PathLike) -> None:
    """Write problems in the user-facing GSM8K format: one ``{id, question, answer}`` per line."""
    write_jsonl(
        ({"id": p["id"], "question": p["question"], "answer": p["answer"]} for p in problems), path
    )
