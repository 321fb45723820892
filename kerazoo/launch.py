"""Local multi-worker runs: one process per worker with its TF_CONFIG, logs prefixed, all stopped if one fails."""

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # prctl option: a signal the child gets when its parent dies


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports that are free on `host` now (held open together, then released).

    Args:
        count: how many ports.
        host: the interface.

    Returns:
        A list of ints.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(addresses):
    """The `TF_CONFIG` of each worker of a cluster of workers (worker 0 is the chief).

    Args:
        addresses: "host:port" of every worker, in task order.

    Returns:
        A list of JSON strings, one per worker.

    Example:

    >>> json.loads(tf_configs(["10.0.0.1:2222", "10.0.0.2:2222"])[1])["task"]
    {'type': 'worker', 'index': 1}
    """
    return [json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": i}})
            for i in range(len(addresses))]


def launch(command, workers, pin_cores=False, grace_seconds=10.0, print_fn=print):
    """Runs `command` as `workers` local processes of one `MultiWorkerMirroredStrategy` cluster.

    Each worker gets a `TF_CONFIG` naming every worker on a free loopback
    port and its own index, its own process group, and dies with the
    launcher (Linux). Their output (stdout and stderr) is printed line by
    line with a `[worker i]` prefix. When one worker fails (non-zero exit or
    a signal), the others are killed (SIGKILL) at once: their next
    all-reduce can never complete, and TensorFlow's workers catch SIGTERM
    (to checkpoint on preemption) rather than exit. When the launcher gets
    SIGINT or SIGTERM, the workers get SIGINT, then SIGKILL after
    `grace_seconds`. Every worker is waited for: none outlives the launcher.

    Args:
        command: the program and its arguments, e.g. `[sys.executable,
            "recipes/transformer_lm.py", "--strategy", "multi-worker"]`.
        workers: the number of workers (>= 1).
        pin_cores: pin worker i to CPU core i (mod the cores there are),
            like `taskset -c i`.
        grace_seconds: how long stopped workers get before SIGKILL.
        print_fn: where the launcher's own lines go.

    Returns:
        The exit status: 0 when every worker exited 0; otherwise the failed
        worker's status (128 + signal number for a signal), or 128 + the
        signal the launcher got.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be an integer >= 1; received {workers!r}.")
    if not command:
        raise ValueError("`command` is empty: give the program to run.")
    addresses = [f"localhost:{port}" for port in free_ports(workers)]
    cores = sorted(os.sched_getaffinity(0)) if pin_cores else None
    lock = threading.Lock()
    processes, readers = [], []
    stop = {}

    def say(line):
        with lock:
            print_fn(line)

    def on_signal(signum, frame):
        stop.setdefault("signal", signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # signals reach only that one
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    status = None
    try:
        for index, config in enumerate(tf_configs(addresses)):
            env = dict(os.environ, TF_CONFIG=config, PYTHONUNBUFFERED="1")
            core = cores[index % len(cores)] if cores else None
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=lambda core=core: _worker_setup(core))
            processes.append(process)
            pinned = f", pinned to core {core}" if core is not None else ""
            say(f"launch: worker {index} (pid {process.pid}) at {addresses[index]}{pinned}")
        for index, process in enumerate(processes):
            reader = threading.Thread(target=_stream, args=(process.stdout, f"[worker {index}] ", lock),
                                      daemon=True)
            reader.start()
            readers.append(reader)
        status = _wait(processes, stop, say)
    finally:
        # A failed worker leaves the others stuck in an all-reduce: no grace for them.
        _stop_all(processes, grace_seconds if "signal" in stop or status is None else 0)
        for reader in readers:
            reader.join(timeout=5)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if status == 0:
        say(f"launch: all {workers} workers finished")
    return status


def _wait(processes, stop, say):
    """Polls until every worker has exited 0 (returns 0), one fails, or the launcher is signalled."""
    while True:
        if "signal" in stop:
            say(f"launch: got {signal.Signals(stop['signal']).name}; stopping every worker")
            return 128 + stop["signal"]
        codes = [p.poll() for p in processes]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
                say(f"launch: worker {index} (pid {processes[index].pid}) {how}; stopping every worker")
                return 128 - code if code < 0 else code
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.1)


def _stop_all(processes, grace_seconds):
    """SIGINT to every live worker's process group, SIGKILL to those left after the grace period; reaps all."""
    live = [p for p in processes if p.poll() is None] if grace_seconds > 0 else []
    for p in live:
        _signal_group(p, signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in processes:
        _signal_group(p, signal.SIGKILL)  # also whatever a worker started in its group
        p.wait()


def _signal_group(process, signum):
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _worker_setup(core):
    """In the child before exec: die with the launcher (Linux), and run on `core` if given."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if core is not None:
        os.sched_setaffinity(0, {core})


def _stream(pipe, prefix, lock):
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            print(prefix + line, flush=True)
    pipe.close()
