"""The tables tools/bench_campaign.py prints: one checkout's numbers against the campaign's targets, and
two checkouts side by side (after / before)."""

from __future__ import annotations

from campaign_trace import METADATA, metadata


def _kinds(counts: dict, per: float) -> str:
    shown = [f"{k} {counts[k] / per:.1f}" for k in METADATA + ("fsync", "fstat", "close") if counts.get(k)]
    return ", ".join(shown)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict) -> None:
    print(f"\ncheckout {r['code']} @ {r['commit']}{' (+%d modified files)' % r['dirty'] if r['dirty'] else ''}, "
          f"load {r['load']:.1f}, {r['date']}")
    print("\nper committed shard, after each worker's first claim (metadata calls on RUN; fsyncs apart)")
    print(f"{'shards':>8} {'W':>3} {'commits':>7} {'metadata':>9} {'fsync':>6} {'busy share':>10}   by kind")
    for n, s in r["sizes"].items():
        for w in (w for w in ("w2", "w8") if w in s):
            x = s[w]
            print(f"{int(n):>8,} {x['workers']:>3} {x['commits']:>7} {x['metadata_per_commit']:>9} "
                  f"{x['fsync_per_commit']:>6} {x['busy_share']:>10.0%}   {_kinds(x['steady'], max(x['commits'], 1))}")
    print("\nclaims vs done (W=2): metadata per committed shard; start-up calls per worker")
    for frac, x in ((k, v) for k, v in r.get("claims", {}).items() if k != "shards"):
        print(f"  {r['claims']['shards']:,} shards, {frac:>4} done: {x['metadata_per_commit']:>8} per commit, "
              f"busy share {x['busy_share']:.0%}, start {x['start_metadata_per_worker']:,} calls")
    print("\nworker start until its first claim (90% done) | status --json and estimate RUN: CPU s / peak MB / "
          "metadata calls")
    print(f"{'shards':>8} {'start s':>8} {'CPU s':>6} {'MB':>6} {'calls':>9} | {'status 1st':>21} "
          f"{'status 2nd':>21} | {'estimate 1st':>21} {'estimate 2nd':>21}")
    for n, s in r["sizes"].items():
        cells = [f"{x['cpu_s']:.2f}/{x['rss_mb']:.0f}/{metadata(x.get('metadata', {})):,}"
                 for x in (s["status_1"], s["status_2"], s["estimate_1"], s["estimate_2"])]
        st = s["start"]
        print(f"{int(n):>8,} {st['wall_s']:>8} {st['cpu_s']:>6} {st['rss_mb']:>6} "
              f"{s['w2']['start_metadata_per_worker']:>9,} | {cells[0]:>21} {cells[1]:>21} | {cells[2]:>21} "
              f"{cells[3]:>21}")
    print("  (2nd: after W=2's commits for CPU/MB, after W=8's for calls; see new_commits in the JSON)")
    if "extrapolation" not in r:  # --parts without beats: see --combine
        return
    e, b = r["extrapolation"], r["beats"]
    print(f"\ntime-based calls of a worker generating: {b['calls_per_worker_s']}/s ({b['calls']} calls in "
          f"{b['window_s']} s)")
    print(f"at {1000:,} GPUs ({e['of_size']:,} shards): {e['seconds_per_shard']} s per shard (FinePhrase: 1,000 docs x "
          f"4 prompts x 359 tokens at 4,000 tok/s), {e['commits_per_s']} commits/s")
    print(f"  steady rate = per-shard calls at W=1000 ({e['per_shard_calls_at_1000']}, the line through W=2 and 8, at least the larger measured) x "
          f"{e['commits_per_s']}/s + {b['calls_per_worker_s']}/s x 1000 = {e['shard_rate']:,} + {e['time_rate']:,} = "
          f"{e['steady_rate']:,} calls/s")
    print(f"  (if per-shard calls stayed at W=8's: {e['flat_rate']:,} calls/s)")
    print(f"  launch storm at {e.get('storm_of_size', e['of_size']):,} shards: 1,000 starts x start-up calls = {e['launch_storm_calls']:,} calls "
          f"({e['launch_storm_s_at_1e4']} s of a 10^4 ops/s server, {e['launch_storm_s_at_1e5']} s of 10^5)")
    targets(r)


def targets(r: dict) -> None:
    big = r["sizes"][max(r["sizes"], key=int)]
    both = r["sizes"][max((n for n, s in r["sizes"].items() if "w8" in s), key=int)]
    w2, w8 = both["w2"]["metadata_per_commit"], both["w8"]["metadata_per_commit"]
    fs = max(both["w2"]["fsync_per_commit"], both["w8"]["fsync_per_commit"], big["w2"]["fsync_per_commit"])
    s1 = big["status_1"]
    print(f"\ntargets at {big['shards']:,} shards (W=2 vs W=8 at {both['shards']:,}):")
    print(f"  metadata per commit flat in W (W=8/W=2 = {w8 / max(w2, 1e-9):.2f}, within 20%): "
          f"{_met(abs(w8 / max(w2, 1e-9) - 1) <= 0.2)}")
    print(f"  steady rate at W=1,000 < 10^4/s ({r['extrapolation']['steady_rate']:,}): "
          f"{_met(r['extrapolation']['steady_rate'] < 1e4)}")
    print(f"  fsyncs per committed shard a handful, <= 5 ({fs}): {_met(fs <= 5)}")
    print(f"  status --json < 2 s CPU, < 300 MB ({s1['cpu_s']} s, {s1['rss_mb']} MB): "
          f"{_met(s1['cpu_s'] < 2 and s1['rss_mb'] < 300)}")
    print(f"  worker start < 2 s, < 200 MB ({big['start']['wall_s']} s wall, {big['start']['cpu_s']} s CPU, "
          f"{big['start']['rss_mb']} MB): {_met(big['start']['cpu_s'] < 2 and big['start']['rss_mb'] < 200)}")


def compare(before: dict, after: dict) -> None:
    print(f"\nafter ({after['commit']}) / before ({before['commit']}): ratio < 1 is cheaper")
    rows = []
    for n in sorted(set(before["sizes"]) & set(after["sizes"]), key=int):
        b, a = before["sizes"][n], after["sizes"][n]
        for w in (w for w in ("w2", "w8") if w in a and w in b):
            rows.append((f"{int(n):,} W={w[1:]}: metadata per commit", b[w]["metadata_per_commit"],
                         a[w]["metadata_per_commit"]))
            rows.append((f"{int(n):,} W={w[1:]}: fsync per commit", b[w]["fsync_per_commit"], a[w]["fsync_per_commit"]))
        rows.append((f"{int(n):,}: worker start-up calls", b["w2"]["start_metadata_per_worker"],
                     a["w2"]["start_metadata_per_worker"]))
        for key in ("wall_s", "cpu_s", "rss_mb"):
            rows.append((f"{int(n):,}: worker start {key}", b["start"][key], a["start"][key]))
        for what in ("status_1", "status_2", "estimate_1", "estimate_2"):
            rows.append((f"{int(n):,}: {what} CPU s", b[what]["cpu_s"], a[what]["cpu_s"]))
            rows.append((f"{int(n):,}: {what} peak MB", b[what]["rss_mb"], a[what]["rss_mb"]))
            rows.append((f"{int(n):,}: {what} metadata", metadata(b[what]["metadata"]), metadata(a[what]["metadata"])))
    if "extrapolation" in before and "extrapolation" in after:
        rows.append(("steady rate at 1,000 GPUs", before["extrapolation"]["steady_rate"],
                     after["extrapolation"]["steady_rate"]))
    for name, x, y in rows:
        print(f"  {name:<42} {x:>12,.2f} {y:>12,.2f} {y / x if x else float('nan'):>8.2f}x")
