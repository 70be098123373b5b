#!/usr/bin/env python3
"""The platform stand-in for bench/fanout.sh: answers every POST (orgctl's restarts go to
/admin/workspaces/{id}/restart) as the platform's admin restart route does when it restarts,
202 {"status":"restart_dispatched"}, and counts the calls (printed to stderr at exit). Listens
on 127.0.0.1 only; prints its port on stdout once it listens.  Usage: stub_platform.py"""
import http.server, sys, threading, signal

calls = 0
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global calls
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with lock:
            calls += 1
        body = b'{"status":"restart_dispatched"}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client closing an idle keep-alive connection is not news

srv = Server(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
def stop(*_):
    sys.stderr.write(f"stub platform: {calls} calls\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(srv.server_address[1], flush=True)
srv.serve_forever()
