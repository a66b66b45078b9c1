"""Exact mixing: synthetic prompts and mix-in sources at exact token shares (reduce.mix).

sources.py   the config resolved into a list of sources, and a corpus's files as reduce parts
feed.py      what a part tokenizes for each source: capped at max_doc_tokens, counted
targets.py   from each source's available tokens to what each must give (the too_few policy)
choose.py    seeded thresholds over document keys that hit those targets, and the per-document choice
plan.py      the merge's plan from every part's counts (redoing parts that counted too few originals)
manifest.py  OUT/mix.json and the lines `reduce` prints about the mix
"""
