"""A Python process whose threads are frozen in states a mixed-stack unwinder must read.

Runs unchanged on CPython 3.6 to 3.13 (no syntax newer than 3.6). Each thread parks
itself in a blocking call under Python frames of a different kind, then the main
thread prints `ready` and blocks too:

- sleeper: nested functions, a method, a closure, down to time.sleep (C);
- sorter: Python called back from C (sorted(key=...), then functools.reduce and map
  inside the key function) into a lambda that blocks in select.select;
- generator: a generator frame running under a list comprehension;
- handler: a frame frozen inside `except` and `finally` blocks;
- tasks (with the argument `asyncio`: importing asyncio loads ssl and libcrypto,
  a megabyte more core): an asyncio task several awaits deep, iterating an async
  generator that blocks the event loop in time.sleep;
- busy: a pure-Python loop, running (not blocked) when the process is frozen;
- main: recursion of `depth` Python frames (argv[1], default 20), then a class body,
  then threading.Event.wait.

    python pystacks.py [depth [asyncio]]
"""

import functools
import select
import sys
import threading
import time

PARK = 3600.0


class Worker:
    def run(self, ready):
        def closure():
            return nested_a(ready)
        return closure()


def nested_a(ready):
    return nested_b(ready)


def nested_b(ready):
    ready.set()
    time.sleep(PARK)


def sorter(ready):
    def block(item):
        ready.set()
        select.select([], [], [], PARK)
        return item

    def key(item):
        if item == 2:
            return functools.reduce(lambda a, b: a + b,
                                    map(lambda x: block(x), [item]), 0)
        return item
    return sorted([3, 2, 1], key=lambda item: key(item))


def numbers(ready):
    yield 1
    ready.set()
    time.sleep(PARK)
    yield 2


def generator(ready):
    return [n for n in numbers(ready)]


def handler(ready):
    try:
        raise ValueError("frozen in except")
    except ValueError:
        try:
            ready.set()
            time.sleep(PARK)
        finally:
            pass


async def agen(ready):
    yield 1
    ready.set()
    time.sleep(PARK)  # blocks the event loop, with the coroutine frames on the stack
    yield 2


async def consume(ready):
    total = 0
    async for n in agen(ready):
        total += n
    return total


async def outer(ready):
    return await consume(ready)


def tasks(ready):
    import asyncio  # only with the `asyncio` argument

    loop = asyncio.new_event_loop()  # asyncio.run is 3.7+
    return loop.run_until_complete(loop.create_task(outer(ready)))


def spin(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def busy(ready):
    ready.set()
    while True:
        spin(1000)


def recurse(n, done):
    if n > 0:
        return recurse(n - 1, done)
    class Parked:
        print("ready", flush=True)
        done.wait(PARK)
    return Parked


def main():
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    sys.setrecursionlimit(max(1000, depth + 100))
    targets = [Worker().run, sorter, generator, handler, busy]
    if sys.argv[2:3] == ["asyncio"]:
        targets.insert(-1, tasks)
    for target in targets:
        ready = threading.Event()
        threading.Thread(target=target, args=(ready,), daemon=True).start()
        ready.wait()
    time.sleep(0.2)  # let the last thread reach its blocking call
    recurse(depth, threading.Event())


if __name__ == "__main__":
    main()
