"""The prompt library: headers, the shipped recipe and baselines, user prompts, rendering, hashes in records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from hpcsynth.config import Config, fingerprint
from hpcsynth.errors import ConfigError
from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.generate.render import read_document, render_for_engine
from hpcsynth.prompts import PLACEHOLDER, PROMPT_FORMATS, available_prompts, load_prompts, parse_prompt
from hpcsynth.rundir import RunDir

from conftest import SHARED_DATA, fake_config, run_cli, write_corpus

FINEPHRASE = ("faq", "math", "table", "tutorial")
BASELINES = ("wrap_wikipedia", "wrap_qa", "diverse_qa", "distill", "extract_knowledge", "knowledge_list")
WEB = sorted((SHARED_DATA / "web").glob("*.jsonl")) if (SHARED_DATA / "web").is_dir() else []


def write_prompt(directory: Path, name: str, header: str, body: str = "Say it again.\n\n{document}\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.md"
    path.write_text(f"---\n{header}---\n{body}")
    return path


def test_shipped_library_has_the_recipe_and_the_baselines() -> None:
    found = {name: parse_prompt(path) for name, path in available_prompts(Config()).items()}
    assert set(FINEPHRASE + BASELINES) <= set(found)
    for name in FINEPHRASE:  # FinePhrase's formats are what their validators check
        assert found[name].format == name
    for prompt in found.values():
        assert prompt.format in PROMPT_FORMATS and prompt.version
        # The document comes last, so the whole instruction is a prefix shared by every request.
        assert prompt.template.endswith(PLACEHOLDER), prompt.name
        assert prompt.template.count(PLACEHOLDER) == 1
        assert "no introduction" in prompt.template or "Begin directly" in prompt.template, prompt.name
    assert len({p.template_hash for p in found.values()}) == len(found)


def test_table_and_math_ask_for_one_item() -> None:
    prompts = {p.name: p for p in load_prompts(Config())}
    assert "one Markdown table" in prompts["table"].template and "one question" in prompts["table"].template
    assert "one math word problem" in prompts["math"].template and "Final answer" in prompts["math"].template


def test_faq_asks_for_several_pairs_and_tutorial_for_steps() -> None:
    prompts = {p.name: p for p in load_prompts(Config())}
    faq, tutorial = prompts["faq"].template, prompts["tutorial"].template
    assert "questions with their answers" in faq and '"Q:"' in faq and '"A:"' in faq
    assert "step-by-step tutorial or how-to" in tutorial and "numbered steps" in tutorial
    starts = {"faq": "first question", "math": "problem", "table": "table", "tutorial": "tutorial"}
    for name, start in starts.items():  # no preamble: the output starts with the content itself
        assert f"Begin directly with the {start}; add no introduction" in prompts[name].template, name


@pytest.mark.parametrize("header, body, expected", [
    ("name: bad\nversion: 1\n", "x {document}", "has no 'format'"),
    ("name: bad\nversion: 1\nformat: free\n", "Use {doc} here", "line 6: unknown placeholder {doc}"),
    ("name: bad\nversion: 1\nformat: free\n", "no placeholder at all", "has 0 {document} placeholders"),
    ("name: bad\nversion: 1\nformat: free\n", "{document} and {document}", "has 2 {document}"),
    ("name: bad\nversion: 1\nformat: essay\n", "{document}", "format 'essay' is not one of"),
    ("name: bad\nversion: 1\nformat: free\ncolour: red\n", "{document}", "unknown header key 'colour'"),
    ("name: other\nversion: 1\nformat: free\n", "{document}", "says name 'other' but the file is bad.md"),
    ("name: bad\nversion: 1\nformat: [free\n", "{document}", "the header is not valid YAML"),
])
def test_malformed_prompt_file_is_one_line_naming_it(tmp_path: Path, header: str, body: str, expected: str) -> None:
    path = write_prompt(tmp_path, "bad", header, body)
    with pytest.raises(ConfigError) as caught:
        parse_prompt(path)
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_unclosed_or_missing_header_and_binary_file(tmp_path: Path) -> None:
    (tmp_path / "open.md").write_text("---\nname: open\nformat: free\n{document}\n")
    (tmp_path / "bare.md").write_text("Just a template {document}\n")
    (tmp_path / "binary.md").write_bytes(b"---\xff\xfe\n")
    for name, expected in (("open", "never closed"), ("bare", "starts with a '---' header"),
                           ("binary", "not UTF-8")):
        with pytest.raises(ConfigError, match=expected):
            parse_prompt(tmp_path / f"{name}.md")


def test_bad_prompt_stops_plan_with_one_line_and_exit_2(tmp_path: Path) -> None:
    write_prompt(tmp_path / "mine", "mine", "name: mine\nversion: 1\n")  # no format
    corpus = write_corpus(tmp_path / "corpus.jsonl", 3)
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts: [faq, mine]\nprompts_dir: {tmp_path / 'mine'}\nmodel: {{engine: fake}}\n")
    proc = run_cli("plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "mine.md: the header has no 'format'" in proc.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_user_prompt_dir_adds_and_system_prompt_reaches_records(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    write_prompt(mine, "shout", "name: shout\nversion: 3\nformat: free\nsystem: You answer in capitals.\n")
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    config = dataclasses.replace(fake_config(corpus), prompts=("faq", "shout"), prompts_dir=str(mine))
    prompts = {p.name: p for p in load_prompts(config)}
    assert prompts["faq"].path.endswith("prompts/faq.md"), "shipped prompts stay available beside the user's"
    messages = prompts["shout"].render("DOC {x}")
    assert messages == [{"role": "system", "content": "You answer in capitals."},
                        {"role": "user", "content": "Say it again.\n\nDOC {x}"}]
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    manifest = read_json(run.manifest_path)
    assert {"name": "shout", "format": "free", "version": "3",
            "template_hash": prompts["shout"].template_hash} in manifest["prompts"]
    pull_shards(run.root)
    records = [r for s in run.shard_ids() for r in read_jsonl_zst(run.output_path(s))]
    assert len(records) == 12
    for record in records:
        assert record["template_hash"] == prompts[record["prompt"]].template_hash

    # The system message is part of what reaches the model, so it is part of the hash and the fingerprint.
    write_prompt(mine, "shout", "name: shout\nversion: 3\nformat: free\nsystem: You whisper.\n")
    changed = {p.name: p.template_hash for p in load_prompts(config)}
    assert changed["shout"] != prompts["shout"].template_hash
    assert fingerprint(config, changed) != run.fingerprint()


def test_user_prompt_shadows_shipped_one_and_missing_dir_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    write_prompt(mine, "faq", "name: faq\nversion: 9\nformat: faq\n")
    config = dataclasses.replace(Config(), prompts=("faq",), prompts_dir=str(mine))
    assert load_prompts(config)[0].version == "9"
    with pytest.raises(ConfigError, match="prompts_dir .* is not a directory"):
        load_prompts(dataclasses.replace(config, prompts_dir=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="available prompts: .*distill"):
        load_prompts(dataclasses.replace(config, prompts=("nonesuch",)))


@pytest.mark.skipif(not WEB, reason="../shared/data/web not present")
def test_every_prompt_renders_on_real_web_text_with_the_chat_template(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = dataclasses.replace(Config(), model=dataclasses.replace(Config().model, path=str(tiny_model)))
    documents = [orjson.loads(line)["text"] for path in WEB for line in path.read_bytes().splitlines()[:3]]
    for name, path in available_prompts(config).items():
        prompt = parse_prompt(path)
        for document in documents:
            rendered = render_for_engine(prompt, document, config)
            if len(document) <= config.model.max_input_chars:
                expected = tokenizer.apply_chat_template(prompt.render(document), add_generation_prompt=True,
                                                         tokenize=False)
                assert rendered.text == expected
            else:  # cut at a newline before the limit, as the worker cuts it
                assert len(rendered.text) < len(document) + 2000
            # ChatML: the user turn ends with the document, then the assistant's turn opens.
            assert rendered.text.rstrip().endswith("<|im_start|>assistant"), name
            assert document[:200] in rendered.text
            assert rendered.tokens == len(tokenizer.encode(rendered.text, add_special_tokens=False)) > 50
            if prompt.system:
                assert rendered.text.index(prompt.system) < rendered.text.index(document[:50])


@pytest.mark.skipif(not WEB, reason="../shared/data/web not present")
def test_cli_renders_a_prompt_on_a_corpus_file(tiny_model: Path) -> None:
    proc = run_cli("prompts", "--render", "table", "--doc", str(WEB[0]), "--tokenizer", str(tiny_model))
    assert proc.returncode == 0, proc.stderr
    first = read_document(WEB[0])
    assert first[:100] in proc.stdout and "one Markdown table" in proc.stdout
    assert "<|im_start|>user" in proc.stdout and "table v2 (table," in proc.stderr
    assert "prompt tokens by" in proc.stderr

    listing = run_cli("prompts")
    assert listing.returncode == 0 and "wrap_wikipedia" in listing.stdout and "knowledge_list" in listing.stdout
    for prompt in load_prompts(Config()):  # each row: name, format, version, hash
        row = next(line for line in listing.stdout.splitlines() if line.startswith(prompt.name + " "))
        assert row.split()[1:4] == [prompt.format, prompt.version, prompt.template_hash[:16]], row
    for args, expected in ((("--render", "faq"), "--render needs --doc"),
                           (("--render", "nope", "--doc", str(WEB[0])), "no prompt named 'nope'"),
                           (("--render", "faq", "--doc", "/nonexistent.txt"), "no such file")):
        bad = run_cli("prompts", *args)
        assert bad.returncode == 2 and expected in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_windows_line_endings_and_a_directory_named_like_a_prompt(tmp_path: Path) -> None:
    unix = write_prompt(tmp_path / "unix", "p", "name: p\nversion: 1\nformat: free\n")
    crlf = tmp_path / "crlf" / "p.md"
    crlf.parent.mkdir()
    crlf.write_bytes(unix.read_bytes().replace(b"\n", b"\r\n"))
    assert parse_prompt(crlf).template == parse_prompt(unix).template
    assert parse_prompt(crlf).template_hash == parse_prompt(unix).template_hash
    (tmp_path / "crlf" / "odd.md").mkdir()
    corpus = write_corpus(tmp_path / "corpus.jsonl", 2)
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts: [odd]\nprompts_dir: {tmp_path / 'crlf'}\nmodel: {{engine: fake}}\n")
    proc = run_cli("plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "odd.md" in proc.stderr, proc.stderr


def test_the_prompt_list_shows_a_headers_escape_sequences_inert(tmp_path: Path) -> None:
    # A version of "\x1b]0;pwned\x07" retitled the terminal of whoever listed a shared prompts_dir.
    write_prompt(tmp_path / "mine", "odd", 'name: odd\nversion: "1\\e]0;pwned\\a"\nformat: free\n')
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts: [odd]\nprompts_dir: {tmp_path / 'mine'}\nmodel: {{engine: fake}}\n")
    result = run_cli("prompts", "--config", str(config))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("odd"))
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "?]0;pwned?" in line
