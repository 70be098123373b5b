#!/usr/bin/env python3
"""A loopback TCP proxy that adds latency, for bench/backfill.sh.

    delay_proxy.py --target-port PORT [--delay-ms 5] [--listen-port 0] [--stats FILE]

Listens on 127.0.0.1 only and forwards every connection to 127.0.0.1:TARGET_PORT. Every chunk
read from either side is written to the other side DELAY_MS milliseconds after it was read
(default 5 ms each way, so a 10 ms round trip), in order per direction. Chunks are not
serialised behind each other's delay: a burst of chunks arrives as a burst, each DELAY_MS late
— like a network path, not like a slow link. The work per chunk is a deque append and one
timer, so the proxy adds no latency of its own beyond the timer's precision (the event loop
waits in select(), whose timeout has microsecond resolution, not epoll's milliseconds).

Timers fire a little late (a fraction of a millisecond on a VM: the wake-up and the loop's own
work), so the round trip it adds is measured by its user (bench/backfill.sh does, and corrects
--delay-ms once).
Prints "port N" on stdout once it listens. With --stats, appends one JSON line per finished
connection: chunks and bytes each way, and "turns": how many times the client sent after
having received something (the first send counts), i.e. the round trips the client waited for.
Stops on SIGTERM or SIGINT.
"""
import argparse
import asyncio
import collections
import json
import selectors
import signal
import socket
import sys

HOST = "127.0.0.1"


class Pipe:
    """One direction of one connection: chunks delivered to `dst` `delay` seconds after push."""

    def __init__(self, loop, delay):
        self.loop = loop
        self.delay = delay
        self.queue = collections.deque()  # (due time, bytes) or (due time, None) = close
        self.dst = None
        self.timer = None
        self.chunks = 0
        self.bytes = 0

    def push(self, data):
        self.chunks += 1
        self.bytes += len(data)
        self.queue.append((self.loop.time() + self.delay, data))
        self._arm()

    def push_close(self):
        self.queue.append((self.loop.time() + self.delay, None))
        self._arm()

    def attach(self, dst):
        self.dst = dst
        self._arm()

    def _arm(self):
        if self.timer is None and self.queue and self.dst is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self):
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self.queue.clear()
                self.dst.close()  # flushes what is buffered, then closes
                return
            if not self.dst.is_closing():
                self.dst.write(data)
        self._arm()


class Side(asyncio.Protocol):
    """One socket of a proxied connection: what it reads goes into `out`."""

    def __init__(self, conn, out, peer_pipe):
        self.conn = conn
        self.out = out  # Pipe carrying what this side reads
        self.peer_pipe = peer_pipe  # Pipe that writes to this side
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer_pipe.attach(transport)

    def data_received(self, data):
        self.conn.saw(self, data)
        self.out.push(data)

    def eof_received(self):
        return False  # close this side; connection_lost closes the other after the delay

    def connection_lost(self, exc):
        self.out.push_close()
        self.conn.lost(self)

    # Flow control: a slow reader on one side pauses reading on the other.
    def pause_writing(self):
        other = self.conn.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self):
        other = self.conn.other(self)
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()


class Conn:
    def __init__(self, proxy):
        self.proxy = proxy
        loop = proxy.loop
        self.c2s = Pipe(loop, proxy.delay)
        self.s2c = Pipe(loop, proxy.delay)
        self.client = Side(self, self.c2s, self.s2c)
        self.server = None
        self.turns = 0
        self.last_from_client = False
        self.open_sides = 2

    def other(self, side):
        return self.server if side is self.client else self.client

    def saw(self, side, data):
        if side is self.client:
            if not self.last_from_client:
                self.turns += 1
            self.last_from_client = True
        else:
            self.last_from_client = False

    async def connect(self):
        try:
            _, self.server = await self.proxy.loop.create_connection(
                lambda: Side(self, self.s2c, self.c2s), HOST, self.proxy.target_port)
        except OSError as e:
            print(f"delay_proxy: cannot reach {HOST}:{self.proxy.target_port}: {e}", file=sys.stderr)
            if self.client.transport is not None:
                self.client.transport.close()
            self.lost(None)

    def lost(self, side):
        self.open_sides -= 1
        if self.open_sides == 0:
            self.proxy.finished(self)


class Proxy:
    def __init__(self, loop, target_port, delay, stats):
        self.loop = loop
        self.target_port = target_port
        self.delay = delay
        self.stats = stats
        self.tasks = set()

    def accept(self):
        conn = Conn(self)
        task = self.loop.create_task(conn.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn.client

    def finished(self, conn):
        if self.stats:
            with open(self.stats, "a") as f:
                f.write(json.dumps({
                    "c2s_chunks": conn.c2s.chunks, "c2s_bytes": conn.c2s.bytes,
                    "s2c_chunks": conn.s2c.chunks, "s2c_bytes": conn.s2c.bytes,
                    "turns": conn.turns}) + "\n")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=5.0, help="added each way (default 5)")
    ap.add_argument("--listen-port", type=int, default=0, help="default: a free port")
    ap.add_argument("--stats", help="append one JSON line per finished connection")
    a = ap.parse_args()
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop, a.target_port, a.delay_ms / 1000.0, a.stats)
    server = await loop.create_server(proxy.accept, HOST, a.listen_port, backlog=256)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


if __name__ == "__main__":
    # select() takes its timeout in microseconds; epoll and poll round it up to a whole
    # millisecond, which would add ~0.5 ms to every delayed chunk. The bench keeps a few dozen
    # sockets open at most, far below select()'s FD_SETSIZE.
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
