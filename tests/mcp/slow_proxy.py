"""Runs an MCP server over stdio and delays each line it writes by DELAY ms
(the first argument): a slow instance of a real server, for the tests that
check that the router learns around it. Standard library only.

    python slow_proxy.py 300 mcp-server-everything stdio
"""
import subprocess
import sys
import threading
import time


def main():
    delay = int(sys.argv[1]) / 1000.0
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def pump_in():
        for line in sys.stdin.buffer:
            child.stdin.write(line)
            child.stdin.flush()
        child.stdin.close()

    threading.Thread(target=pump_in, daemon=True).start()
    for line in child.stdout:
        time.sleep(delay)
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
