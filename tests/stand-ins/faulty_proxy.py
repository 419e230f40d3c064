"""A fault-injecting proxy in front of kinesalite. Usage: faulty_proxy.py UPSTREAM [MODE [FILE]].

- MODE "throttle" (default): every 3rd GetRecords call is answered
  ProvisionedThroughputExceededException (400), every 7th InternalFailure (500).
- MODE "expire": every GetRecords call is answered ExpiredIteratorException (400) until FILE
  exists, and ListShards calls 2 to 6 (one SDK call with all its retries) InternalFailure (500).

Everything else is forwarded. Prints its port, then one line per injected fault."""
import http.server, json, os, sys, urllib.request, urllib.error, threading

upstream = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "throttle"
release = sys.argv[3] if len(sys.argv) > 3 else None
count = 0
list_count = 0
lock = threading.Lock()


def fault_for(target):
    """The (error type, status) to answer instead of forwarding, or None."""
    global count, list_count
    with lock:
        if target.endswith(".GetRecords"):
            count += 1
            n = count
        elif target.endswith(".ListShards"):
            list_count += 1
            n = list_count
        else:
            return None
    if mode == "expire":
        if target.endswith(".GetRecords"):
            return None if os.path.exists(release) else ("ExpiredIteratorException", 400)
        return ("InternalFailure", 500) if 2 <= n <= 6 else None
    if target.endswith(".GetRecords"):
        return ("ProvisionedThroughputExceededException", 400) if n % 3 == 0 else \
               ("InternalFailure", 500) if n % 7 == 0 else None
    return None

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        fault = fault_for(self.headers.get("X-Amz-Target", ""))
        if fault:
            print(f"injected {fault[0]}", flush=True)
            err = json.dumps({"__type": fault[0], "message": "injected by the test proxy"}).encode()
            return self.reply(fault[1], err, [("Content-Type", "application/x-amz-json-1.1")])
        req = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                     headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(req) as r:
                self.reply(r.status, r.read(), r.getheaders())
        except urllib.error.HTTPError as e:
            self.reply(e.code, e.read(), e.headers.items())

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
print(server.server_address[1], flush=True)
server.serve_forever()
