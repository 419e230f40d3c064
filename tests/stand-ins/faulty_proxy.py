"""A fault-injecting proxy in front of kinesalite, for the throttling test: every 3rd GetRecords
call is answered ProvisionedThroughputExceededException (400), every 7th InternalFailure (500);
everything else is forwarded. Prints its port, then one line per injected fault."""
import http.server, json, sys, urllib.request, urllib.error, threading

upstream = sys.argv[1]
count = 0
lock = threading.Lock()

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
        global count
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("X-Amz-Target", "").endswith(".GetRecords"):
            with lock:
                count += 1
                n = count
            fault = ("ProvisionedThroughputExceededException", 400) if n % 3 == 0 else \
                    ("InternalFailure", 500) if n % 7 == 0 else None
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
