"""Joining a --distribute multiworker cluster: TF_CONFIG checked before TensorFlow reads it, this worker's port
checked free, and a watchdog that ends a worker whose peers never join (--worker-wait)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
from typing import Iterator

from pipeline.errors import UserError


# The watchdog of stop_after, run by a separate Python: MultiWorkerMirroredStrategy() waits for every worker of the
# cluster inside TensorFlow's C++ without a time limit and holding the GIL, so no thread of this process can run meanwhile.
# It returns as soon as its stdin closes (the strategy was built); otherwise, after the wait, it names the workers whose
# address does not accept a connection and kills this process.
_WATCHDOG = """
import json, os, select, signal, socket, sys
parent, wait, peers = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
if select.select([sys.stdin], [], [], wait)[0]:
    sys.exit(0)
silent = []
for name, address in peers:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except (OSError, ValueError):
        silent.append(f"{name} at {address}")
if silent:
    who = ", ".join(silent) + " did not answer"
    fix = "start the same command there, with its own task index in TF_CONFIG, or check the address and that the port is open"
else:
    who = "every address answered, but the cluster did not form"
    fix = "check that every worker runs with the same TF_CONFIG cluster and its own task index"
print(f"error: --distribute multiworker: the workers did not all join within --worker-wait {wait:g} s: {who}; {fix}",
      file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def stop_after(seconds: float, peers: list[tuple[str, str]]) -> Iterator[None]:
    """Say what the process waits for, and kill it with one error line when `peers` ((name, address) of the other
    members of the cluster) have not all joined in time."""
    print(f"devices: waiting for the other workers of TF_CONFIG ({', '.join(f'{n} at {a}' for n, a in peers)}) to join, "
          f"at most {seconds:g} s (--worker-wait)", flush=True)
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds), json.dumps(peers)],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def check_tf_config() -> list[tuple[str, str]]:
    """TF_CONFIG names the cluster and this process's place in it; a bad one would otherwise hang or fail deep in TF.

    Returns the other members of the cluster, (name, address), e.g. ("worker 1", "10.0.0.2:12345").
    """
    text = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
               '"index": 0}}\' (index 1 on the second machine)')
    if not text:
        raise UserError(f"--distribute multiworker needs TF_CONFIG in the environment of every worker, e.g. {example}")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        members = cluster[task["type"]]
        index = task["index"]
        ok = isinstance(members, list) and isinstance(index, int) and 0 <= index < len(members)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not a valid cluster description ({type(error).__name__}: {error}); "
                        f"expected e.g. {example}") from None
    if not ok:
        raise UserError(f"TF_CONFIG task {task!r} is not one of the cluster's {task['type']} entries {members!r}; "
                        f"expected e.g. {example}")
    _check_own_port(f"{task['type']} {index}", members[index])
    return [(f"{job} {i}", address) for job, addresses in cluster.items() for i, address in enumerate(addresses)
            if (job, i) != (task["type"], index)]


def port_in_use_message(name: str | None = None, address: str | None = None) -> str:
    where = f"{name} at {address}" if name else "this worker's TF_CONFIG address"
    return (f"--distribute multiworker: TensorFlow could not listen on {where}: its port is in use by another "
            "program (or an earlier worker still running); stop that program, or give this worker a free port in "
            "TF_CONFIG's cluster, the same on every worker")


def _check_own_port(name: str, address: str) -> None:
    """Fail now, naming the address, when this worker's port is taken: TensorFlow would stop with a bare "Could not
    start gRPC server" traceback, and the other workers would wait for it until --worker-wait."""
    _, _, port = str(address).rpartition(":")
    if not port.isdigit():
        raise UserError(f"TF_CONFIG: {name}'s address {address!r} has no port; expected host:port, e.g. host1:12345")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no user
        try:
            probe.bind(("", int(port)))  # TensorFlow's server listens on every interface
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                return  # e.g. a port this user may not open: TensorFlow says so itself
            raise UserError(port_in_use_message(name, address)) from None
