"""`hpcsynth estimate`: what a run will cost before it starts, per generator and prompt.

The arithmetic is FinePhrase's: completion tokens / (completion tok/s per GPU) = GPU-seconds. Its inputs
come, best first, from what the user says (--tokens-per-second, --output-tokens), from what a run has
measured (its workers' clocks, its committed records: study/measure.py), and from the published anchors
shipped in study/anchors.json. Every figure says which of those it came from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcsynth.errors import HpcsynthError
# Counts above 2**53 are not exact as floats, and do not fit the 64-bit integers of --json: one bound for all.
from hpcsynth.status.collect import MAX_COUNT

ANCHORS = Path(__file__).with_name("anchors.json")
DEFAULT_PROMPTS = ("faq", "math", "table", "tutorial")  # FinePhrase's four, as Config's default
DEFAULT_GENERATOR = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
# FinePhrase's requests averaged ~1,150 input tokens: the published lengths and rates hold near that.
FINEPHRASE_INPUT_TOKENS = 1150


@dataclass(frozen=True)
class Row:
    generator: str
    prompt: str
    documents: int
    tokens_per_record: float
    tokens: float  # completion tokens this (generator, prompt) will produce
    tokens_per_s: float  # completion tokens per second per GPU
    gpu_hours: float
    wall_hours: float  # on the estimate's GPUs, all busy
    cost: float
    length_source: str
    rate_source: str


@dataclass(frozen=True)
class Estimate:
    rows: list[Row]
    gpus: int
    price: float  # per GPU-hour
    efficiency: float  # share of the ideal rate a campaign keeps (1.0: ideal)
    input_tokens: float = 0.0  # estimated prompt-side tokens of the documents (plan's estimate), for scale
    unit: str = "GPU"  # "worker" when a measured rate is per CPU worker, not per GPU
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, float]:
        gpu_hours = sum(r.gpu_hours for r in self.rows)
        tokens = sum(r.tokens for r in self.rows)
        return {"tokens": tokens, "gpu_hours": gpu_hours, "wall_hours": gpu_hours / self.gpus,
                "cost": gpu_hours * self.price,
                "cost_per_million_tokens": gpu_hours * self.price / (tokens / 1e6) if tokens else 0.0}

    def to_json(self) -> dict[str, Any]:
        return {"gpus": self.gpus, "price_per_gpu_hour": self.price, "efficiency": self.efficiency,
                "unit": self.unit, "input_tokens": self.input_tokens, "rows": [asdict(r) for r in self.rows],
                "totals": self.totals, "notes": self.notes}


def load_anchors() -> dict[str, Any]:
    return json.loads(ANCHORS.read_text())


def find_rate(generator: str, gpu: str, anchors: dict[str, Any]) -> tuple[float, str, str]:
    """The published completion tok/s per GPU of `generator` on `gpu`: an exact id, the id's last part
    ("SmolLM2-1.7B-Instruct", a local directory named like it), or a unique part of it ("smollm2-1.7b").
    Returns (rate, source, the generator's published id)."""
    table = [a for a in anchors["throughput"] if a["gpu"].lower() == gpu.lower()]
    name = generator.rstrip("/").lower()
    base = name.rsplit("/", 1)[-1]
    for test in (lambda a: a["generator"].lower() == name,
                 lambda a: a["generator"].lower().rsplit("/", 1)[-1] == base,
                 lambda a: bool(base) and base in a["generator"].lower().rsplit("/", 1)[-1]):
        found = [a for a in table if test(a)]
        if len(found) == 1:
            return float(found[0]["tokens_per_s"]), found[0]["source"], found[0]["generator"]
        if len(found) > 1:
            raise HpcsynthError(f"--generator {generator!r} matches several published generators "
                                f"({', '.join(a['generator'] for a in found)}); name one of them exactly")
    known = sorted({f"{a['generator']} on {a['gpu']}" for a in anchors["throughput"]})
    raise HpcsynthError(f"no published throughput for {generator!r} on {gpu!r}; pass --tokens-per-second "
                        f"(completion tokens per second per GPU), or use one of: {'; '.join(known)}")


def output_length(prompt: str, anchors: dict[str, Any]) -> tuple[float, str]:
    entry = anchors["output_tokens"].get(prompt) or anchors["output_tokens"]["*"]
    return float(entry["tokens"]), entry["source"]


@dataclass(frozen=True)
class Inputs:
    """What an estimate is made from; study/measure.py fills it from a run, the CLI from its options."""
    documents: int = 0
    tokens: float = 0.0  # total completion tokens, instead of documents x prompts x length
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    generators: tuple[str, ...] = (DEFAULT_GENERATOR,)
    tokens_per_s: float = 0.0  # the user's rate per GPU: wins over any other
    output_tokens: float = 0.0  # the user's completion tokens per record: wins over any other
    gpu: str = "H100"
    gpus: int = 1
    price: float = 0.0
    efficiency: float = 1.0
    input_tokens: float = 0.0
    # The run's own sampling.max_tokens: no record can be longer, whatever a published length says (0: none).
    max_output_tokens: float = 0.0
    # Measured on a run: {prompt: (tokens per record, how)} and {generator: (tok/s per GPU, how)}.
    measured_lengths: dict[str, tuple[float, str]] = field(default_factory=dict)
    measured_rates: dict[str, tuple[float, str]] = field(default_factory=dict)
    unit: str = "GPU"
    # A routed plan's documents per prompt (prompts: [{name, when}]): each prompt's row counts only the
    # documents routed to it. A prompt not named here has all `documents` (the plan without routing).
    routed: dict[str, int] = field(default_factory=dict)


def check_inputs(inputs: Inputs) -> None:
    """One line per mistake, naming the option (the CLI's user sees no traceback)."""
    if inputs.gpus < 1:
        raise HpcsynthError(f"--gpus must be 1 or more, got {inputs.gpus}")
    for name, value in (("--gpus", inputs.gpus), ("--documents", inputs.documents)):
        if value > MAX_COUNT:
            raise HpcsynthError(f"{name} must be at most {MAX_COUNT:.3g}, got {value:.3g}")
    for name, amount in (("--price", inputs.price), ("--tokens-per-second", inputs.tokens_per_s),
                         ("--output-tokens", inputs.output_tokens), ("--tokens", inputs.tokens),
                         ("--documents", inputs.documents)):
        if not math.isfinite(amount) or amount < 0:
            raise HpcsynthError(f"{name} must be a number of 0 or more, got {amount}")
    if not 0 < inputs.efficiency <= 1:
        raise HpcsynthError(f"--efficiency must be in (0, 1] (share of the ideal rate kept; FinePhrase's "
                            f"campaign kept ~0.43), got {inputs.efficiency}")
    if not inputs.documents and not inputs.tokens:
        raise HpcsynthError("nothing to estimate: give a planned run directory, --documents N or --tokens N "
                            "(e.g. hpcsynth estimate --tokens 486e9 --tokens-per-second 9200 --gpus 100)")


def make_estimate(inputs: Inputs) -> Estimate:
    check_inputs(inputs)
    anchors = load_anchors()
    rows = []
    for given in inputs.generators:
        rate, rate_source, generator = _rate(given, inputs, anchors)
        if inputs.tokens:  # a total given outright: one row, no per-prompt split to invent
            rows.append(_row(generator, "*", inputs.documents, 0.0, inputs.tokens, "given (--tokens)", rate,
                             rate_source, inputs))
            continue
        for prompt in inputs.prompts:
            length, length_source = _length(prompt, inputs, anchors)
            documents = inputs.routed.get(prompt, inputs.documents)
            rows.append(_row(generator, prompt, documents, length, documents * length, length_source,
                             rate, rate_source, inputs))
    _check_finite(rows)
    notes = []
    requests = sum(inputs.routed.get(prompt, inputs.documents) for prompt in inputs.prompts)
    per_document = inputs.input_tokens / requests if inputs.documents and requests else 0.0
    if per_document and not 0.5 <= per_document / FINEPHRASE_INPUT_TOKENS <= 2.0 and not inputs.measured_lengths:
        notes.append(f"your documents average ~{per_document:,.0f} tokens against FinePhrase's ~"
                     f"{FINEPHRASE_INPUT_TOKENS:,} per request: its published length and rate may not hold; "
                     f"measure them with a small run (hpcsynth estimate RUN uses what a run measured)")
    if inputs.efficiency == 1.0:
        eff = anchors["efficiency"]
        notes.append(f"ideal: every GPU generating all the time; {eff['source']} (--efficiency {eff['observed']})")
    # A rate measured on CPU workers is per worker; a published or given one is per GPU.
    measured = not inputs.tokens_per_s and any(g in inputs.measured_rates for g in inputs.generators)
    unit = inputs.unit if measured else "GPU"
    if measured and unit != "GPU" and len(inputs.generators) > 1:
        notes.append("the run's own generator is priced per CPU worker (what it measured), the others per GPU")
    return Estimate(rows, inputs.gpus, inputs.price, inputs.efficiency, inputs.input_tokens, unit, notes)


def _rate(generator: str, inputs: Inputs, anchors: dict[str, Any]) -> tuple[float, str, str]:
    """(rate per GPU, its source, the generator's name as the table shows it)."""
    if inputs.tokens_per_s:
        return inputs.tokens_per_s, "given (--tokens-per-second)", generator
    if generator in inputs.measured_rates:
        return (*inputs.measured_rates[generator], generator)
    return find_rate(generator, inputs.gpu, anchors)


def _length(prompt: str, inputs: Inputs, anchors: dict[str, Any]) -> tuple[float, str]:
    if inputs.output_tokens:
        return inputs.output_tokens, "given (--output-tokens)"
    if prompt in inputs.measured_lengths:
        return inputs.measured_lengths[prompt]
    length, source = output_length(prompt, anchors)
    cap = inputs.max_output_tokens
    if cap and length > cap:  # a published length the run's own limit cannot reach
        return cap, f"the run's sampling.max_tokens={cap:g} (below {source}: {length:,.0f})"
    return length, source


def _row(generator: str, prompt: str, documents: int, length: float, tokens: float, length_source: str,
         rate: float, rate_source: str, inputs: Inputs) -> Row:
    if rate <= 0:
        raise HpcsynthError(f"the throughput for {generator!r} is {rate} tok/s ({rate_source}); pass "
                            f"--tokens-per-second with a rate above 0")
    gpu_hours = tokens / (rate * inputs.efficiency) / 3600
    return Row(generator, prompt, documents, length, tokens, rate, gpu_hours, gpu_hours / inputs.gpus,
               gpu_hours * inputs.price, length_source, rate_source)


def _check_finite(rows: list[Row]) -> None:
    """Finite inputs can still overflow (1e300 tokens per record, 1e-320 tok/s): one line, not "inf days"."""
    total = sum(r.gpu_hours for r in rows) + sum(r.cost for r in rows) + sum(r.tokens for r in rows)
    if not math.isfinite(total):
        worst = next((r for r in rows if not math.isfinite(r.gpu_hours + r.cost + r.tokens)), rows[0])
        # The figures may come from a run's files (a forged clock, a hand-edited marker): say where.
        raise HpcsynthError(f"the estimate overflows ({worst.tokens:.3g} tokens at {worst.tokens_per_s:.3g} tok/s, "
                            f"{worst.gpu_hours:.3g} GPU-hours; tokens per record {worst.length_source}, tok/s "
                            f"{worst.rate_source}): check --documents, --tokens, --output-tokens, "
                            f"--tokens-per-second, --efficiency and --price")


def remaining(estimate: Estimate, committed_tokens: float) -> dict[str, float]:
    """What is left of the estimate once `committed_tokens` are done, at the estimate's own rates."""
    totals = estimate.totals
    share = max(0.0, 1.0 - committed_tokens / totals["tokens"]) if totals["tokens"] else 0.0
    return {"share": share, "tokens": totals["tokens"] * share, "gpu_hours": totals["gpu_hours"] * share,
            "wall_hours": totals["wall_hours"] * share, "cost": totals["cost"] * share}
