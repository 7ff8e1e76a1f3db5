"""`zennbot` processes for the tests, forked from a Python that has already imported the bot.

A `zennbot` process spends about 4 CPU-seconds importing (the pydantic models of google-genai
and langsmith, langgraph, discord.py, slack-bolt, Playwright) before it does anything, and the
suite starts about a hundred of them on two cores. So each test worker keeps one server process
that imports all that once (`python -m tests.forkserver`) and forks a child per `zennbot`
process. A child is a process of its own, as `python -m bot` would be: its own pid, environment,
working directory and stdin/stdout/stderr, `python -m bot` run from the start, exit as the
interpreter exits (non-daemon threads joined, atexit handlers, streams flushed), and any signal
kills it. It is locked in the tests' network jail (`tests/jail.py`), as the test itself is.
What forking skips is the interpreter's start-up and imports, which `tests/test_cli.py` covers
by starting the real command.

The child is not the test's child: its exit status comes back from the server over the Unix
socket the test asked on, and if the test lets go of that socket first, the child is killed."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import importlib
import json
import os
import pkgutil
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from tests import jail

# Every module of the product, and what they import only when needed, so that a child imports
# nothing of weight itself.
PACKAGES = ("bot", "adapters", "agent")
LIBRARIES = ("langchain_google_genai", "trafilatura", "playwright.async_api", "discord", "slack_bolt",
             "slack_sdk.web.async_client", "psycopg", "psycopg_pool", "langgraph.checkpoint.postgres.aio",
             "langgraph.checkpoint.sqlite.aio")
READY = b"ready\n"
ROOT = Path(__file__).resolve().parent.parent


# --- the server ---------------------------------------------------------------------------

def serve(path: str) -> None:
    gc.disable()  # what is imported here lives as long as the server: frozen below, not collected
    for package in PACKAGES:
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    for library in LIBRARIES:
        importlib.import_module(library)
    warm_up()
    # Children see the imported heap as permanent: their collector never goes through it, and
    # does not write to its pages (which would copy them).
    gc.freeze()
    # Forking a process with threads copies their locks in whatever state they are: none allowed.
    assert threading.active_count() == 1, threading.enumerate()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through wake_w
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "exited")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")  # EOF: the test worker is gone
    children: dict[int, socket.socket] = {}
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()

    def close_all_but_stdio() -> None:
        for fd in (listener.fileno(), wake_r, wake_w, *(c.fileno() for c in children.values())):
            os.close(fd)

    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    conn.close()
                    close_all_but_stdio()
                    run_child(request, fds)
                for fd in fds:
                    os.close(fd)
                conn.send(json.dumps({"pid": pid}).encode())
                children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
            elif key.data == "exited":
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    conn = children.pop(pid, None)
                    if conn is not None:
                        selector.unregister(conn)
                        try:
                            conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
                        except OSError:
                            pass
                        conn.close()
            elif key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    for pid in children:
                        _kill(pid)
                    return
            else:  # the test let go of its process (it ended without waiting for it): not wanted
                conn = children.pop(key.data)
                selector.unregister(conn)
                conn.close()
                _kill(key.data)


def warm_up() -> None:
    """What every child would otherwise do first, about 0.5 CPU-s of each: the extractor's lazy
    loads, and the pydantic models that google-genai and LangChain complete on first use."""
    from langchain_core.messages import HumanMessage

    from agent.extract import warm_up as warm_up_extractor
    from agent.llm import make_chat_model

    warm_up_extractor()
    model = make_chat_model("gemini-2.5-flash", api_key="unused", base_url="http://127.0.0.1:9")
    model._prepare_request([HumanMessage("warm-up")])  # builds the request only: nothing is sent


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_child(request: dict, fds: list[int]) -> None:
    """Become `python -m bot <args>`, and exit as the interpreter would."""
    code = 1
    try:
        gc.enable()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        jail.lock_up()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["zennbot", *request["args"]]
        try:
            runpy.run_module("bot", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        threading._shutdown()  # as at interpreter exit: non-daemon threads are joined
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


# --- the client: what the tests call --------------------------------------------------------

class _Server:
    """This test worker's fork server, started on first use and stopped when the worker exits."""

    def __init__(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="zennbot-fork-"), "s")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.forkserver", self.path], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ready = False
        self.lock = threading.Lock()
        atexit.register(self.stop)

    def wait_ready(self) -> None:
        with self.lock:  # several tasks of a test may start processes at once
            if not self.ready:
                line = self.process.stdout.readline()  # the imports take seconds, not minutes
                if line != READY:
                    raise RuntimeError(f"the fork server did not start (exit code {self.process.poll()})")
                self.ready = True

    def stop(self) -> None:
        self.process.stdin.close()  # the server kills what is left of its children and exits
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


_server: _Server | None = None


class ForkedProcess:
    """What the tests use of `asyncio.subprocess.Process`, for a forked `zennbot`."""

    def __init__(self, pid: int, control: socket.socket, stdin, stdout, stderr) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self._control = control
        self._exited = asyncio.get_running_loop().create_task(self._wait_for_exit())

    async def _wait_for_exit(self) -> None:
        try:
            message = await asyncio.get_running_loop().sock_recv(self._control, 4096)
        finally:
            self._control.close()
        if not message:
            raise RuntimeError("the fork server went away")
        self.returncode = json.loads(message)["returncode"]

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
                await self.stdin.drain()
            self.stdin.close()
        out, err = await asyncio.gather(*(s.read() if s is not None else _none() for s in (self.stdout, self.stderr)))
        await self.wait()
        return out, err


async def _none() -> None:
    return None


async def start_zennbot(*args: str, env: dict[str, str], stdin=None, stdout=None, stderr=None,
                        cwd: str | None = None) -> ForkedProcess:
    """Like `asyncio.create_subprocess_exec(sys.executable, "-m", "bot", *args, env=env, ...)`:
    stdin/stdout/stderr are `asyncio.subprocess.PIPE`, `DEVNULL`, a file object or None (this
    process's own)."""
    global _server
    if _server is None:
        _server = _Server()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _server.wait_ready)
    child_fds, close_after, streams = [], [], []
    for target, how in enumerate((stdin, stdout, stderr)):
        if how == asyncio.subprocess.PIPE:
            read_end, write_end = os.pipe()
            mine, theirs = (write_end, read_end) if target == 0 else (read_end, write_end)
            child_fds.append(theirs)
            close_after.append(theirs)
            streams.append(await _stream(loop, mine, writing=target == 0))
            continue
        if how == asyncio.subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            close_after.append(fd)
        elif how is None:
            fd = target
        else:
            fd = how.fileno()
        child_fds.append(fd)
        streams.append(None)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        control.connect(_server.path)
        request = {"args": list(args), "env": env, "cwd": cwd or os.getcwd()}
        socket.send_fds(control, [json.dumps(request).encode()], child_fds)
    finally:
        for fd in close_after:
            os.close(fd)
    control.setblocking(False)
    reply = await asyncio.wait_for(loop.sock_recv(control, 4096), 30)
    if not reply:
        control.close()
        raise RuntimeError("the fork server went away")
    return ForkedProcess(json.loads(reply)["pid"], control, *streams)


async def _stream(loop: asyncio.AbstractEventLoop, fd: int, writing: bool):
    if writing:
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
        transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(fd, "wb", buffering=0))
        return asyncio.StreamWriter(transport, protocol, None, loop)
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return reader


if __name__ == "__main__":
    serve(sys.argv[1])
