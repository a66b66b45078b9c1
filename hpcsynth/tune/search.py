"""`hpcsynth tune`: short trials on the user's own documents and prompt mix, a winner to launch with.

The tune directory (--out) holds everything a trial needs and everything the tune found, so that a Slurm job
runs the same search on a GPU node that a local tune runs here:
  config.yaml          the config as given, resolved (every trial lays its settings over it)
  sample/              the sample planned as a run is (filters, routing, long documents cut): a plain RunDir
  requests.jsonl       the requests every trial sends, built once from the sample as a worker builds them
  options.json         the search: knobs, budget, per-trial deadline
  trials/K.*           each trial's settings, log and result (tune/trial.py)
  tune.json            every trial so far and the winner; rewritten after each trial
  winner.yaml          the winning settings as a config fragment; tuned.yaml: the whole config with them

The search walks the knobs one at a time from the best setting so far (space.py says why), each candidate
one process with a deadline; a failed trial is classed and the search goes on. Once a knob that grows memory
runs out of memory, its larger candidates are skipped. The budget bounds the whole search: a trial starts only
while the time left covers a typical trial.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from hpcsynth.config import Config, load_config
from hpcsynth.config.build import config_to_dict
from hpcsynth.errors import HpcsynthError
from hpcsynth.files import atomic_write_bytes, read_regular
from hpcsynth.tune.space import Knob, Settings, apply, default_knobs, nested, parse_try, settings_of
from hpcsynth.tune.trial import finish_trial, start_trial

MARKER = "tune.json"
DEFAULT_REQUESTS = {"vllm": 2048, "endpoint": 1024}  # enough to fill the largest batches tried, twice
OTHER_REQUESTS = 64  # transformers, fake: a padded batch of 64 at most


@dataclass
class TuneOptions:
    config: Path
    inputs: list[str]
    out: Path
    budget_min: float = 30.0
    trial_timeout_s: float = 0.0  # 0: a quarter of the budget, at least 2 minutes
    requests: int = 0  # 0: DEFAULT_REQUESTS for the engine
    tries: list[str] = field(default_factory=list)
    gpus: int | None = None  # None: the GPUs this machine lists


@dataclass
class TuneResult:
    out: Path
    trials: list[dict[str, Any]]
    winner: dict[str, Any] | None
    notes: list[str]


def prepare(options: TuneOptions, say: Callable[[str], None] = lambda line: None) -> Path:
    """Make the tune directory: the config, the sample planned, the requests, the search's options."""
    from hpcsynth.generate.engines import check_model

    config = load_config(options.config)
    check_model(config, str(options.config))
    if not 0 < options.budget_min <= 7 * 24 * 60:  # also nan, which every comparison refuses
        raise HpcsynthError(f"--budget must be above 0 and at most a week of minutes (10080), got {options.budget_min:g}")
    if not 0 <= options.trial_timeout_s <= 7 * 24 * 3600:
        raise HpcsynthError(f"--trial-timeout must be 0 (a quarter of the budget) up to a week of seconds, got "
                            f"{options.trial_timeout_s:g}")
    if options.requests < 0:
        raise HpcsynthError(f"--requests must be 0 (the engine's default) or more, got {options.requests}")
    knobs = parse_try(options.tries) if options.tries else default_knobs(config, _gpus(options))
    for knob in knobs:  # every candidate is a valid config before any trial is paid for
        for candidate in knob.candidates:
            apply(config, candidate, f"--try {knob.name}")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(config_to_dict(config), sort_keys=False).encode()
    wanted = options.requests or DEFAULT_REQUESTS.get(config.model.engine, OTHER_REQUESTS)
    requests = _requests(config, options.inputs, out, wanted, say)
    count = requests.count(b"\n")
    timeout = options.trial_timeout_s or max(120.0, options.budget_min * 60 / 4)
    # What the trials measure: the same question asked again goes on from the trials already answered.
    question = {"config_sha256": hashlib.sha256(resolved).hexdigest(),
                "requests_sha256": hashlib.sha256(requests).hexdigest(), "trial_timeout_s": timeout,
                "knobs": [{"name": k.name, "candidates": list(k.candidates), "grows_memory": k.grows_memory}
                          for k in knobs]}
    earlier = _earlier_question(out)
    if earlier is not None and earlier == question:
        kept = orjson.loads(read_regular(out / "options.json"))
        kept["budget_s"] = options.budget_min * 60  # a budget for this invocation; the trials done are kept
        atomic_write_bytes(out / "options.json", orjson.dumps(kept, option=orjson.OPT_INDENT_2))
        done = len([t for t in _earlier_trials(out) if t.get("state") != "skipped"])
        say(f"tune: going on from the {done} trial(s) in {out / MARKER} (the same config, sample and knobs); a new "
            f"--out, or another of them, starts over")
        return out
    _claim(out)
    atomic_write_bytes(out / "config.yaml", resolved)
    atomic_write_bytes(out / "requests.jsonl", requests)
    notes = []
    biggest = max((v for k in knobs for c in k.candidates for key, v in c.items()
                   if key.endswith(("max_num_seqs", "batch_size", "concurrency")) and isinstance(v, int)), default=0)
    if biggest and count < 2 * biggest:
        notes.append(f"the sample gives {count:,} requests, under twice the largest batch tried ({biggest:,}): "
                     f"those trials never run full; pass a larger --input or --requests")
    payload = {"budget_s": options.budget_min * 60, "requests": count, **question, "notes": notes,
               "inputs": list(options.inputs), "config_source": str(options.config)}
    atomic_write_bytes(out / "options.json", orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return out


def _gpus(options: TuneOptions) -> int:
    if options.gpus is not None:
        return options.gpus
    from hpcsynth.execute.local_runs import machine_gpus

    return len(machine_gpus() or [])


# What a tune directory holds (see the module's docstring): anything else in --out is the user's, never removed.
OWN_NAMES = {"config.yaml", "sample", "requests.jsonl", "options.json", "trials", MARKER, "winner.yaml", "tuned.yaml",
             "slurm", ".tune.lock"}


def hold(out: Path) -> Any:
    """The tune directory, made and locked for this tune (two tunes into one directory would delete each
    other's trials): a lock (hpcsynth.locks) that the caller releases, as a context manager."""
    from hpcsynth.locks import acquire_lock

    out = Path(out)
    if out.is_symlink():
        raise HpcsynthError(f"--out {out} is a symbolic link; pass a plain directory")
    if out.exists() and not out.is_dir():
        raise HpcsynthError(f"--out {out} is a file; pass a directory (a new one, or an earlier tune's)")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_NAMES)
        if foreign:
            raise HpcsynthError(f"--out {out} holds other files ({', '.join(foreign[:3])}); pass a new directory "
                                f"or an earlier tune's")
    out.mkdir(parents=True, exist_ok=True)
    return acquire_lock(out / ".tune.lock", "tune")


def _claim(out: Path) -> Path:
    """The tune directory (held: see hold), emptied of an earlier tune's files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("trials",):
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
        elif (out / name).exists() or (out / name).is_symlink():
            (out / name).unlink()
    for name in (MARKER, "winner.yaml", "tuned.yaml", "requests.jsonl", "options.json"):
        (out / name).unlink(missing_ok=True)
    (out / "trials").mkdir()
    return out


def _earlier_question(out: Path) -> dict[str, Any] | None:
    """What an earlier tune into OUT measured (its options.json), when its trials are there to go on from."""
    try:
        kept = orjson.loads(read_regular(out / "options.json"))
        read_regular(out / MARKER)
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(kept, dict):
        return None
    return {key: kept.get(key) for key in ("config_sha256", "requests_sha256", "trial_timeout_s", "knobs")}


def _earlier_trials(out: Path) -> list[dict[str, Any]]:
    """The trials an earlier tune into OUT finished (its tune.json), each as it wrote it."""
    try:
        data = orjson.loads(read_regular(out / MARKER))
    except (OSError, orjson.JSONDecodeError):
        return []
    trials = data.get("trials") if isinstance(data, dict) else None
    return [t for t in trials if _whole_trial(t)] if isinstance(trials, list) else []


def _whole_trial(trial: Any) -> bool:
    """A trial as a tune writes it (a damaged or hand-edited one is measured again): its number, settings and
    state, and for an ok one the figures the table and the winner read."""
    if not (isinstance(trial, dict) and isinstance(trial.get("trial"), int) and not isinstance(trial["trial"], bool)
            and 0 <= trial["trial"] < 1 << 20 and isinstance(trial.get("settings"), dict)
            and trial.get("state") in ("ok", "oom", "timeout", "invalid", "crash", "skipped")):
        return False
    if trial["state"] != "ok":
        return True
    return all(_number(trial.get(key), 1e12) for key in ("tokens_per_s", "requests", "wall_s")) and \
        isinstance(trial.get("load_s"), (int, float)) and isinstance(trial.get("telemetry", {}), dict)


def _requests(config: Config, inputs: list[str], out: Path, wanted: int, say: Callable[[str], None]) -> bytes:
    """Plan the sample into OUT/sample (again: the same sample plans the same) and return the first `wanted`
    requests the workers would send, as requests.jsonl holds them."""
    from hpcsynth.generate.shard import read_shard, record_seed, routed_pairs, truncate_document
    from hpcsynth.plan import plan_corpus
    from hpcsynth.prompts import load_prompts
    from hpcsynth.rundir import RunDir

    sample = RunDir(out / "sample")
    plan_corpus(config, sample, inputs=inputs or None, jobs=1, force=True)
    prompts = load_prompts(config)
    lines, limit = [], config.model.max_input_chars
    for row in sample.manifest_rows():
        documents = read_shard(sample, row["id"], row)
        for doc, prompt in routed_pairs(documents, prompts):
            text, _ = truncate_document(doc["text"], limit)
            lines.append(orjson.dumps({"record_id": f"{doc['key']}/{prompt.name}", "prompt": prompt.name,
                                       "messages": prompt.render(text),
                                       "seed": record_seed(config.sampling.seed, doc["id"], prompt.name)}))
            if len(lines) >= wanted:
                break
        if len(lines) >= wanted:
            break
    if not lines:
        raise HpcsynthError(f"the sample {', '.join(inputs)} gives no request (every document filtered out or "
                            f"routed to no prompt); pass documents the run would rephrase")
    say(f"tune: {len(lines):,} requests from the sample ({len({l.split(b'/')[0] for l in lines}):,} documents "
        f"planned into {sample.root})")
    return b"\n".join(lines) + b"\n"


def search(out: Path, say: Callable[[str], None] = lambda line: None) -> TuneResult:
    """Run the trials of the prepared tune directory OUT within its budget; write tune.json and the winner."""
    options = orjson.loads(read_regular(out / "options.json"))
    config = load_config(out / "config.yaml")
    knobs = [Knob(k["name"], tuple(k["candidates"]), bool(k["grows_memory"])) for k in options["knobs"]]
    keys = list(dict.fromkeys(key for knob in knobs for c in knob.candidates for key in c))
    deadline = time.monotonic() + float(options["budget_s"])
    state = _State(out, config, keys, list(options.get("notes", [])), options)
    state.resume(_earlier_trials(out))
    best: Settings = {}
    state.run({}, "baseline", deadline, float(options["trial_timeout_s"]), say)
    for knob in knobs:
        ran_out = False
        for candidate in knob.candidates:
            if state.spent(deadline):
                break
            settings = {**best, **candidate}
            if ran_out:
                state.skip(settings, knob.name, "a smaller value ran out of memory")
                continue
            result = state.run(settings, knob.name, deadline, float(options["trial_timeout_s"]), say)
            if result is not None and result["state"] == "oom" and knob.grows_memory:
                ran_out = True
        winner = state.winner()
        best = dict(winner["settings"]) if winner else best
    if state.spent(deadline):
        untried = sum(len(k.candidates) for k in knobs) + 1 - len(state.trials)
        if untried > 0:
            state.notes.append(f"the budget ran out with {untried} candidate(s) untried; a larger --budget tries them")
    return state.finish()


class _State:
    """The trials so far, tune.json rewritten after each."""

    def __init__(self, out: Path, config: Config, keys: list[str], notes: list[str], options: dict) -> None:
        self.out, self.config, self.keys, self.notes, self.options = out, config, keys, notes, options
        self.base = settings_of(config, keys)
        self.trials: list[dict[str, Any]] = []
        self.seen: dict[str, dict[str, Any]] = {}
        self.next = 0  # the next trial's number (its files: trials/K.*)

    def resume(self, earlier: list[dict[str, Any]]) -> None:
        """Take the trials an earlier tune of the same question finished: the walk meets them again and uses
        their results instead of running them (what it skipped, it decides again)."""
        for trial in earlier:
            self.next = max(self.next, trial["trial"] + 1)
            if trial["state"] == "skipped" or trial.get("cut_by_budget"):  # decided again, run again
                continue
            self.trials.append(trial)
            self.seen[self._key(trial["settings"])] = trial

    def _key(self, settings: Settings) -> str:
        return json.dumps(self.effective(settings), sort_keys=True, default=str)

    def effective(self, settings: Settings) -> Settings:
        """The values a trial runs with: the config's, with these laid over (None: not set)."""
        return {**self.base, **settings}

    def spent(self, deadline: float) -> bool:
        """No time left for a typical trial (the median of those that ran; a first trial always runs)."""
        left = deadline - time.monotonic()
        walls = [t["wall_s"] for t in self.trials if t.get("wall_s")]
        typical = statistics.median(walls) if walls else 0.0
        return left <= 1.0 or (bool(walls) and left < 0.5 * typical)

    def run(self, settings: Settings, knob: str, deadline: float, timeout_s: float,
            say: Callable[[str], None]) -> dict[str, Any] | None:
        key = self._key(settings)
        if key in self.seen:  # the same values as a trial already run (the config's own value, say)
            return self.seen[key]
        number, self.next = self.next, self.next + 1
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "the config as given"
        say(f"tune: trial {number} ({knob}): {shown}")
        process = start_trial(self.out, number, settings)
        given = min(timeout_s, max(1.0, deadline - time.monotonic()))
        result = finish_trial(self.out, number, process, given)
        if result["state"] == "timeout" and given < timeout_s:  # the budget ended it, not its own deadline
            result["cut_by_budget"] = True
        result.update(trial=number, knob=knob, settings=settings)
        self.trials.append(result)
        self.seen[key] = result
        say("tune:   " + describe(result))
        self.write()
        return result

    def skip(self, settings: Settings, knob: str, why: str) -> None:
        self.trials.append({"trial": self.next, "knob": knob, "settings": settings, "state": "skipped",
                            "error": why})
        self.next += 1
        self.write()

    def winner(self) -> dict[str, Any] | None:
        done = [t for t in self.trials if t["state"] == "ok" and t.get("tokens_per_s", 0) > 0]
        return max(done, key=lambda t: t["tokens_per_s"]) if done else None

    def write(self) -> None:
        winner = self.winner()
        payload = {"config": str(self.options.get("config_source", "")), "inputs": self.options.get("inputs", []),
                   "requests": self.options.get("requests"), "engine": self.config.model.engine,
                   "model": self.config.model.path or self.config.model.engine, "device": _device(self.config),
                   "budget_s": self.options.get("budget_s"), "trials": self.trials, "notes": self.notes,
                   "winner": _winner_entry(winner, self.base) if winner else None}
        atomic_write_bytes(self.out / MARKER, orjson.dumps(payload, option=orjson.OPT_INDENT_2))

    def finish(self) -> TuneResult:
        winner = self.winner()
        self.write()
        if winner is not None:
            chosen = {**winner["settings"]}
            tuned = apply(self.config, chosen)
            header = (f"# hpcsynth tune: trial {winner['trial']} of {len(self.trials)}, "
                      f"{winner['tokens_per_s']:,.0f} output tok/s per {_unit(self.config)} (steady state)\n")
            fragment = nested(chosen) or {"_": "the config as given won; nothing to change"}
            atomic_write_bytes(self.out / "winner.yaml", (header + yaml.safe_dump(fragment, sort_keys=False)).encode())
            atomic_write_bytes(self.out / "tuned.yaml",
                               (header + yaml.safe_dump(config_to_dict(tuned), sort_keys=False)).encode())
        return TuneResult(self.out, self.trials, winner, self.notes)


def _winner_entry(winner: dict[str, Any], base: Settings) -> dict[str, Any]:
    return {"trial": winner["trial"], "settings": winner["settings"], "tokens_per_s": winner["tokens_per_s"],
            "output_tokens_per_record": winner.get("output_tokens_per_record", {}),
            "baseline": {k: base.get(k) for k in winner["settings"]}}


def _device(config: Config) -> str:
    from hpcsynth.execute.local_runs import machine_gpus

    if config.model.engine in ("endpoint", "fake"):
        return config.model.engine
    return "gpu" if machine_gpus() and config.worker.device != "cpu" else "cpu"


def _unit(config: Config) -> str:
    from hpcsynth.tune.report import unit_of

    return unit_of(_device(config))


def describe(result: dict[str, Any]) -> str:
    if result["state"] == "ok":
        telemetry = result.get("telemetry") or {}
        extra = "".join(f", {label} {telemetry[key]:.0%}" for key, label in
                        (("prefix_cache_hit_rate", "prefix hits"), ("spec_acceptance_rate", "accepted"),
                         ("kv_cache_peak", "KV peak")) if key in telemetry)
        return (f"ok: {result['tokens_per_s']:,.1f} tok/s steady ({result['requests']:,} requests, "
                f"start-up {result['load_s']:.1f} s{extra})")
    return f"{result['state']}: {result.get('error', '')}"


def read_tune(path: Path) -> dict[str, Any]:
    """A tune directory's tune.json (or the file itself), for `estimate --tuned`; one line when it is not one."""
    path = Path(path)
    file = path / MARKER if path.is_dir() else path
    try:
        data = orjson.loads(read_regular(file))
    except FileNotFoundError:
        raise HpcsynthError(f"--tuned {path}: no {MARKER} there; pass the --out directory of `hpcsynth tune`") from None
    except orjson.JSONDecodeError:
        raise HpcsynthError(f"--tuned {file} is not the JSON `hpcsynth tune` writes; run the tune again") from None
    winner = data.get("winner") if isinstance(data, dict) else None
    rate = winner.get("tokens_per_s") if isinstance(winner, dict) else None
    if not _number(rate, 1e12):
        raise HpcsynthError(f"--tuned {file} has no winning trial (every trial failed, or it was cut short); "
                            f"run the tune again")
    # What the estimate takes from it, each kept only as what a tune writes: a hand-edited or forged file
    # gives a plain estimate or one line, never a nan or a string where a figure goes.
    assert isinstance(winner, dict) and isinstance(data, dict) and isinstance(rate, (int, float))
    lengths = winner.get("output_tokens_per_record")
    trial = winner.get("trial")
    return {"winner": {"tokens_per_s": float(rate), "trial": trial if isinstance(trial, int) else "?",
                       "settings": winner.get("settings") if isinstance(winner.get("settings"), dict) else {},
                       "output_tokens_per_record": {str(k)[:64]: float(v) for k, v in lengths.items()
                                                    if _number(v, 1 << 24)} if isinstance(lengths, dict) else {}},
            "device": data.get("device") if data.get("device") in DEVICES else "unknown device",
            "model": str(data.get("model") or "the model")[:200]}


DEVICES = ("gpu", "cpu", "endpoint", "fake")


def _number(value: Any, most: float) -> bool:
    """A finite number above 0 and under `most` (JSON's bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < most


__all__ = ["TuneOptions", "TuneResult", "prepare", "search", "read_tune", "describe"]
