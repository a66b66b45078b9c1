"""Hostile configs, profiles and run configs: alias bombs, deep nesting, huge files, names that are paths."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from hpcsynth.config import config_from_dict, load_config
from hpcsynth.errors import ConfigError

from conftest import REPO, run_cli, run_process, write_corpus

BOMB = "\n".join([
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    *(f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]" for a, b in zip("abcdefgh", "bcdefghi")),
    "prompts: *i",
]) + "\n"


def limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def test_alias_bomb_is_refused_in_one_line_within_bounded_memory(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    assert len(BOMB) < 1000
    started = time.monotonic()
    proc = run_process("plan", str(config), "--run", str(tmp_path / "run"), timeout=60, preexec_fn=limited(1 << 30))
    assert time.monotonic() - started < 20
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert f"{config} line 2: YAML aliases (*a) are not accepted" in proc.stderr


@pytest.mark.parametrize("text, expected", [
    ("base: &b {max_tokens: 8}\nsampling:\n  <<: *b\n", "line 3: YAML aliases (*b)"),
    ("prompts: " + "[" * 200_000 + "]" * 200_000 + "\n", "line 1: nested too deeply"),
], ids=["merge-key", "deep-nesting"])
def test_merge_keys_and_deep_nesting_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        load_config(config)
    assert time.monotonic() - started < 2  # refused as it is read, not after a quadratic parse


def test_huge_config_is_refused_before_parsing(tmp_path: Path) -> None:
    config = tmp_path / "big.yaml"
    config.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="is not a config"):
        load_config(config)


def test_profile_with_alias_is_refused(tmp_path: Path) -> None:
    from hpcsynth.config import SlurmConfig
    from hpcsynth.execute.launch import load_profile

    profile = tmp_path / "site.yaml"
    profile.write_text("x: &p gpu\nslurm:\n  partition: *p\n")
    with pytest.raises(ConfigError, match="line 3: YAML aliases"):
        load_profile(profile, SlurmConfig())


def test_run_config_with_alias_is_refused(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    run = tmp_path / "run"
    config = tmp_path / "fake.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text().replace("engine: transformers",
                                                                           "engine: fake\n  path: fake-model"))
    proc = run_cli("plan", str(config), "--run", str(run), "--input", str(corpus))
    assert proc.returncode == 0, proc.stderr
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("anchor: &x 1\n" + text.replace("seed: 0", "seed: *x", 1))
    proc = run_cli("status", str(run), timeout=60)
    assert proc.returncode == 2 and "YAML aliases (*x)" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("data, key", [
    ({"reduce": {"name": "../../../x"}}, "reduce.name"),
    ({"reduce": {"name": "/tmp/x"}}, "reduce.name"),
    ({"reduce": {"name": ".hidden"}}, "reduce.name"),
    ({"prompts": ["faq", "../../evil"]}, "prompts"),
    ({"prompts": ["sub/faq"]}, "prompts"),
    ({"prompts": [".."]}, "prompts"),
])
def test_names_are_names(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'.*not a plain name"):
        config_from_dict(data)


def test_name_check_names_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("prompts: [faq]\nreduce:\n  name: ../../out\n")
    with pytest.raises(ConfigError, match=rf"{config} line 3: 'reduce.name'"):
        load_config(config)


def test_prompt_outside_prompts_dir_is_never_read(tmp_path: Path) -> None:
    (tmp_path / "evil.md").write_text("steal {document}")
    prompts = tmp_path / "prompts" / "x"
    prompts.mkdir(parents=True)
    config = tmp_path / "c.yaml"
    config.write_text(f"prompts: ['../../evil']\nprompts_dir: {prompts}\n")
    with pytest.raises(ConfigError, match="not a plain name"):
        load_config(config)


def test_run_config_listing_many_inputs_is_still_read(tmp_path: Path) -> None:
    """The resolved config lists every corpus file; tens of thousands must not trip the config cap."""
    from hpcsynth.config import Config, config_to_dict
    from hpcsynth.rundir import RunDir

    import dataclasses

    config = Config()
    inputs = tuple(f"/data/corpus/part-{i:06d}/documents-{i:06d}.jsonl.zst" for i in range(30_000))
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, inputs=inputs))
    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    from hpcsynth.config import fingerprint
    from hpcsynth.prompts import load_prompts

    run.write_config(config, fingerprint(config, {p.name: p.template_hash for p in load_prompts(config)}))
    (tmp_path / "run" / "manifest.json").write_text("{}")
    assert run.config_path.stat().st_size > 1 << 20
    assert run.config().plan.inputs == inputs
    assert config_to_dict(run.config()) == config_to_dict(config)


def _run_with_own_prompt(tmp_path: Path) -> tuple[Path, Path]:
    """A run planned with a prompt of its own in tmp_path/prompts: (prompts dir, run dir)."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "mine.md").write_text("---\nname: mine\nversion: 1\nformat: free\n---\nSay: {document}\n")
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    config = tmp_path / "c.yaml"
    config.write_text(f"prompts: [mine]\nprompts_dir: {prompts}\nmodel: {{engine: fake}}\n")
    run = tmp_path / "run"
    proc = run_cli("plan", str(config), "--run", str(run), "--input", str(corpus))
    assert proc.returncode == 0, proc.stderr
    return prompts, run


def test_alias_bomb_in_a_prompt_header_is_refused_by_status_in_bounded_memory(tmp_path: Path) -> None:
    """A run's config.yaml names its prompts_dir, and status re-hashes those prompts to check the
    fingerprint: a header that is an alias bomb (a prompt dir inside a run copied from another team)
    is one line, not gigabytes."""
    prompts, run = _run_with_own_prompt(tmp_path)
    # Every key a header may have; the anchors nest inside `system`, which the loader turns into text.
    nested = ", ".join(f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi"))
    header = f"name: mine\nversion: 1\nformat: free\nsystem: [&a [{', '.join(['lol'] * 9)}], {nested}]\n"
    assert len(header) < 1000
    (prompts / "mine.md").write_text(f"---\n{header}---\nSay: {{document}}\n")
    started = time.monotonic()
    proc = run_process("status", str(run), timeout=60, preexec_fn=limited(1 << 30))
    assert time.monotonic() - started < 20
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert f"{prompts / 'mine.md'} line 5: YAML aliases (*a) are not accepted" in proc.stderr


@pytest.mark.parametrize("plant", ["fifo", "sparse", "dev-zero"])
def test_a_prompt_file_that_is_no_prompt_does_not_hang_or_fill_status(tmp_path: Path, plant: str) -> None:
    """The prompts a run's config names are re-read by status: a FIFO, a sparse 4 GiB file or a link to
    /dev/zero planted as one is refused in one line, at once and in bounded memory."""
    import os

    prompts, run = _run_with_own_prompt(tmp_path)
    prompt = prompts / "mine.md"
    prompt.unlink()
    if plant == "fifo":
        os.mkfifo(prompt)
    elif plant == "sparse":
        with open(prompt, "wb") as handle:
            handle.truncate(4 << 30)
    else:
        prompt.symlink_to("/dev/zero")
    proc = run_process("status", str(run), timeout=60, preexec_fn=limited(1 << 30))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert f"{prompt}: not a prompt file" in proc.stderr
