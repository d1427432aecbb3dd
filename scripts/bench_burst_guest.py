"""The flooding guest of the ``flood-burst`` scenario, in a process of its own (its writes cost the runtime's
process nothing but the events they fire): connects to the daemon, prints ``ready``, then for each line read on
stdin writes ``WRITES`` times over ``PATHS`` paths under ``BASE`` (pipelined, as fast as the daemon takes them)
and prints the burst's duration in seconds. A line naming another folder (``go FOLDER``) writes under that folder
instead (paths nobody watches, for the floor).

    python scripts/bench_burst_guest.py SOCKET BASE WRITES PATHS
"""

from __future__ import annotations

import sys

import trio

import actors


async def main(socket_path: str, base: str, writes: int, paths: int) -> None:
    async with actors.connect(socket_path) as xs:
        print("ready", flush=True)
        burst = 0
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            folder = line.split()[1] if len(line.split()) > 1 else base
            start = trio.current_time()
            pipe = xs.pipeline()
            for i in range(writes):
                pipe.write(f"{folder}/k{i % paths}", f"{burst}.{i}")
            await pipe.send()
            print(f"{trio.current_time() - start:.6f}", flush=True)
            burst += 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
