"""enhance_archive: bulk-enhance every photo under a source URL into a destination URL, on Dask.

list -> plan (skip what the destination's manifest records as done and whose output is intact) -> shards
(many photos per task) -> Dask workers (model loaded once per worker process) -> per-file records -> report,
manifest, artifacts. A failing photo never fails the run: it ends in a Completed state named "Completed with
failures" (flows/outcome.py: plus a dpe.enhance.* event with the counts, for alerts), its message says how many
failed, one WARNING names them, and the CLI's exit code is 1.

The flow process imports no torch: dpe_core's model code is imported inside the task bodies on the workers.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from dpe_core.io.places import artifact_key, check_destinations, join
from flows.artifacts import Progress, counts_table, publish_summary, summary_markdown
from flows.cluster import ClusterInfo, dask_cluster
from flows.outcome import counts_words, final_state, log_failures, na
from flows.params import EnhanceParams, default_registry
from flows.progress import LISTENERS as PROGRESS_LISTENERS  # noqa: F401  (the CLI's listeners: flows/progress.py)
from flows.progress import RunProgress, announce_run
from flows.progress import emit as _emit
from tasks.enhance import EnhanceJob, Shard, ShardResult, enhance_shard
from tasks.jsonl import dumps_json, dumps_jsonl, read_jsonl
from tasks.lease import DestinationLock, describe
from tasks.listing import Listing
from tasks.manifest import clear_records, load_state, merge_state, records_root, run_url, write_manifest
from tasks.plan import Plan, WorkItem, plan, settings_key
from tasks.registry import ModelRef, resolve
from tasks.sharding import lpt_shards
from tasks.storage import STORAGE_RETRIES, list_inputs, read_destination
from tasks.storage_options import use_storage_block
from tasks.writer import GuardedWriter

FILE_COST_BYTES = 200_000  # per-photo fixed cost (decode set-up, model call, write) in byte units for balancing


MAX_AUTO_SHARD = 256  # photos: a worker that dies loses (and Dask re-runs) at most one shard
SHARDS_PER_WORKER = 4  # with several workers: the last shards finish close together even when workers slow down
MIN_AUTO_SHARD = 4  # photos: Prefect costs ~0.3-0.6 s per task


def shard_count(n_items: int, workers: int, shard_size: int | None) -> int:
    """Shards for n photos: ceil(n / shard_size) when given. Auto: one worker gets one shard per 256 photos
    (no tail to balance, least overhead); several workers get at least 4 shards each (of >= 4 photos), so that
    byte-balanced shards still finish close together when photo costs or worker speeds differ (chosen by
    simulating measured per-photo times: docs/flows.md)."""
    if n_items == 0:
        return 0
    if shard_size:
        return math.ceil(n_items / shard_size)
    by_size = math.ceil(n_items / MAX_AUTO_SHARD)
    if workers <= 1:
        return by_size
    wanted = max(SHARDS_PER_WORKER * workers, by_size)
    return max(1, min(wanted, n_items // MIN_AUTO_SHARD))


def make_shards(todo: list[WorkItem], n_shards: int, previews: int) -> list[Shard]:
    """n_shards shards of about equal work (bytes + a fixed per-photo cost), costliest first; previews from
    the first."""
    groups = lpt_shards(todo, n_shards, lambda item: item.size + FILE_COST_BYTES) if n_shards else []
    return [Shard(index=i, items=[item.to_dict() for item in group], previews=previews if i == 0 else 0)
            for i, group in enumerate(groups)]


def pipeline_options(cluster: ClusterInfo) -> dict[str, Any]:
    """How a shard overlaps storage, decoding and the model (measured on 2 CPU cores, docs/flows.md):

    * GPU workers: the model is fast and decoding/encoding is the work: decode/encode in threads beside it,
      as many as the worker's CPU threads;
    * CPU workers with a core that torch leaves free (``spare_cores``: a local worker with several cores gives
      torch all but one): decode and encode in I/O threads beside the model, on that core (one worker on 2
      cores: 0.89x -> 1.11x the bare loop, benchmarks/pipeline_speed.py --modes full --workers 1);
    * CPU workers with one torch thread and no spare core: reads and writes (and their fsync/network waits) in
      two threads, decode/encode in the task's thread (~15 % faster than sequential; decoding beside it was not
      faster);
    * CPU workers whose torch uses every core (threads set by hand): nothing beside the model (any thread beside
      torch's OpenMP threads stalls its parallel ops: 5-20 % slower), but the next photo is read and decoded
      (in the decoder process) while this one is encoded: one core each, side by side (``decode_ahead``).
    """
    if cluster.use_gpu:
        return {"prefetch": True, "overlap_cpu": True, "io_threads": max(2, cluster.torch_threads or 2)}
    if cluster.spare_cores >= 1:
        return {"prefetch": True, "overlap_cpu": True, "io_threads": 2}
    if (cluster.torch_threads or 1) == 1:
        return {"prefetch": True, "overlap_cpu": False, "io_threads": 2}
    return {"prefetch": True, "overlap_cpu": False, "decode_ahead": True, "io_threads": 1}


@task(name="resolve-model", **STORAGE_RETRIES)
def resolve_model(reference: str, registry_url: str | None) -> ModelRef:
    return resolve(reference, registry_url)


def run_settings(params: EnhanceParams, model_id: str) -> str:
    """The settings key of a run: an output recorded with another key is redone (tasks.plan). strength joins it only
    when it is not 1, so outputs made before strength existed (= strength 1) still count as done."""
    settings: dict[str, Any] = {"model": model_id, "mode": params.mode, "output_format": params.output_format,
                                "quality": params.quality, "max_pixels": params.max_pixels}
    if params.strength != 1.0:
        settings["strength"] = params.strength
    return settings_key(settings)


@task(name="write-report", **STORAGE_RETRIES)
def write_report(dest_url: str, run_id: str, records: list[dict[str, Any]], summary: dict[str, Any],
                 source_url: str | None = None) -> dict[str, str]:
    """report.jsonl + summary.json of the run, the merged manifest (all through the destination's guarded
    writer), then drop the merged shard records.

    The manifest is merged, never last-writer-wins: this run's records go onto the destination's state as it is
    now (manifest + unmerged shard records, read again here), not as it was when the run planned."""
    writer = GuardedWriter(dest_url, [source_url] if source_url else [])
    folder = run_url(dest_url, run_id)
    report = join(folder, "report.jsonl")
    writer.write_url(report, dumps_jsonl(sorted(records, key=lambda r: r["input"])))
    manifest = write_manifest(dest_url, merge_state(load_state(dest_url), records), writer)
    writer.write_url(join(folder, "summary.json"), dumps_json(summary | {"report_url": report,
                                                                          "manifest_url": manifest}))
    clear_records(dest_url)
    return {"report_url": report, "manifest_url": manifest, "summary_url": join(folder, "summary.json")}


def dispatch_gaps(results: list[ShardResult]) -> list[float]:
    """Seconds between one shard's end and the next shard's start on the same worker: what Prefect and Dask
    cost per task (task-run bookkeeping on both sides, scheduling, result transfer), work excluded."""
    by_worker: dict[str, list[ShardResult]] = {}
    for r in results:
        by_worker.setdefault(r.worker, []).append(r)
    gaps = []
    for runs in by_worker.values():
        runs.sort(key=lambda r: r.started)
        gaps += [b.started - a.finished for a, b in zip(runs, runs[1:], strict=False)]
    return gaps


def _run_id() -> str:
    ctx = FlowRunContext.get()
    name = ctx.flow_run.name if ctx and ctx.flow_run else "local"
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{name}"


def _lost_shard_records(shard: Shard, job: EnhanceJob, reason: str) -> list[dict[str, Any]]:
    """Records for a shard whose task failed (e.g. its worker died): what it checkpointed, errors for the rest."""
    try:
        saved = {r["input"]: r for r in read_jsonl(join(job.records_url, f"shard-{shard.index:05d}.jsonl"))}
    except Exception:  # unreadable checkpoint: every photo of the shard is reported with the shard's failure
        saved = {}
    out = []
    for item in shard.items:
        out.append(saved.get(item["rel"]) or {
            "input": item["rel"], "output": item["output"], "status": "error", "reason": reason,
            "input_size": item["size"], "input_version": item["version"], "shard": shard.index,
            "model": job.model_id, "mode": job.mode, "settings": job.settings})
    return out


def release_future(future) -> None:
    """Let Dask forget a finished shard: while the client holds a task's future, a worker that dies holding its
    result makes Dask compute it again (distributed#7870), i.e. redo a whole finished shard. The result is in
    hand, so the future is released at once (prefect's as_completed keeps its own references to the end)."""
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None:
        with contextlib.suppress(Exception):
            wrapped.release()


def run_shards(shards: list[Shard], job: EnhanceJob, cluster: ClusterInfo, progress: RunProgress,
               ) -> tuple[list[dict[str, Any]], list[ShardResult], float]:
    """Submit every shard through a DaskTaskRunner(address=...) and collect results as they finish; progress
    counts photos as the workers report them and takes each shard's records when it returns."""
    import dask

    logger = get_run_logger()
    records: list[dict[str, Any]] = []
    results: list[ShardResult] = []
    started = time.perf_counter()
    with cluster.task_runner() as runner:
        annotate = dask.annotate(resources={"GPU": 1}) if cluster.use_gpu else contextlib.nullcontext()
        with annotate:
            futures = {runner.submit(enhance_shard, {"shard": shard, "job": job}): shard for shard in shards}
        for future in as_completed(list(futures)):
            shard = futures.pop(future)
            try:
                result: ShardResult = future.result()
                results.append(result)
                shard_records = result.records
                if result.attempt > 1:
                    logger.warning("shard %d ran again after its worker died (attempt %d): %d photos kept from the "
                                   "earlier attempt", shard.index, result.attempt, result.resumed)
            except Exception as exc:  # worker died (KilledWorker), task crashed: per-file records, not a failure
                reason = f"shard {shard.index} failed: {type(exc).__name__}: {exc}"
                logger.error(reason)
                shard_records = _lost_shard_records(shard, job, reason)
            finally:
                release_future(future)
            records.extend(shard_records)
            progress.shard_done(shard.index, shard_records)
            _emit({"event": "shard", "done": progress.snapshot()["done"], "total": progress.total, "shard": shard.index,
                   "ok": sum(r["status"] == "ok" for r in shard_records),
                   "error": sum(r["status"] == "error" for r in shard_records)})
    return records, results, time.perf_counter() - started


@flow(name="enhance-archive", description="Bulk-enhance every photo under a source URL into a destination URL.")
def enhance_archive(params: EnhanceParams) -> dict[str, Any]:
    """Refuse a destination that is the source (or inside it, or holding it), take the destination's lock
    (tasks/lease.py: a second run waits up to lock_wait_s, then fails with DestinationLocked: CLI exit 3), run."""
    logger = get_run_logger()
    announce_run("enhance")
    use_storage_block(params.storage_block)
    # Before any work: a destination that is the source, lies in it or holds it (symlinks, '..', file://, s3a://
    # ...) is refused (DestinationError: the CLI exits with 2).
    check_destinations(params.source_url, [("destination", params.dest_url)])
    ctx = FlowRunContext.get()
    run_name = ctx.flow_run.name if ctx and ctx.flow_run else "local"
    with DestinationLock(params.dest_url, run=run_name, wait_s=params.lock_wait_s, on_wait=logger.warning) as lock:
        if lock.took_over:
            logger.warning("took over the destination lock of a run that is gone: %s", describe(lock.took_over))
        return _enhance_locked(params, lock)


def _enhance_locked(params: EnhanceParams, lock: DestinationLock) -> Any:
    """enhance_archive's work, while this run holds the destination's lock."""
    logger = get_run_logger()
    t_start, wall_start = time.perf_counter(), time.time()
    registry = params.registry_url or default_registry()
    model = resolve_model(params.model, registry)
    listing: Listing = list_inputs(params.source_url, params.include, params.exclude, list(params.formats),
                                   params.include_hidden, params.storage_block)
    destination = read_destination(params.dest_url, params.storage_block)
    if destination["removed_temp_files"]:
        logger.warning("removed %d temp files left by an interrupted run", len(destination["removed_temp_files"]))
    settings = run_settings(params, model.id)
    the_plan: Plan = plan(listing.entries, destination["state"], destination["sizes"], settings,
                          params.output_format, params.overwrite, left_out=listing.left_out)
    run_id = _run_id()
    total = the_plan.total
    logger.info("%d photos under %s: %d to enhance, %d already done, %d refused, %d not read; model %s, mode %s",
                total, params.source_url, len(the_plan.todo), len(the_plan.skipped), len(the_plan.errors),
                len(the_plan.left_out), model.id, params.mode)
    log_failures(logger, the_plan.errors + the_plan.left_out, what="refused or not read at planning")
    _emit({"event": "planned", "total": total, "todo": len(the_plan.todo), "skipped": len(the_plan.skipped)})
    progress = Progress(f"Enhancing {params.source_url} -> {params.dest_url}")
    done_before = total - len(the_plan.todo)
    progress.update(done_before / total if total else 1.0)

    records: list[dict[str, Any]] = the_plan.records
    results: list[ShardResult] = []
    shards: list[Shard] = []
    phase_s, cluster_info, model_load_s = 0.0, None, None
    if the_plan.todo:
        with dask_cluster(params) as (cluster_info, client):
            from flows.warmup import warm_up_inference_workers

            logger.info("Dask %s at %s: %d workers (%d with GPU), %s torch threads each, ready in %.1f s; dpe %s",
                        cluster_info.kind, cluster_info.address, cluster_info.workers, cluster_info.gpu_workers,
                        cluster_info.torch_threads or "default", cluster_info.start_s, cluster_info.dpe_version)
            warm, model_load_s = warm_up_inference_workers(client, cluster_info, model.uri, params.device,
                                                           params.storage_block, logger, bf16=params.bf16)
            logger.info("model %s loaded on %d workers in %.1f s", model.id, len(warm), model_load_s)
            job = EnhanceJob(model_uri=model.uri, model_id=model.id, device=params.device, mode=params.mode,
                             strength=params.strength, bf16=params.bf16,
                             dest_url=params.dest_url, records_url=join(records_root(params.dest_url), run_id),
                             source_url=params.source_url,
                             output_format=params.output_format, quality=params.quality,
                             max_pixels=params.max_pixels, torch_threads=cluster_info.torch_threads,
                             settings=settings, storage_block=params.storage_block,
                             decode_timeout_s=params.decode_timeout_s, max_inflight_mb=params.max_inflight_mb,
                             owner=lock.owner, dpe_version=cluster_info.dpe_version,
                             **pipeline_options(cluster_info))
            n_shards = shard_count(len(the_plan.todo), cluster_info.inference_workers, params.shard_size)
            shards = make_shards(the_plan.todo, n_shards, params.previews)
            logger.info("%d shards of ~%d photos", len(shards), math.ceil(len(the_plan.todo) / max(1, n_shards)))
            with RunProgress(job.records_url, total, done_before, client=client, artifact=progress, log=logger.info,
                             work_total=sum(i.size + FILE_COST_BYTES for i in the_plan.todo),
                             item_cost=FILE_COST_BYTES) as live:
                new_records, results, phase_s = run_shards(shards, job, cluster_info, live)
            records.extend(new_records)

    counts: dict[str, int] = {"ok": 0, "skipped": 0, "error": 0}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    enhanced = counts["ok"]
    busy = sum(r.busy_s for r in results)
    gaps = dispatch_gaps(results)
    workers = cluster_info.workers if cluster_info else 0
    firsts = [r.first_output for r in results if r.first_output is not None]
    summary: dict[str, Any] = {
        "run_id": run_id, "source_url": params.source_url, "dest_url": params.dest_url, "model": model.id,
        "model_uri": model.uri, "mode": params.mode, "strength": params.strength, "settings": settings,
        "total": total, "counts": counts,
        # How the workers ran the net (fp32, bf16, fp16): CPU bf16 'auto' decides per worker on its first photos.
        "precision": sorted({r.precision for r in results if r.precision}),
        "shards": len(shards), "workers": workers, "cluster": cluster_info.kind if cluster_info else None,
        "cluster_start_s": round(cluster_info.start_s, 2) if cluster_info else None,
        "phase_s": round(phase_s, 2),
        # What a user waits for before the first enhanced photo exists (start-up and model warm-up included).
        "first_output_s": round(min(firsts) - wall_start, 2) if firsts else None,
        "photos_per_s": round(enhanced / phase_s, 3) if phase_s and enhanced else None,
        "task_busy_s": round(busy, 2),
        "overhead_per_shard_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
        "idle_per_shard_s": round((phase_s * workers - busy) / len(shards), 3) if shards and workers else None,
        "model_load_s": round(model_load_s, 2) if model_load_s is not None else None,
        "model_wait_s": round(sum(r.model_wait_s for r in results), 2),
        "shards_rerun": sum(r.attempt > 1 for r in results),  # run again by Dask after their worker died
        "peak_inflight_mb": max((r.peak_inflight_mb for r in results), default=0.0),
        "not_read": {"skipped": sum(r["status"] == "skipped" for r in the_plan.left_out),
                     "error": sum(r["status"] == "error" for r in the_plan.left_out)},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if lock.lost:  # another run took the destination over (this one stalled past its lease): merged all the same
        logger.error("%s", lock.lost)
        summary["lock_lost"] = lock.lost
    urls = write_report(params.dest_url, run_id, records, summary | {
        "total_s": round(time.perf_counter() - t_start, 2)}, params.source_url)
    summary |= urls
    summary["total_s"] = round(time.perf_counter() - t_start, 2)

    failures = sorted((r for r in records if r["status"] == "error"), key=lambda r: r["input"])
    previews = [p for r in sorted(results, key=lambda r: r.index) for p in r.previews][: params.previews]
    key = artifact_key("enhance", params.dest_url)
    in_words = f"{counts_words(counts['ok'], counts['error'], counts['skipped'])} of {total} photos"
    with contextlib.suppress(Exception):  # artifacts are reporting: never fail a finished run over them
        counts_table(summary, key=f"{key}-counts", description=f"Run {run_id}: {in_words}, "
                                                               f"{na(summary['photos_per_s'])} photos/s")
        publish_summary(summary_markdown(f"Enhance run {run_id}", summary, failures, previews), key=key,
                        description=f"{params.source_url} -> {params.dest_url}: {in_words}")
    progress.update(1.0)
    _emit({"event": "finished", "summary": summary})
    log_failures(logger, failures)
    by_policy = summary["not_read"]["skipped"]
    skipped = f"{counts['skipped']} skipped" + (f" ({by_policy} not read: link policy)" if by_policy else "")
    message = f"{counts['ok']} enhanced, {skipped}, {counts['error']} failed of {total} photos"
    if summary["first_output_s"] is not None:
        message += f"; first output after {summary['first_output_s']} s"
    logger.info("%s; report %s", message, summary["report_url"])
    return final_state("enhance", {"ok": counts["ok"], "failed": counts["error"], "skipped": counts["skipped"],
                                   "total": total}, message, summary, dest_url=params.dest_url,
                       extra={"run_id": run_id, "report_url": summary["report_url"]})
