"""A thread and its caller handing items over a bounded queue: the readers' read-ahead
(`in_background`, byol/data/batches.py) and the store's shard writer (byol/store/sink.py).

The queue is bounded so memory stays flat however far one side runs ahead; a put that waits on a
full queue keeps checking whether the other side is gone (stopped, or failed), so neither side
ever blocks forever on a partner that will not take another item.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator


def put_while(items: queue.Queue, item, going: Callable[[], bool], poll_s: float = 0.1) -> bool:
    """Put `item` into the bounded queue, waiting while it is full; False (not put) once going() is false."""
    while going():
        try:
            items.put(item, timeout=poll_s)
            return True
        except queue.Full:
            pass
    return False


def in_background(iterable: Iterable, depth: int, name: str = "reader") -> Iterator:
    """Run `iterable` in a thread, at most `depth` items ahead; its exceptions re-raise here."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def going() -> bool:
        return not stop.is_set()

    def run():
        try:
            for item in iterable:
                if not put_while(items, ("item", item), going):
                    return
            put_while(items, ("done", None), going)
        except BaseException as e:   # handed to the consumer, which re-raises it
            put_while(items, ("error", e), going)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
