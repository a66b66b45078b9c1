"""format: math. A word problem, a worked solution in steps, and a final answer.

The problem is the text before the solution starts (a "Solution"/"Step 1" line, or the first blank
line); it must ask something. Steps are lines of the solution holding a calculation or marked as a
step. The final answer is a "Final answer:"/"Answer:" line, a \\boxed{} value or a "####" line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from hpcsynth.config import Config
from hpcsynth.reduce.validate.markup import plain

_SOLUTION = re.compile(r"^(solution|step\s*1\b|steps?\b|let'?s|let us|to solve|we (?:first|start|need))",
                       re.IGNORECASE)
_ASKS = re.compile(r"\?|\b(find|calculate|compute|determine|work out|how (?:many|much|long|far|old)|what)\b",
                   re.IGNORECASE)
# Spaces around optional parts are written so that a long run of them is read once: "\s*(?:is)?\s*"
# retries every split of the run (quadratic on a degenerate line).
_FINAL = re.compile(r"(final answer|the answer is|^answer)(?:\s+is\b)?\s*(?:[:=]\s*)?\S|\\boxed\{[^}]+\}|^####\s*\S",
                    re.IGNORECASE)
_CALC = re.compile(r"\d\s*(?:[-+*/×÷=^%]|\\times|\\div)\s*\(?\$?\d|=\s*\$?\d")
_STEP = re.compile(r"^(step\s*\d+|\d+[.)]\s|[-*•]\s|first\b|next\b|then\b|finally\b)", re.IGNORECASE)
_MIN_PROBLEM_CHARS = 40  # "What is 2 + 2?" is not a word problem grounded in a document


def split_problem(text: str) -> tuple[str, list[str]]:
    """(the problem, the lines of the rest)."""
    raw = text.strip().splitlines()
    for i, line in enumerate(raw):
        if i and (_SOLUTION.match(plain(line)) or (not line.strip() and i > 0)):
            return "\n".join(raw[:i]), [r.strip() for r in raw[i:] if r.strip()]
    return text, []


def problems(text: str, config: Config) -> Iterator[str]:
    problem, rest = split_problem(text)
    if len(problem.strip()) < _MIN_PROBLEM_CHARS or not _ASKS.search(problem):
        yield "math_no_problem: the text does not open with a problem that asks something"
    finals = [i for i, line in enumerate(rest) if _FINAL.search(plain(line))]
    if not finals:
        yield "math_no_final_answer: no 'Final answer: ...' line (or \\boxed{}, '####') after the solution"
    worked = rest[:finals[-1] + 1] if finals else rest
    steps = [line for line in worked if _CALC.search(line) or _STEP.match(plain(line))]
    if len(steps) < config.validate.min_math_steps:
        yield (f"math_no_steps: {len(steps)} worked step(s) before the final answer, validate.min_math_steps="
               f"{config.validate.min_math_steps}")
