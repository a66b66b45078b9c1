"""validate's table in keep mode shows what was kept beside what was rejected, and the totals add up.

Before, a prompt with 1 empty record and 287 format failures (kept) showed "empty 1", and the summary
said "1,151 of 1,152 records pass" when nearly all failed their format.
"""

from __future__ import annotations

from hpcsynth.cli.validate import print_table


def test_keep_mode_shows_kept_failures_beside_rejected_ones(capsys) -> None:
    row = {"format": "faq", "records": 288, "accepted": 287, "rejected": {"empty": 1}, "flagged": {"format": 280},
           "accepted_share": 287 / 288, "length_ratio": 0.5, "truncation_rate": 0.0, "distinct_ngrams": 0.9}
    report = {"run": "runs/x", "shards_checked": 3, "action": "keep", "diversity_n": 3, "records": 288,
              "accepted": 287, "prompts": {"faq": row}, "shards_skipped": []}
    print_table(report)
    out = capsys.readouterr().out
    assert "empty 1 (rejected)" in out and "format 280 (kept)" in out
    assert "7 of 288 records pass every check; 280 failed a check and were kept" in out and "1 rejected" in out
