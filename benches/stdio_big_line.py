"""What a line past the limit costs the MCP stdio front: launches
`bin/erlmcp-flow stdio --mcp`, initializes, writes one tools/call line of
MIB mebibytes (default 200) in 1 MiB pieces, and prints the answer (it must
be -32012 with the request's id) and the node's resident memory before and
at its peak while the line went in.

    python3 benches/stdio_big_line.py [MIB]
"""
import json
import subprocess
import sys
import threading
import time


def beam_of(pid):
    """The beam.smp process under the launcher."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo += [int(k) for k in kids]
    for p in seen:
        try:
            if "beam" in open("/proc/%d/comm" % p).read():
                return p
        except OSError:
            pass
    raise SystemExit("no beam process found")


def rss_mb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    node = subprocess.Popen(["bin/erlmcp-flow", "stdio", "--mcp"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    node.stdin.write((json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                  "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                             "clientInfo": {"name": "bench", "version": "1"}}})
                      + "\n").encode())
    node.stdin.flush()
    node.stdout.readline()
    beam = beam_of(node.pid)
    before = rss_mb(beam)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(beam))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    node.stdin.write(b'{"jsonrpc":"2.0","id":4242,"method":"tools/call","params":{"name":"x",'
                     b'"arguments":{"data":"')
    piece = b"a" * (1 << 20)
    for _ in range(mib):
        node.stdin.write(piece)
    node.stdin.write(b'"}}}\n')
    node.stdin.flush()
    answer = node.stdout.readline().decode()
    done.set()
    sampler.join()
    print("answer:", answer.strip())
    print("resident memory: %d MB before, %d MB at the peak (a %d MiB line)" % (before, peak[0], mib))
    node.stdin.close()
    node.wait()


if __name__ == "__main__":
    main()
