#!/usr/bin/env python3
"""Helpers of the outage scenario of relay-vs-postfix.sh (Python 3 standard library only).

  outage.py dead-host --listen 127.0.0.1:PORT --count-file FILE
      A downstream that is down: it accepts every TCP connection, answers
      "421 4.3.2 Service not available" and closes once the client has (or after 5 s).
      Both MTAs see the same dead smart host, and FILE holds how many connections
      they made to it (rewritten every 50 ms and on SIGTERM).

  outage.py relay-flush --admin 127.0.0.1:PORT --token-file FILE
      Asks connector-relay to retry everything now: POST /api/queues/<Identity>/retry for
      every queue of GET /api/queues (the per-next-hop scheduler), or, on a build without
      that route, POST /api/queue/<id>/retry for every message of GET /api/queue. One
      keep-alive HTTP connection. Last line: RESULT route=... items=... retried=... failed=...
"""

import argparse
import asyncio
import http.client
import json
import os
import signal
import sys
import urllib.parse


def split_addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------- dead-host
def dead_host(args):
    host, port = split_addr(args.listen)
    count = 0
    written = -1

    def write():
        nonlocal written
        if count != written:
            tmp = args.count_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{count}\n")
            os.replace(tmp, args.count_file)  # the script never reads a half-written file
            written = count

    async def session(reader, writer):
        nonlocal count
        count += 1
        try:
            writer.write(b"421 4.3.2 dead.bench.test Service not available\r\n")
            await writer.drain()
            # Let the client close first (QUIT or not), so the TIME_WAIT stays on its side
            # and the real sink can take this port over at once.
            await asyncio.wait_for(reader.read(), timeout=5)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        server = await asyncio.start_server(session, host, port, backlog=4096, reuse_address=True)
        write()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.05)
            except asyncio.TimeoutError:
                pass
            write()
        server.close()
        write()

    asyncio.run(main())


# ---------------------------------------------------------------- relay-flush
class Admin:
    def __init__(self, addr, token):
        self.host, self.port = split_addr(addr)
        self.token = token
        self.conn = None

    def request(self, method, path):
        for attempt in (1, 2):  # the server may close an idle keep-alive connection
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, headers={"Authorization": "Bearer " + self.token})
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, body
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def relay_flush(args):
    with open(args.token_file) as f:
        admin = Admin(args.admin, f.read().strip())
    status, body = admin.request("GET", "/api/queues")
    if status == 200:
        route, items = "queues", json.loads(body)
    elif status == 404:
        print("GET /api/queues: 404 (this build has no per-next-hop queues); "
              "retrying each message through /api/queue/<id>/retry", file=sys.stderr)
        status, body = admin.request("GET", "/api/queue")
        if status != 200:
            sys.exit(f"GET /api/queue: {status} {body[:200]!r}")
        route, items = "queue", json.loads(body)
    else:
        sys.exit(f"GET /api/queues: {status} {body[:200]!r}")
    retried = failed = 0
    for item in items:
        ident = urllib.parse.quote(str(item["Identity"]), safe="")
        status, body = admin.request("POST", f"/api/{route}/{ident}/retry")
        if 200 <= status < 300:
            retried += 1
        else:
            failed += 1
            if failed <= 3:
                print(f"POST /api/{route}/{ident}/retry: {status} {body[:200]!r}", file=sys.stderr)
    if route == "queues":
        for q in items:
            print("queue " + " ".join(f"{k}={q.get(k)!r}" for k in
                  ("Identity", "NextHopDomain", "Status", "MessageCount", "LastError")),
                  file=sys.stderr)
    print(f"RESULT route={route} items={len(items)} retried={retried} failed={failed}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dead-host")
    d.add_argument("--listen", required=True)
    d.add_argument("--count-file", required=True)
    f = sub.add_parser("relay-flush")
    f.add_argument("--admin", required=True)
    f.add_argument("--token-file", required=True)
    args = p.parse_args()
    if args.cmd == "dead-host":
        dead_host(args)
    else:
        relay_flush(args)


if __name__ == "__main__":
    main()
