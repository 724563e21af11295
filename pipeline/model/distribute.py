"""Which devices train: one tf.distribute strategy per process (--distribute) and the float policy (--mixed-precision).

- `none`: TensorFlow's default, one device (the first GPU if there is one, else the CPU).
- `mirrored`: MirroredStrategy over every visible GPU; with no GPU, over the logical CPU devices (one, unless
  the process split its CPU with `tf.config.set_logical_device_configuration`, as the tests do).
- `multiworker`: MultiWorkerMirroredStrategy over the machines named in `TF_CONFIG`; every worker runs the
  same command on the same data, and only the chief writes anything that lasts.
- `auto`: `mirrored` when more than one GPU is visible, else `none`.

--batch-size stays the global batch (items per optimizer step, split across the replicas), so a fit on 1 or 8
devices takes the same steps with the same learning-rate schedule; on many GPUs raise --batch-size to fill them.

MultiWorkerMirroredStrategy must exist before TensorFlow runs its first op (it configures the collective
ops of the runtime), so `setup` runs first in a run, and strategies are kept per process: a sweep's later
runs reuse the one built for the first.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import multiprocessing.pool
import os
import re
import shutil
import tempfile
from types import TracebackType
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from pipeline.model import cluster
from pipeline.run.config import DISTRIBUTE_MODES, RunConfig
from pipeline.errors import UserError

MODES = DISTRIBUTE_MODES
_strategies: dict[str, tf.distribute.Strategy] = {}  # built once per process, per mode
_current: dict[str, object] = {}  # the strategy and mixed-precision setting of the run in progress


def setup(cfg: RunConfig) -> RunConfig:
    """Build (or reuse) the run's strategy before any other TensorFlow op, check --mixed-precision, say what is used.

    Returns the config to run: a non-chief worker's runs, caches and ledger go to a temporary folder removed
    at exit, so that only the chief writes outputs (every worker still runs every fit: the collectives need them).
    """
    if cfg.distribute not in MODES:  # RunConfig checks it too; this guards direct callers
        raise UserError(f"--distribute must be one of {', '.join(MODES)}, got {cfg.distribute!r}")
    if cfg.mixed_precision and not tf.config.list_physical_devices("GPU"):  # listing devices starts no runtime
        # refused, not ignored: it changes the numbers (and keys the teacher), and float16 on a CPU is emulated, slower
        raise UserError("--mixed-precision needs a GPU, and TensorFlow sees none (tf.config.list_physical_devices('GPU') "
                        "is empty); drop --mixed-precision, or on a GPU machine install the CUDA wheels: make install GPU=1")
    mode = _resolve(cfg.distribute)
    peers = cluster.check_tf_config() if mode == "multiworker" else []
    if mode not in _strategies:
        _strategies[mode] = _build(mode, cfg.worker_wait, peers)
    strategy = _strategies[mode]
    if cfg.batch_size < strategy.num_replicas_in_sync:
        raise UserError(f"--batch-size {cfg.batch_size} is smaller than the {strategy.num_replicas_in_sync} replicas of "
                        f"--distribute {cfg.distribute}: --batch-size is the global batch, split across the replicas; "
                        f"use --batch-size {strategy.num_replicas_in_sync} or more")
    _current.update(strategy=strategy, mixed_precision=cfg.mixed_precision)
    devices = ", ".join(strategy.extended.worker_devices) if mode != "none" else _default_device()
    print(f"devices: {type(strategy).__name__} (--distribute {cfg.distribute}), {strategy.num_replicas_in_sync} "
          f"replica(s) on {devices}" + (", mixed_float16" if cfg.mixed_precision else ""), flush=True)
    if mode == "multiworker" and not is_chief():
        scratch = tempfile.mkdtemp(prefix="pipeline-worker-")
        atexit.register(shutil.rmtree, scratch, True)
        print(f"{_task()}: not the chief; training in step with it, writing only to {scratch} (removed at exit)",
              flush=True)
        return cfg.replace(runs_dir=os.path.join(scratch, "runs"), cache_dir=os.path.join(scratch, "cache"),
                           record=False, output=None)
    return cfg


def strategy() -> tf.distribute.Strategy:
    """The strategy of the run in progress; TensorFlow's default (one device) when `setup` has not run."""
    return _current.get("strategy") or tf.distribute.get_strategy()


def replicas() -> int:
    return strategy().num_replicas_in_sync


def is_multiworker() -> bool:
    return isinstance(strategy(), tf.distribute.MultiWorkerMirroredStrategy)


def is_chief() -> bool:
    """True except on a MultiWorkerMirroredStrategy worker that is not the chief (task 0 unless TF_CONFIG names one)."""
    if not is_multiworker():
        return True
    resolver = strategy().cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


@contextlib.contextmanager
def model_scope() -> Iterator[None]:
    """Build models here: their variables mirrored across the replicas, their layers in mixed_float16 when
    --mixed-precision. The policy is restored on exit, so the input pipeline's augmentation layers stay float32."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if _current.get("mixed_precision") else "float32")
    try:
        with strategy().scope():
            yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def detach_for_multiworker(model: keras.Model) -> None:
    """Work around Keras 3's fit under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388), which fails twice:
    its symbolic build all-reduces a data batch, and its train step averages the scalar logs along an axis 0.

    The model is built and compiled, so it needs no symbolic build: without a strategy of its own, fit finds
    the strategy with tf.distribute.get_strategy() (train.fit calls it inside the strategy's scope) and predict,
    outside it, runs on the worker's own device. The logs get the axis the average expects.
    """
    model._distribute_strategy = None
    step = model.train_step
    model.train_step = lambda data: {name: tf.reshape(value, [1]) for name, value in step(data).items()}


@contextlib.contextmanager
def peers_alive(what: str) -> Iterator[None]:
    """Around collective work (a fit, a check): under --distribute multiworker, a worker that stopped (killed, out of
    memory, its machine gone) makes the others' collective ops fail within seconds (measured: 2-7 s); say so in
    one line instead of a traceback from deep in TensorFlow, which names nothing on this machine.

    Other errors, and every error on one machine, pass through unchanged.
    """
    try:
        yield
    except tf.errors.OpError as error:
        lost = isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)) or \
            "Collective ops is aborted" in str(error)
        if not (lost and is_multiworker()):
            raise
        _terminate_pools_left_in(error.__traceback__)
        reason = re.search(r"Collective ops is aborted by: ([^\n]+)", str(error))
        detail = (reason.group(1) if reason else str(error).strip().splitlines()[0]).strip().rstrip(":")
        raise UserError(f"--distribute multiworker: another worker stopped during {what} ({type(error).__name__}: "
                        f"{detail}); a multi-worker run needs every worker until the end: see that worker's output "
                        f"for why it stopped, then start every worker again") from error


def _terminate_pools_left_in(traceback: TracebackType | None) -> None:
    """TensorFlow's eager all-reduce maps over a `multiprocessing.pool.ThreadPool` and closes it only when the map
    returns: when a peer died, the map raised and the pool stayed open in the failed frames. Collected at interpreter
    exit, after its pipe was closed, its `__del__` printed a traceback below the one error line (seen under load only).
    Terminate it now, while it can still shut down."""
    while traceback is not None:
        for value in list(traceback.tb_frame.f_locals.values()):
            if isinstance(value, multiprocessing.pool.Pool):
                value.terminate()
        traceback = traceback.tb_next


def average_replica_statistics(model: keras.Model) -> None:
    """Give every replica the mean of their batch-norm moving statistics after a fit.

    Keras updates them on each replica from its own share of the batch and never reconciles them, so the
    replicas (and, across machines, the workers) would predict with slightly different models: workers would
    then pick different pseudo-labels, and could even disagree on the next fit's number of steps.
    """
    if strategy().num_replicas_in_sync == 1 or not model.non_trainable_variables:
        return
    variables = model.non_trainable_variables

    def mean_over_replicas():
        context = tf.distribute.get_replica_context()
        return [context.all_reduce("MEAN", tf.identity(v.value)) for v in variables]

    with peers_alive("the averaging of batch-norm statistics after a fit"):
        means = strategy().run(tf.function(mean_over_replicas))
    for variable, mean in zip(variables, means):
        variable.assign(strategy().experimental_local_results(mean)[0])


def check_workers_agree(what: str, mine: str, fix: str) -> None:
    """Under --distribute multiworker, stop every worker with one clear error when they computed different `what`.

    Workers train in step only while each runs the same fits for the same steps: a worker with one more training
    image takes more steps, and one that picks no pseudo-labels skips a student fit, and the others then wait in a
    collective op for a partner that never comes. `mine` is this worker's value (a digest, a count); an all-gather
    of its hash is this check's one collective, and every worker reaches it at the same point of the run.
    """
    if not is_multiworker():
        return
    digest = np.frombuffer(hashlib.sha256(mine.encode()).digest()[:16], dtype=np.int32)

    def gather():
        return tf.distribute.get_replica_context().all_gather(tf.constant(digest)[None], axis=0)

    with peers_alive(f"the check of their {what}"):
        gathered = strategy().experimental_local_results(strategy().run(tf.function(gather)))[0].numpy()
    distinct = {row.tobytes() for row in gathered}  # one row per replica
    if len(distinct) > 1:
        raise UserError(f"--distribute multiworker: the workers' {what} differ ({len(distinct)} different values among "
                        f"{len(gathered)} replicas; {_task()} has {mine[:20]}), so they cannot train in step; {fix}")


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Workers split batches by element: the datasets are built from in-memory arrays, not files, so the
    default (shard by file, then by data with a warning) has no files to split."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _resolve(mode: str) -> str:
    if mode == "auto":
        return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    return mode


def _build(mode: str, worker_wait: float, peers: list[tuple[str, str]]) -> tf.distribute.Strategy:
    if mode == "none":
        return tf.distribute.get_strategy()
    if mode == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    with cluster.stop_after(worker_wait, peers):
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except tf.errors.UnknownError as error:  # its port was taken between the check and the server's start
            if "Could not start gRPC server" not in str(error):
                raise
            raise UserError(cluster.port_in_use_message()) from None
        except RuntimeError as error:  # a bug in the caller's order, not the user's input: keep the traceback
            raise RuntimeError("MultiWorkerMirroredStrategy must be created before TensorFlow runs any op in this "
                               "process: call pipeline.model.distribute.setup(cfg) first") from error


def _task() -> str:
    resolver = strategy().cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}"


def _default_device() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name
