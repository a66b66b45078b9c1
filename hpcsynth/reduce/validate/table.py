"""format: table. One Markdown table (header, separator, rows), then a question and its answer.

The prompt asks for "Question:" and "Answer:" lines; a question line ending in "?" followed by any
text is accepted too, since a model that drops the label still wrote what was asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from hpcsynth.config import Config
from hpcsynth.reduce.validate.markup import labelled, lines, plain

_SEPARATOR_CELL = re.compile(r"^\s*:?-+:?\s*$")


def cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") else body
    return body.split("|")


def is_separator(line: str) -> bool:
    return all(_SEPARATOR_CELL.match(cell) for cell in cells(line))


def problems(text: str, config: Config) -> Iterator[str]:
    """Every way the text falls short of a table with its question, in order (validate.skip may pass one)."""
    rows = lines(text)
    start = next((i for i, line in enumerate(rows) if "|" in line), None)
    if start is None:
        yield "table_missing: no Markdown table (rows of cells separated by '|')"
        return
    end = start
    while end < len(rows) and "|" in rows[end]:
        end += 1
    block = rows[start:end]
    separated = len(block) >= 2 and is_separator(block[1])
    if not separated:
        yield "table_no_separator: the header row is not followed by a separator row such as |---|---|"
    elif len(cells(block[1])) != len(cells(block[0])):
        yield (f"table_no_separator: the separator row has {len(cells(block[1]))} cells, the header "
               f"{len(cells(block[0]))}")
    data = [row for row in block[1:] if not is_separator(row)]
    if len(data) < config.validate.min_table_rows:
        yield (f"table_few_rows: {len(data)} data row(s) under the header, validate.min_table_rows="
               f"{config.validate.min_table_rows}")
    missing = _question_and_answer(rows[end:])
    if missing:
        yield missing


def _question_and_answer(after: list[str]) -> str | None:
    for i, line in enumerate(after):
        question = labelled(line, ("question", "q"))
        if question is None and not plain(line).endswith("?"):
            continue
        rest = after[i + 1:]
        answer = next((labelled(r, ("answer", "a")) for r in rest if labelled(r, ("answer", "a")) is not None), None)
        if answer or (answer is None and rest):
            return None
        return "table_no_answer: the question after the table has no answer"
    return "table_no_question: no question after the table (a 'Question:' line or one ending in '?')"
