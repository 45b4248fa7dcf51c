"""The arithmetic of per-photo progress (flows/progress.py, tasks/progress.py): what the bar, the log lines and the
artifact show when workers' events arrive late, twice, out of order, from other runs, or not at all."""

from __future__ import annotations

from flows.progress import RateEstimate, RunProgress, describe, duration
from tasks.progress import ShardProgress, counts_of


def _event(run: str, shard: int, done: int, ok: int | None = None, error: int = 0):
    return (1.0, {"run": run, "shard": shard, "done": done, "ok": done - error if ok is None else ok,
                  "error": error})


def test_events_sum_per_shard_and_a_finished_shard_counts_its_records():
    progress = RunProgress("run-a", total=20, already=4)
    progress.on_event(_event("run-a", 0, 3))
    progress.on_event(_event("run-a", 1, 2, error=1))
    progress.on_event(_event("run-b", 0, 9))  # another run on the same scheduler
    progress.on_event(_event("run-a", 0, 2))  # late, older report of shard 0
    progress.on_event((1.0, "not ours"))
    snap = progress.snapshot()
    assert (snap["done"], snap["ok"], snap["failed"]) == (4 + 3 + 2, 4, 1)

    records = [{"status": "ok"}] * 7 + [{"status": "error"}]
    progress.shard_done(0, records)  # the task's records replace its events
    progress.on_event(_event("run-a", 0, 5))  # a straggler after the result: ignored
    snap = progress.snapshot()
    assert (snap["done"], snap["ok"], snap["failed"]) == (4 + 8 + 2, 7 + 1, 1 + 1)


def test_rate_needs_a_few_seconds_and_uses_the_recent_window():
    rate = RateEstimate(window_s=10, min_span_s=3)
    rate.add(100.0, 1)
    rate.add(100.5, 4)  # a first burst (both workers' first photos) is not a rate yet
    assert rate.rate(101.0) is None
    for t in range(1, 30):
        rate.add(100.0 + t, 4 + 2 * t)  # then 2 photos/s
    assert abs(rate.rate(129.0) - 2.0) < 0.1


def test_a_run_shorter_than_the_rate_span_still_ends_with_its_rate():
    rate = RateEstimate(window_s=10, min_span_s=5)
    rate.add(100.0, 2)
    rate.add(101.0, 6)
    rate.add(102.0, 10)
    assert rate.rate(102.0) is None  # too short to show a live rate
    assert rate.settled(102.0) == 4.0  # but the finished run's last line has one
    assert describe({"done": 10, "total": 10, "failed": 0, "rate": 4.0, "eta_s": 0.0}, "photos").endswith(
        "4.00 photos/s, about 0 s left")


def test_describe_and_duration_read_like_a_sentence():
    assert duration(None) == "n/a" and duration(7.4) == "7 s" and duration(125) == "2 min 05 s"
    assert duration(3 * 3600 + 60 * 7) == "3 h 07 min"
    line = describe({"done": 12, "total": 46, "failed": 1, "rate": 2.314, "eta_s": 14.7})
    assert line == "12/46 photos (26%), 1 failed, 2.31 photos/s, about 15 s left"
    assert describe({"done": 0, "total": 3, "failed": 0, "rate": None, "eta_s": None}, "files") == (
        "0/3 files (0%), 0 failed, n/a files/s, time left n/a")


def test_shard_progress_is_throttled_and_cumulative():
    sent = []
    progress = ShardProgress("run-a", 3, every_s=60, send=sent.append)
    records = []
    for status in ["ok", "error", "ok", "ok"]:
        records.append({"status": status})
        progress.update(records)
    progress.update(records, force=True)
    assert sent == [{"run": "run-a", "shard": 3, "done": 1, "ok": 1, "error": 0, "bytes": 0},
                    {"run": "run-a", "shard": 3, "done": 4, "ok": 3, "error": 1, "bytes": 0}]
    assert counts_of([{"status": "valid", "bytes": 5}, {"status": "invalid", "bytes": 7}], ok="valid") == {
        "done": 2, "ok": 1, "error": 1, "bytes": 12}
    assert ShardProgress("run-a", 0).send is None  # outside a Dask worker nothing is sent


def test_time_left_follows_the_work_not_the_photo_count():
    """Shards run their costliest photos first: with 2 big photos of 10 done (half the work: 2 x 400 bytes of 1600),
    the time left is that of the remaining work, not of 8 more photos at the pace of the big ones."""
    now = [0.0]
    progress = RunProgress("run-a", total=10, already=0, work_total=1600, item_cost=0, clock=lambda: now[0])
    progress.on_event((1.0, {"run": "run-a", "shard": 0, "done": 1, "ok": 1, "error": 0, "bytes": 400}))
    progress.snapshot()  # the first report: where rates are counted from
    now[0] = 10.0
    progress.on_event((1.0, {"run": "run-a", "shard": 0, "done": 2, "ok": 2, "error": 0, "bytes": 800}))
    snap = progress.snapshot()
    assert snap["rate"] == 0.1 and snap["eta_s"] == 20.0, snap  # by photo count: 80 s


def test_training_progress_reads_the_workers_clock_and_shows_losses_and_time_left():
    """A training task's events (one a second) become the line of `dpe train`: iteration, the task's loss text, the
    rate over the worker's own clock (data loading before the first iteration does not count) and time left."""
    from flows import progress as module
    from flows.progress import TrainingProgress, describe_training

    now = [100.0]
    seen: list[dict] = []
    module.LISTENERS.append(seen.append)
    logged: list[str] = []
    try:
        follow = TrainingProgress("train-a", 1000, log=lambda fmt, line: logged.append(line), log_every_s=5,
                                  clock=lambda: now[0])
        assert follow.tick()["iteration"] is None and "starting" in seen[-1]["line"]
        text = "G loss -2.25 | critic loss 1.5 | lambda_Y 12 | lambda_X 10"
        for k, it in enumerate(range(201, 221, 4)):  # resumed at 200; 4 iterations a second on the worker's clock
            now[0] += 1.0
            follow.on_event((now[0], {"run": "train-a", "iteration": it, "steps": 1000, "first_iteration": 200,
                                      "seconds": 30.0 + k, "text": text}))
        follow.on_event((now[0], {"run": "train-b", "iteration": 999, "seconds": 1.0}))  # another run
        follow.on_event((now[0], {"run": "train-a", "iteration": 205, "seconds": 31.0}))  # late and older
        snap = follow.tick()
        assert snap["iteration"] == 217 and snap["rate"] == 4.0 and snap["eta_s"] == round(783 / 4, 1)
        assert seen[-1]["line"] == describe_training(snap) == (
            "iteration 217/1000 (21.7%) | G loss -2.25 | critic loss 1.5 | lambda_Y 12 | lambda_X 10 | "
            "4.00 it/s, about 3 min 16 s left")
        assert logged == ["iteration 217/1000 (21.7%) | " + text + " | 4.00 it/s, about 3 min 16 s left"]
        assert describe_training({"iteration": 5, "steps": 10, "text": "", "rate": 0.5, "eta_s": 10.0}) == (
            "iteration 5/10 (50.0%) | 2.00 s/it, about 10 s left")
    finally:
        module.LISTENERS.remove(seen.append)


def test_the_training_task_sends_at_most_one_event_a_second_and_always_its_last_iteration(monkeypatch):
    from tasks import train as task_module

    on_iteration, flush = task_module.live_reporter("train-a", 50)
    on_iteration({"iteration": 1, "steps": 50, "first_iteration": 0, "seconds": 0.1})
    flush()  # outside a Dask worker: nothing is sent, nothing fails

    sent: list[dict] = []
    reporter = task_module.Reporter("train-a", 1.0, send=sent.append)
    monkeypatch.setattr(task_module, "Reporter", lambda run, every_s: reporter)
    on_iteration, flush = task_module.live_reporter("train-a", 50)
    for it in range(1, 31):  # 30 fast iterations inside one second: the first only, then the stop_after flush
        on_iteration({"iteration": it, "steps": 50, "first_iteration": 0, "seconds": it / 100, "loss_generator": 0.5,
                      "train_psnr": 21.0, "eval_psnr": 22.5, "eval_identity_psnr": 20.0})
    flush()
    assert [m["iteration"] for m in sent] == [1, 30]
    assert sent[-1]["text"] == "G loss 0.5 | train PSNR 21.00 dB | held-out 22.50 dB (identity 20.00)"
    assert sent[-1]["metrics"]["eval_psnr"] == 22.5 and sent[-1]["run"] == "train-a"


def test_a_finished_training_task_sets_the_final_count_even_when_its_last_event_is_late():
    from flows.progress import TrainingProgress

    follow = TrainingProgress("train-a", 30, clock=lambda: 5.0)
    follow.on_event((1.0, {"run": "train-a", "iteration": 20, "steps": 30, "seconds": 4.0, "text": "G loss 1"}))
    follow.finished(30)
    follow.on_event((1.0, {"run": "train-a", "iteration": 29, "steps": 30, "seconds": 5.0}))  # late: ignored
    snap = follow.snapshot()
    assert (snap["iteration"], snap["eta_s"], snap["text"]) == (30, 0.0, "G loss 1")
    empty = TrainingProgress("train-b", 30)
    empty.finished(12)  # stopped early (stop_after) before any event came through
    assert empty.snapshot()["iteration"] == 12


def test_a_local_cpu_worker_leaves_one_core_to_the_codecs_beside_the_model():
    from flows.cluster import ClusterInfo, cpu_worker_threads
    from flows.enhance import pipeline_options

    # One worker on 2 cores: torch on one, decode/encode beside it on the other.
    assert cpu_worker_threads(2, None) == (1, 1)
    assert cpu_worker_threads(16, None) == (15, 1)
    # One core per worker: nothing to spare; a thread count asked for is kept.
    assert cpu_worker_threads(1, None) == (1, 0)
    assert cpu_worker_threads(8, 8) == (8, 0) and cpu_worker_threads(8, 4) == (4, 4)

    def info(threads, spare, gpus=0):
        return ClusterInfo("tcp://127.0.0.1:1", "LocalCluster", 1, gpus, threads, 0.0, spare_cores=spare)

    beside = pipeline_options(info(1, 1))
    assert beside["overlap_cpu"] and beside["prefetch"] and not beside.get("decode_ahead")
    alone = pipeline_options(info(2, 0))  # torch on every core: nothing beside the model but the next decode
    assert not alone["overlap_cpu"] and alone["decode_ahead"]
    assert not pipeline_options(info(1, 0))["overlap_cpu"]
