"""A stand-in for `spaces.GPU` on ZeroGPU: every decorated call runs in a freshly forked child process.

As on ZeroGPU, the arguments go to the child pickled and the results (each item, for a generator) come back pickled,
so nothing the call changes in memory reaches the caller except what it returns; a caller that closes a generator
stops the child. `pids` records the child of every call.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle

import torch

_fork = multiprocessing.get_context("fork")


def _child(fn, payload: bytes, conn, stop, is_generator: bool) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    try:
        args, kwargs = pickle.loads(payload)
        if is_generator:
            for item in fn(*args, **kwargs):
                if stop.is_set():
                    return
                conn.send_bytes(pickle.dumps(("item", item)))
            conn.send_bytes(pickle.dumps(("end", None)))
        else:
            conn.send_bytes(pickle.dumps(("value", fn(*args, **kwargs))))
    except (BrokenPipeError, EOFError):  # the caller went away
        return
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        conn.send_bytes(pickle.dumps(("error", exc)))
    finally:
        conn.close()


class ForkedGpu:
    """`gpu_call` for a SessionManager: ForkedGpu()(fn) -> fn running in a new child process per call."""

    def __init__(self):
        self.pids: list[int] = []

    def __call__(self, fn):
        is_generator = inspect.isgeneratorfunction(fn)

        def start(args, kwargs):
            reader, writer = _fork.Pipe(duplex=False)
            stop = _fork.Event()
            child = _fork.Process(target=_child, args=(fn, pickle.dumps((args, kwargs)), writer, stop, is_generator),
                                  daemon=True)
            child.start()
            writer.close()
            self.pids.append(child.pid)
            return reader, stop, child

        def finish(reader, stop, child):
            stop.set()
            reader.close()
            child.join(30)
            if child.is_alive():
                child.kill()

        def receive(reader):
            kind, value = pickle.loads(reader.recv_bytes())
            if kind == "error":
                raise value
            return kind, value

        if is_generator:
            def call(*args, **kwargs):
                reader, stop, child = start(args, kwargs)
                try:
                    while (received := receive(reader))[0] == "item":
                        yield received[1]
                finally:
                    finish(reader, stop, child)
        else:
            def call(*args, **kwargs):
                reader, stop, child = start(args, kwargs)
                try:
                    return receive(reader)[1]
                finally:
                    finish(reader, stop, child)
        return call
