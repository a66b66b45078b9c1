"""Config loading: typed, frozen, every mistake one line naming the file, line and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpcsynth.config import Config, config_from_dict, diff_configs, fingerprint, load_config
from hpcsynth.errors import ConfigError

from conftest import REPO, run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), Config), path


def test_config_is_frozen_and_typed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "sampling:\n  temperature: 1\n  max_tokens: 64\n"))
    assert config.sampling.temperature == 1.0 and isinstance(config.sampling.temperature, float)
    assert config.sampling.max_tokens == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sampling.max_tokens = 3  # type: ignore[misc]


def test_unknown_key_names_line_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts: [faq]\nsampling:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path} line 3" in message and "'sampling.temprature'" in message
    assert "max_tokens, seed, temperature, top_k, top_p" in message


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 1: unknown key 'modle'; valid keys in the top level: .*model"):
        load_config(write(tmp_path, "modle:\n  path: x\n"))


@pytest.mark.parametrize("text, key, kind", [
    ("sampling:\n  max_tokens: lots\n", "sampling.max_tokens", "an integer"),
    ("sampling:\n  temperature: hot\n", "sampling.temperature", "a number"),
    ("reduce:\n  drop_truncated: 1\n", "reduce.drop_truncated", "true or false"),
    ("prompts: 3\n", "prompts", "a list of strings"),
    ("worker: 5\n", "worker", "a mapping"),
])
def test_wrong_type(tmp_path: Path, text: str, key: str, kind: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value) and kind in str(err.value)
    assert "line " in str(err.value)


def test_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'model.engine' must be one of transformers, vllm, endpoint, fake"):
        load_config(write(tmp_path, "model:\n  engine: tensorrt\n"))
    with pytest.raises(ConfigError, match="'plan.shard_docs' must be greater than 0"):
        load_config(write(tmp_path, "plan:\n  shard_docs: 0\n"))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_config(write(tmp_path, "sampling:\n  max_tokens: [1,\n"))


def test_fingerprint_covers_outputs_not_speed() -> None:
    base = Config()
    hashes = {"faq": "a"}
    faster = dataclasses.replace(base, worker=dataclasses.replace(base.worker, batch_size=99))
    hotter = dataclasses.replace(base, sampling=dataclasses.replace(base.sampling, temperature=0.2))
    assert fingerprint(base, hashes) == fingerprint(faster, hashes)
    assert fingerprint(base, hashes) != fingerprint(hotter, hashes)
    assert fingerprint(base, hashes) != fingerprint(base, {"faq": "b"})
    assert diff_configs(base, hotter) == ["sampling.temperature"]


def test_from_dict_defaults() -> None:
    assert config_from_dict({}) == Config()


@pytest.mark.parametrize("text, needle", [
    ("sampling:\n  temprature: 0.7\n", "unknown key 'sampling.temprature'"),
    ("plan:\n  shard_docs: many\n", "'plan.shard_docs' must be an integer"),
])
def test_cli_config_errors_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    proc = run_cli("plan", str(path), "--run", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("hpcsynth: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert needle in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_missing_config_file(tmp_path: Path) -> None:
    proc = run_cli("plan", str(tmp_path / "missing.yaml"), "--run", str(tmp_path / "run"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "config file not found" in proc.stderr and "missing.yaml" in proc.stderr


@pytest.mark.parametrize("section, key, value, says", [
    ("model", "engine", "gpt", "must be one of transformers, vllm, endpoint, fake, got 'gpt'"),
    ("model", "dtype", "fp8", "must be one of bfloat16, float16, float32, auto, got 'fp8'"),
    ("slurm", "gpu_request", "both", "must be gres or gpus, got 'both'"),
    ("slurm", "gpu_mode", "mixed", "must be one of per_gpu, tensor_parallel, got 'mixed'"),
    ("plan", "long_docs", "drop", "must be one of truncate, split, keep, got 'drop'"),
    ("reduce", "backend", "fast", "must be auto, tokenizers or gigatoken, got 'fast'"),
    ("validate", "action", "warn", "must be drop or keep, got 'warn'"),
])
def test_a_choice_outside_its_literal_names_every_value(section: str, key: str, value: str, says: str) -> None:
    """The choices live once, as the field's Literal (config/sections.py); checks.py names them from it."""
    with pytest.raises(ConfigError, match=f"'{section}.{key}' {says}"):
        config_from_dict({section: {key: value}})
    with pytest.raises(ConfigError, match=f"'{section}.{key}' must be a string, got 3"):
        config_from_dict({section: {key: 3}})


def test_every_choice_list_is_its_fields_literal() -> None:
    import typing

    from hpcsynth.config import checks, sections

    hints = typing.get_type_hints(sections.ReduceConfig)
    assert checks.MIX_POLICIES == typing.get_args(typing.get_type_hints(sections.MixConfig)["too_few"])
    assert sections.FORMATS == typing.get_args(hints["format"])
    assert checks.LONG_DOCS == typing.get_args(typing.get_type_hints(sections.PlanConfig)["long_docs"])


@pytest.mark.parametrize("text,key,lines", [
    # The demo's hint appends a model: section; a second top-level key replaced the first silently.
    ("model:\n  engine: fake\n  path: fake-model\nsampling:\n  max_tokens: 16\nmodel: {path: x}\n", "model", (1, 6)),
    ("model:\n  engine: fake\n  path: a\n  path: b\n", "model.path", (3, 4)),
])
def test_a_key_set_twice_is_refused_with_both_lines(tmp_path: Path, text: str, key: str, lines: tuple) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    result = run_cli("plan", str(config), "--run", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"lines {lines[0]} and {lines[1]}: '{key}' is set twice" in result.stderr
    assert not (tmp_path / "run").exists()
