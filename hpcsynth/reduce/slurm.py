"""`reduce --executor slurm` (and the grid's reduce): the parts not yet done as one CPU array, the merge as
a job that runs once every part task succeeded. The same files as a local reduce: each part task runs
reduce_part, the merge job merge_parts; execute/slurm.py submits them without knowing what they do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig
from hpcsynth.execute.slurm import (Requeued, array_id, check_slurm_path, cpu_only, max_array_size,
                                    submit_array)
from hpcsynth.reduce.merge import merge_parts
from hpcsynth.reduce.parts import reduce_part
from hpcsynth.reduce.spec import ReduceSpec

REDUCE_CPUS = 1  # one part at a time in one process: the array is the parallelism
REDUCE_MEM_GB = 4  # at most this (less if the profile asks less): the reduce's tasks need no GPU node's memory


def submit_reduce(spec: ReduceSpec, config: SlurmConfig, upload_to: str = "") -> dict[str, Any]:
    """Submit the parts not yet done as one array (at most slurm.array_tasks tasks, each a fixed group of
    parts) and the merge as a job depending on it; return {array, merge, parts}. With `upload_to` (an s3://
    URL: `reduce --out s3://...`), the merge job uploads the output there once it is written."""
    out = Path(spec.out)
    check_slurm_path(out, "reduce output directory", "pass --out a directory without them")
    pending = [i for i in spec.part_indices() if spec.part_done(i) is None]
    cpu = cpu_only(config, f"{config.job_name}-reduce", REDUCE_CPUS, min(config.mem_gb, REDUCE_MEM_GB))
    array = ""
    if pending:
        count = min(config.array_tasks, len(pending), max_array_size(config))
        groups = [pending[i::count] for i in range(count)]
        # A requeued task (preemption, time limit) skips the parts it finished before.
        jobs = submit_array(Requeued(reduce_parts), [(spec.out, group) for group in groups], cpu, out / "slurm",
                            what="reduce")
        array = array_id(jobs[0])
    merge = submit_array(merge_job, [(spec.out, upload_to)], cpu, out / "slurm", after=array, what="reduce")[0]
    return {"array": array, "merge": merge.job_id, "parts": len(pending)}


def reduce_parts(out_dir: str, indices: list[int]) -> int:
    """One array task: reduce its group of parts (those already done are skipped)."""
    for index in indices:
        reduce_part(out_dir, index)
    return len(indices)


def merge_job(out_dir: str, upload_to: str = "") -> dict[str, Any]:
    """The merge task; returns a little of the report (the whole one is OUT/report.json). With `upload_to`,
    then the upload (storage/upload.py: the report last, what is already there whole skipped), with the
    credentials the job's environment holds (sbatch passes the submitter's on, unless the site says not to)."""
    report = merge_parts(out_dir)
    done = {"sequences": report["sequences"], "tokens": report["tokens"]}
    if upload_to:
        from hpcsynth.storage.upload import upload_dir

        sent = upload_dir(Path(out_dir), upload_to)
        print(f"uploaded {sent.files} file(s), {sent.bytes:,} bytes, to {upload_to} ({sent.skipped} already there)",
              flush=True)
        done["uploaded"] = sent.files + sent.skipped
    return done
