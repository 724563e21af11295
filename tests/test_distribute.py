"""tf.distribute: MirroredStrategy over two logical CPU devices, two MultiWorkerMirroredStrategy workers on
127.0.0.1, and the options' validation.

Logical devices and the multi-worker runtime must be configured before TensorFlow starts, so the training tests
run the pipeline in fresh processes (this one has long started TensorFlow)."""
from __future__ import annotations

import json
import multiprocessing.pool
import os
import re
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.run.config import RunConfig, teacher_settings
from pipeline.errors import UserError
from pipeline.plugin.registry import get_competition
from pipeline.submission import load_submission

pytestmark = pytest.mark.xdist_group("distribute")
REPO = Path(__file__).resolve().parent.parent
# teacher only (the strategy is the point, not pseudo-labels), 32 px, a narrow resnet, 80 steps of 32 images
TINY_RUN = ["--competition", "fisheries", "--image-size", "32", "--epochs", "3", "--min-steps", "80", "--width", "8",
            "--folds", "1", "--pseudo-ratio", "0", "--on-shift", "ignore"]
# One device vs two replicas: the same global batches, steps, schedule and seeds; the replicas differ in float
# summation order and take batch-norm batch statistics over their own half batch. Measured at this budget: holdout
# log loss 1.921 with two replicas vs 1.916 on one device (seed 0, the test's), 1.903 vs 1.945 with seed 1, and
# 1.916 vs 1.945 between seeds 0 and 1 on one device: a seed-sized perturbation. The tolerance sits above those
# and well below what a broken distributed fit costs: the teacher is 0.16 below chance (log 8 = 2.079), which the
# test also requires so that "close" means something. A misordered prediction could hide in a score, so the
# prediction order is checked exactly.
HOLDOUT_TOLERANCE = 0.08
CHANCE = 2.079  # log loss of the uniform prediction over fisheries' 8 classes


def _environment(**changes: str) -> dict:
    """This environment for a child Python that imports the pipeline from this checkout."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**environment, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **changes}


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.__main__ import main
    from pipeline.model import distribute
    from pipeline.model import train
    from pipeline.model.spec import ModelSpec, TrainSettings
    from pipeline.run.config import RunConfig
    from pipeline.errors import UserError

    tmp, args = sys.argv[1], sys.argv[2:]
    for mode in ("mirrored", "none"):  # separate caches: the strategy does not key the teacher
        code = main(["submit", *args, "--distribute", mode, "--run-name", mode, "--cache-dir", f"{tmp}/cache-{mode}"])
        assert code == 0, (mode, code)

    # the prediction order: mirrored replicas split uneven batches (16 + 5 rows, reversed), outputs must line up
    cfg = RunConfig(competition="fisheries", data=tmp, distribute="mirrored", image_size=32, width=8, batch_size=4, tta=False)
    distribute.setup(cfg)
    spec = ModelSpec(TrainSettings.of(cfg), 3, False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    model, _ = train.fit(spec, "check", x, np.eye(3, dtype=np.float32)[rng.integers(0, 3, 21)], 3, 0, "none")
    rows = np.arange(21)[::-1]
    distributed = train.predict(model, x, rows, spec)
    local = spec.build()  # one device, outside the strategy
    local.set_weights(model.get_weights())
    direct = local.predict(x[rows], verbose=0)
    # the students' own train steps (foreign pseudo-labels in a pass of their own; online labels) under the strategy
    y = np.eye(3, dtype=np.float32)[np.arange(21) % 3]
    wide = ModelSpec(TrainSettings.of(cfg.replace(batch_size=8)), 3, False)  # 8 foreign items a step: their own pass
    _, own = train.fit(wide, "own", x, y, 2, 0, "none", pseudo=(x, y), pseudo_foreign=np.ones(21, bool))
    _, online = train.fit(wide, "online", x, y, 2, 0, "none", unlabeled=x)
    try:
        distribute.setup(cfg.replace(batch_size=1))
        refused = ""
    except UserError as error:
        refused = str(error)
    print("CHECK " + json.dumps({"max_diff": float(np.abs(distributed - direct).max()), "spread": float(np.ptp(direct)),
                                 "refused": refused, "own": [own["pseudo_per_batch"], own["final_loss"]],
                                 "online_loss": online["final_loss"]}))
""")


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_gives_the_submission_and_nearly_the_score_of_one_device(tiny_fisheries, tmp_path):
    data = tiny_fisheries / "data"
    args = [*TINY_RUN, "--data", str(data), "--solution", str(tiny_fisheries / "solution.csv"), "--runs-dir",
            str(tmp_path / "runs"), "--no-ledger"]
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path), *args], cwd=REPO, env=_environment(),
                          capture_output=True, text=True, timeout=WORKER_BUDGET + 50)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "devices: MirroredStrategy (--distribute mirrored), 2 replica(s)" in done.stdout
    assert "devices: _DefaultDistributionStrategy (--distribute none), 1 replica(s)" in done.stdout

    fisheries = get_competition("fisheries")
    runs = tmp_path / "runs" / "fisheries"
    metrics = {mode: json.loads((runs / mode / "metrics.json").read_text()) for mode in ("mirrored", "none")}
    for mode, replicas in (("mirrored", 2), ("none", 1)):
        assert metrics[mode]["teacher_training"]["models"][0]["replicas"] == replicas
        table = load_submission(runs / mode / "submission.csv", fisheries, data)
        assert table["image"].tolist() == fisheries.expected_ids(data)
        assert table.shape == (len(fisheries.expected_ids(data)), 1 + 8)  # image + the 8 species
    assert metrics["mirrored"]["teacher_training"]["models"][0]["steps"] == metrics["none"]["teacher_training"]["models"][0]["steps"]
    mirrored, one = metrics["mirrored"]["holdout"]["teacher"], metrics["none"]["holdout"]["teacher"]
    print(f"holdout log loss: two replicas {mirrored:.4f}, one device {one:.4f}")
    assert one < CHANCE - 0.1  # it learned something
    assert abs(mirrored - one) <= HOLDOUT_TOLERANCE, (mirrored, one)

    check = json.loads(re.search(r"^CHECK (.*)$", done.stdout, re.M).group(1))
    assert check["spread"] > 1e-3  # the rows' predictions differ, so a misordering would show
    assert check["max_diff"] < 1e-5
    assert "--batch-size 1 is smaller than the 2 replicas" in check["refused"]
    assert check["own"][0] == 8 and 0 < check["own"][1] < 10 and 0 < check["online_loss"] < 10  # ran on 2 replicas


# Every wait on a worker process ends well inside the per-test timeout (pyproject.toml): a worker that hangs then
# fails its test with its output, instead of the timeout killing the xdist worker with nothing to read.
WORKER_BUDGET = 150


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range starts at 32768), so
    that no other test's connection or `bind(0)` can take it in the seconds before TensorFlow listens on it (a
    bind(0) port could be, and a worker that cannot listen left its peer waiting: CI, 2026-12-02)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


def _start_workers(commands: list[list[str]], outputs: list | None = None) -> list[subprocess.Popen]:
    """One `python -m pipeline` process per command, the workers of one cluster on 127.0.0.1, each writing to its
    file in `outputs` (default: a pipe)."""
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in commands]}
    workers = []
    for index, command in enumerate(commands):
        env = _environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        # --worker-wait: a cluster that does not form fails the test within its budget, naming the silent worker
        workers.append(subprocess.Popen([sys.executable, "-m", "pipeline", *command, "--worker-wait", "60"], cwd=REPO,
                                        env=env, text=True,
                                        stdout=outputs[index] if outputs else subprocess.PIPE,
                                        stderr=subprocess.STDOUT))
    return workers


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:  # a worker left waiting on a crashed peer must not outlive the test
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _run_two_workers(commands: list[list[str]]) -> list[tuple[int, str]]:
    """Run the commands as the two workers of a cluster on 127.0.0.1: (exit status, output) of each."""
    workers = []
    try:
        workers = _start_workers(commands)
        outputs = [worker.communicate(timeout=WORKER_BUDGET)[0] for worker in workers]
    finally:
        _stop(workers)
    return [(worker.returncode, output) for worker, output in zip(workers, outputs)]


@pytest.mark.slow
def test_two_multiworker_processes_on_localhost_train_in_step_and_only_the_chief_writes(tiny_fisheries, tmp_path):
    # one self-training round too: the workers must pick as many pseudo-labels (a check all-gathers the count)
    # (every selected label at weight 1: a tiny teacher earns none under the default --pseudo-weight net)
    command = ["submit", *TINY_RUN, "--min-steps", "20", "--pseudo-ratio", "0.25", "--pseudo-rounds", "1", "--pseudo-weight", "none",
               "--student-epochs", "1", "--data", str(tiny_fisheries / "data"), "--distribute", "multiworker",
               "--runs-dir", str(tmp_path / "runs"),
               "--cache-dir", str(tmp_path / "cache")]  # one folder for both, as on a shared disk
    results = _run_two_workers([command, command])
    outputs = [output for _, output in results]
    for status, output in results:
        assert status == 0, output[-4000:]
        assert "CollectiveAllReduceStrategy (--distribute multiworker), 2 replica(s)" in output
    scratch = re.search(r"not the chief; training in step with it, writing only to (\S+)", outputs[1]).group(1)
    assert not Path(scratch).exists()  # the worker's outputs went there and were removed at exit
    assert "not the chief" not in outputs[0]
    holdouts = [re.search(r"^holdout\s+teacher (\S+)\s+control (\S+)\s+student (\S+)", output, re.M).groups()
                for output in outputs]
    assert holdouts[0] == holdouts[1]  # the same models on both: weights and batch-norm statistics in step
    picked = [re.search(r"^student round 1/1: (\d+) pseudo-labels", output, re.M).group(1) for output in outputs]
    assert picked[0] == picked[1] and int(picked[0]) > 0

    run_dirs = list((tmp_path / "runs" / "fisheries").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "submission.csv").is_file()
    with sqlite3.connect(tmp_path / "runs" / "ledger.sqlite") as ledger:
        assert ledger.execute("SELECT run_id, status FROM runs").fetchall() == [(run_dirs[0].name, "done")]
    info = json.loads((run_dirs[0] / "metrics.json").read_text())["teacher_training"]["models"][0]
    assert info["replicas"] == 2 and info["steps"] == 20
    teachers = list((tmp_path / "cache" / "fisheries" / "teachers").iterdir())
    assert len(teachers) == 1  # written by the chief, for later runs on one machine


@pytest.mark.slow
def test_multiworker_workers_with_different_data_stop_with_one_clear_error_before_training(tiny_fisheries, tmp_path):
    copy = tmp_path / "copy"  # the second machine's copy of the data has one more training image
    shutil.copytree(tiny_fisheries / "data", copy)
    image = sorted((copy / "train" / "ALB").iterdir())[0]
    shutil.copy(image, image.with_name("img_extra.jpg"))
    commands = [["submit", *TINY_RUN, "--data", str(data), "--distribute", "multiworker", "--runs-dir",
                 str(tmp_path / f"runs-{index}"), "--cache-dir", str(tmp_path / f"cache-{index}"), "--no-ledger"]
                for index, data in enumerate([tiny_fisheries / "data", copy])]
    for status, output in _run_two_workers(commands):
        assert status == 2, output[-4000:]
        assert re.search(r"^error: --distribute multiworker: the workers' training images, labels, test ids or teacher "
                         r"options differ .* give every worker the same copy of the data", output, re.M), output[-4000:]
        assert not re.search(r": step \d+/\d+, loss", output)  # stopped before the first fit


@pytest.mark.slow
def test_a_multiworker_worker_whose_peer_dies_mid_fit_stops_by_itself_with_one_error_line(tiny_fisheries, tmp_path):
    logs = [tmp_path / f"worker-{index}.log" for index in range(2)]
    commands = [["submit", *TINY_RUN, "--min-steps", "400", "--data", str(tiny_fisheries / "data"), "--distribute",
                 "multiworker", "--runs-dir", str(tmp_path / f"runs-{index}"), "--cache-dir", str(tmp_path / f"cache-{index}"),
                 "--no-ledger"] for index in range(2)]
    workers = []
    try:
        with open(logs[0], "w") as first, open(logs[1], "w") as second:
            workers = _start_workers(commands, [first, second])
        deadline = time.monotonic() + WORKER_BUDGET - 40
        while "teacher: step 40/400" not in logs[0].read_text():  # a tenth of the fit done: both are in it
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
                "\n".join(log.read_text()[-3000:] for log in logs)
            time.sleep(0.2)
        workers[1].kill()  # as if its machine went down
        status = workers[0].wait(timeout=40)  # the survivor stops by itself (measured: 2-7 s; 28 s on a loaded machine)
    finally:
        _stop(workers)
    output = logs[0].read_text()
    assert status == 2, output[-4000:]
    assert re.search(r"^error: --distribute multiworker: another worker stopped during the fit of the teacher "
                     r"\(UnavailableError: .+\); a multi-worker run needs every worker until the end", output, re.M), \
        output[-4000:]
    assert "Traceback" not in output
    assert "teacher: step 400/400" not in output


@pytest.mark.slow
def test_a_multiworker_worker_alone_says_what_it_waits_for_and_stops_after_worker_wait(tiny_fisheries, tmp_path):
    silent = f"127.0.0.1:{_free_port()}"  # worker 1 never starts
    env = _environment(TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{_free_port()}", silent]},
                                             "task": {"type": "worker", "index": 0}}))
    command = [sys.executable, "-m", "pipeline", "submit", *TINY_RUN, "--data", str(tiny_fisheries / "data"), "--distribute",
               "multiworker", "--worker-wait", "5", "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
               str(tmp_path / "cache")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_BUDGET)
    output = done.stdout + done.stderr
    assert done.returncode == -9, output[-4000:]  # TensorFlow's wait cannot be interrupted: the watchdog kills it
    assert f"devices: waiting for the other workers of TF_CONFIG (worker 1 at {silent}) to join, at most 5 s" in done.stdout
    assert (f"error: --distribute multiworker: the workers did not all join within --worker-wait 5 s: worker 1 at "
            f"{silent} did not answer; start the same command there") in done.stderr
    assert not (tmp_path / "runs").exists()  # stopped before any run folder or ledger


def test_a_multiworker_worker_whose_port_is_taken_stops_at_once_naming_its_address(tiny_fisheries, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mine = f"127.0.0.1:{taken.getsockname()[1]}"
        env = _environment(TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{_free_port()}", mine]},
                                                 "task": {"type": "worker", "index": 1}}))
        command = [sys.executable, "-m", "pipeline", "submit", *TINY_RUN, "--data", str(tiny_fisheries / "data"),
                   "--distribute", "multiworker", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_BUDGET)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-4000:]
    assert (f"error: --distribute multiworker: TensorFlow could not listen on worker 1 at {mine}: its port is in use "
            "by another program") in done.stderr, output[-4000:]
    assert "Traceback" not in output and "waiting for the other workers" not in output
    assert not (tmp_path / "runs").exists()


def test_workers_compare_decoded_pixels_and_labels_not_a_frozen_backbones_embeddings(tiny_fisheries, tmp_path):
    """Workers compare `worker_data_key`: embeddings may differ in their last bits between devices, pixels may not."""
    import dataclasses

    import numpy as np

    from pipeline.model.spec import ModelSpec, TrainSettings
    from pipeline.data.items import load_items
    from pipeline.cache.teachers import worker_data_key
    from tests.conftest import tiny_config

    data = tiny_fisheries / "data"
    fisheries = get_competition("fisheries")
    cfg = tiny_config(data, tmp_path)
    items = load_items(cfg, fisheries, data, fisheries.train_items(data), fisheries.test_items(data))
    spec = ModelSpec(TrainSettings.of(cfg), len(items.classes), False)
    key = worker_data_key(cfg, spec, items)
    embeddings = np.random.default_rng(0).standard_normal((len(items.y), 16)).astype(np.float32)
    on_one = dataclasses.replace(items, train_x=embeddings)
    on_another = dataclasses.replace(items, train_x=np.nextafter(embeddings, np.inf))  # one ulp apart
    assert worker_data_key(cfg, spec, on_one) == worker_data_key(cfg, spec, on_another) == key

    pixels = items.train_x.copy()
    pixels[0, 0, 0, 0] ^= 1
    assert worker_data_key(cfg, spec, dataclasses.replace(items, train_x=pixels)) != key
    relabeled = items.y.copy()
    relabeled[0] = np.roll(relabeled[0], 1)
    assert worker_data_key(cfg, spec, dataclasses.replace(items, y=relabeled)) != key
    assert worker_data_key(cfg.replace(epochs=cfg.epochs + 1), spec, items) != key  # a teacher option
    assert worker_data_key(cfg.replace(runs_dir="elsewhere", cache_dir="elsewhere/cache"), spec, items) == key


def test_distribute_must_be_one_of_the_strategies():
    with pytest.raises(UserError, match=r"--distribute must be one of auto, none, mirrored, multiworker, got 'gpu'"):
        RunConfig(distribute="gpu")


def test_bad_distribute_flag_is_one_error_line_and_exit_status_2(tmp_path, capsys):
    from pipeline.__main__ import main

    assert main(["submit", "--competition", "fisheries", "--data", str(tmp_path), "--distribute", "all-gpus"]) == 2
    assert "error: --distribute must be one of auto, none, mirrored, multiworker" in capsys.readouterr().err


def test_mixed_precision_keys_the_teacher_and_the_strategy_does_not():
    base = teacher_settings(RunConfig())
    assert teacher_settings(RunConfig(mixed_precision=True)) != base
    assert teacher_settings(RunConfig(distribute="mirrored")) == base


@pytest.mark.parametrize("tf_config, expected", [
    (None, "needs TF_CONFIG in the environment of every worker"),
    ("{not json", "TF_CONFIG is not a valid cluster description"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not a valid cluster description"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "is not one of the cluster's worker"),
])
def test_multiworker_refuses_a_missing_or_bad_tf_config_before_building_anything(monkeypatch, tf_config, expected):
    from pipeline.model import distribute

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=re.escape(expected)):
        distribute.setup(RunConfig(distribute="multiworker"))
    assert not distribute.is_multiworker()


def test_mixed_precision_is_refused_without_a_gpu():
    import tensorflow as tf

    from pipeline.model import distribute

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: mixed precision is allowed here")
    with pytest.raises(UserError, match=r"--mixed-precision needs a GPU.*make install GPU=1"):
        distribute.setup(RunConfig(mixed_precision=True, distribute="none"))


def test_a_thread_pool_a_failed_all_reduce_left_running_is_terminated_before_the_error_line():
    # TensorFlow's eager all-reduce closes its ThreadPool only when the map returns; a dead peer makes the map raise
    from pipeline.model.distribute import _terminate_pools_left_in

    pools = []

    def all_reduce():
        pool = multiprocessing.pool.ThreadPool(1)
        pools.append(pool)
        pool.map(lambda _: 1 / 0, [0])

    with pytest.raises(ZeroDivisionError) as failed:
        all_reduce()
    assert pools[0]._state == "RUN"
    _terminate_pools_left_in(failed.value.__traceback__)
    assert pools[0]._state == "TERMINATE"
