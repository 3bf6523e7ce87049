"""The worker process: loads one version's package and answers requests over two pipes.

Run by file path under the version's own interpreter: `python -u worker.py <read_fd>
<write_fd> <interrupt_fd>`, inside the server's sandbox. Stdlib only, plus `wire.py` and
`worker_output.py` loaded by path from this file's directory; it must never need modelbay
importable. Python 3.8 compatible, since user environments vary.

fd 1 and 2 are the instance's log file. During a request `sys.stdout`/`sys.stderr` write
into that request's capture instead, which becomes the request's `logs` (`worker_output.py`).
"""

from __future__ import annotations

import base64
import collections
import faulthandler
import importlib
import importlib.util
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_sibling(name: str) -> Any:
    """A module of this directory, loaded by file path: modelbay is not importable here."""
    # A private module name, so a user module of the same name is not shadowed.
    spec = importlib.util.spec_from_file_location("_modelbay_" + name, os.path.join(_HERE, name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wire = _load_sibling("wire")
worker_output = _load_sibling("worker_output")

# Python put this file's directory first on sys.path; user code must not see our modules.
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]

GENERIC_ERROR = "An exception occurred in the request. See the logs for details."

_READ_SIZE = 1 << 16  # a read of 1 MiB would allocate (and map) 1 MiB per message: most are tiny

#: How long a worker with no call to run polls its channel before it sleeps in `read`. A call
#: written to a worker that polls wakes no process: at one client at a time that wake-up cost the
#: server's loop more than the rest of passing the call (bench/README.md, session 23).
_POLL_S = 0.0005
#: A worker polls only while tasks waited for a CPU less than this share of the time lately: its
#: polling must not take a core from the server, another worker or the store. (When it does, they
#: wait, and it stops.)
_POLL_UNDER_PRESSURE = 0.08

_output = worker_output.Output()  # where stdout and stderr go
_current_id: str | None = None  # the running request's id, if any


# --- the control channel --------------------------------------------------------------


class _Channel:
    """Reads in the main thread, from the raw pipe into whole messages (so it can tell, without
    waiting, what has arrived); writes from any thread (streaming updates), locked."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        import select

        self._read_fd = read_fd
        self._frames = wire.FrameBuffer()
        self._inbox: collections.deque[dict[str, Any]] = collections.deque()  # arrived, not yet taken
        self._ended = False  # the server closed its end
        self._poller = select.poll()
        self._poller.register(read_fd, select.POLLIN)
        self._write_fd = write_fd
        self._lock = threading.Lock()

    def receive(self) -> dict[str, Any] | None:
        """The next message, waiting for it; None once the server closed the channel."""
        while not self._inbox:
            if self._ended:
                return None
            self._read()
        return self._inbox.popleft()

    def poll(self, seconds: float) -> None:
        """Wait up to `seconds` for a message by polling, not sleeping."""
        deadline = time.monotonic() + seconds
        while not self._inbox and not self._ended and not self._poller.poll(0) and time.monotonic() < deadline:
            pass

    def arrived(self) -> list[dict[str, Any]]:
        """The messages that have arrived, without waiting (a frame still arriving stays for later)."""
        while not self._ended and self._poller.poll(0):
            self._read()
        taken = list(self._inbox)
        self._inbox.clear()
        return taken

    def _read(self) -> None:
        data = os.read(self._read_fd, _READ_SIZE)
        if not data:
            self._ended = True
            return
        for body in self._frames.feed(data):
            message = json.loads(body)
            if not isinstance(message, dict):
                raise ValueError("a message must be a JSON object")
            self._inbox.append(message)

    def send(self, message: dict[str, Any]) -> None:
        self.send_body(wire.encode(message))

    def send_body(self, body: bytes) -> None:
        data = wire.frame(body)
        with self._lock:
            self._write_all(data)

    def try_send(self, message: dict[str, Any]) -> None:
        """For signal handlers: skip rather than deadlock if a send is half-done."""
        data = wire.frame(wire.encode(message))
        if self._lock.acquire(blocking=False):
            try:
                self._write_all(data)
            finally:
                self._lock.release()

    def _write_all(self, data: bytes) -> None:
        # os.write may write part of the data (e.g. interrupted by a signal): loop.
        view = memoryview(data)
        while view:
            written = os.write(self._write_fd, view)
            view = view[written:]


# --- loading user code ----------------------------------------------------------------


class _LoadError(Exception):
    """The package does not follow the convention; the message says how."""


def _parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return []


def _with_context(method: Callable[..., Any]) -> Callable[[Any, dict[str, Any]], Any]:
    """UbiOps rule: pass the context only to `(data, context)`-shaped methods, in their order."""
    params = _parameters(method)
    if len(params) == 2 and any(p.name == "context" for p in params):
        is_context = [p.name == "context" for p in params]
        return lambda data, context: method(*[context if c else data for c in is_context])
    return lambda data, context: method(data)


class _DeploymentRunner:
    """UbiOps style: `deployment.py` (or the file the version's SYS_DEPLOYMENT_FILE_NAME names,
    "main.py" or "main") with `class Deployment`."""

    def __init__(self, package_dir: str, init_context: dict[str, Any], deployment_file: str | None) -> None:
        name = deployment_file or "deployment"
        module_name = (name[:-3] if name.endswith(".py") else name).replace("/", ".")
        file = module_name.replace(".", "/") + ".py"
        base = os.path.join(package_dir, *module_name.split("."))
        if not (os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))):
            named = " (named by SYS_DEPLOYMENT_FILE_NAME)" if deployment_file else ""
            raise _LoadError(f"{file}{named} was not found in the deployment package "
                             f"(No module named '{module_name}').")
        module = importlib.import_module(module_name)
        cls = getattr(module, "Deployment", None)
        if not isinstance(cls, type):
            raise _LoadError(f"{file} does not define a class named Deployment.")
        params = _parameters(cls)
        names = {p.name for p in params}
        any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        kwargs: dict[str, Any] = {}
        if any_keyword or "base_directory" in names:
            kwargs["base_directory"] = package_dir
        if any_keyword or "context" in names:
            kwargs["context"] = init_context
        deployment = cls(**kwargs)
        request = getattr(deployment, "request", None)
        if not callable(request):
            raise _LoadError("class Deployment has no request method.")
        self._request = _with_context(request)
        requests = getattr(deployment, "requests", None)
        self._requests = _with_context(requests) if callable(requests) else None

    def run(self, data: Any, context: dict[str, Any], batch: bool) -> Any:
        if not batch:
            return self._request(data, context)
        if self._requests is not None:
            results = self._requests(data, context)
            if not isinstance(results, list):
                raise TypeError(f"requests() must return a list, not {type(results).__name__}")
            return results
        return [self._request(item, context) for item in data]


class _AbejaRequest(Mapping):  # type: ignore[type-arg]
    """ABEJA's request: a mapping of http_method/contents/content_type/headers, plus `read()`."""

    def __init__(self, contents: Any, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._fields = {
            "http_method": "POST",
            "contents": contents,
            "content_type": content_type,
            "headers": dict(headers or {}),
        }
        self._body = body

    @classmethod
    def of_data(cls, data: Any) -> _AbejaRequest:
        """A request holding ordinary request data: text as text/plain, anything else as JSON."""
        if isinstance(data, str):
            return cls(data, "text/plain", data.encode("utf-8"))
        return cls(data, "application/json", wire.encode(data))

    @classmethod
    def of_http(cls, data: Any, http: dict[str, Any]) -> _AbejaRequest:
        """A request as an HTTP proxy received it: `data` is the body (text, or base64 text)."""
        if isinstance(data, str):
            body = base64.b64decode(data) if http.get("encoding") == "base64" else data.encode("utf-8")
        else:
            body = wire.encode(data)
        content_type = str(http.get("content_type") or "application/octet-stream")
        contents: Any = body
        if content_type.split(";")[0].strip().lower() == "application/json":
            try:
                contents = json.loads(body)
            except ValueError:
                contents = body
        return cls(contents, content_type, body, http.get("headers"))

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def read(self) -> bytes:
        return self._body


def _http_response(response: Any) -> str:
    """A handler's `{status_code, content_type, content}` (or a bare value) as the envelope the server
    turns into an HTTP response: JSON text of {status_code, content_type, body, encoding}."""
    status, content_type, content = 200, None, response
    if isinstance(response, dict) and {"status_code", "content_type", "content"} <= response.keys():
        status, content_type, content = int(response["status_code"]), response["content_type"], response["content"]
    if isinstance(content, (bytes, bytearray, memoryview)):
        body, encoding = base64.b64encode(bytes(content)).decode("ascii"), "base64"
        content_type = content_type or "application/octet-stream"
    elif isinstance(content, str):
        body, encoding = content, "text"
        content_type = content_type or "text/plain"
    else:
        body, encoding = json.dumps(content, ensure_ascii=False, allow_nan=False), "text"
        content_type = content_type or "application/json"
    envelope = {"status_code": status, "content_type": str(content_type), "body": body, "encoding": encoding}
    return json.dumps(envelope, ensure_ascii=False)


class _HandlerRunner:
    """ABEJA style: a `module:function` handler called as `handler(request, context)`."""

    def __init__(self, handler: str, init_context: dict[str, Any]) -> None:
        module_name, _, function_name = handler.partition(":")
        if not module_name or not function_name:
            raise _LoadError(f"The handler {handler!r} is not of the form 'module:function'.")
        module = importlib.import_module(module_name)
        function = getattr(module, function_name, None)
        if not callable(function):
            raise _LoadError(f"Module {module_name} has no function named {function_name}.")
        self._handler = function
        # A plain-output deployment needs text: other content is sent as its JSON.
        self._plain_output = init_context.get("output_type") == "plain"

    def _call(self, request: _AbejaRequest, context: dict[str, Any]) -> Any:
        response = self._handler(request, context)
        if inspect.iscoroutine(response):  # `async def handler` is allowed too
            import asyncio

            response = asyncio.run(response)
        return response

    def run(self, data: Any, context: dict[str, Any], batch: bool) -> Any:
        response = self._call(_AbejaRequest.of_data(data), context)
        if isinstance(response, dict) and {"status_code", "content_type", "content"} <= response.keys():
            response = response["content"]
        if self._plain_output and not isinstance(response, str):
            if isinstance(response, (bytes, bytearray)):
                return bytes(response).decode("utf-8", "replace")
            return json.dumps(response, ensure_ascii=False)
        return response

    def run_http(self, data: Any, context: dict[str, Any], http: dict[str, Any]) -> str:
        return _http_response(self._call(_AbejaRequest.of_http(data, http), context))


def _load(init: dict[str, Any]) -> Any:
    package_dir = init["package_dir"]
    # UbiOps convention: the package and its `libraries` dir come first on sys.path.
    sys.path[0:0] = [package_dir, os.path.join(package_dir, "libraries")]
    if init.get("handler"):
        return _HandlerRunner(init["handler"], init.get("init_context") or {})
    return _DeploymentRunner(package_dir, init.get("init_context") or {}, init.get("deployment_file"))


def _exception_line(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[-1].strip() if lines else type(exc).__name__


# --- serving requests -----------------------------------------------------------------


def _streaming_update(channel: _Channel, call_id: str) -> Callable[[str], None]:
    def streaming_update(text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"streaming_update() takes a str, not {type(text).__name__}")
        if _current_id == call_id:  # drop partials sent after the request ended
            channel.send({"type": "update", "id": call_id, "text": text})

    return streaming_update


def _set_environment(values: dict[str, Any]) -> dict[str, str | None]:
    """Set per-call environment variables (None unsets); returns what to set to undo it."""
    saved: dict[str, str | None] = {}
    for name, value in values.items():
        saved[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    return saved


def _serve(channel: _Channel, runner: Any, message: dict[str, Any], log_limit: int, memory_mib: int | None) -> bool:
    """Run one call and send its result; returns whether the worker must exit (out of memory)."""
    global _current_id
    call_id = message["id"]
    data = message.get("data")
    context = dict(message.get("context") or {})
    environment = context.pop(wire.ENVIRONMENT_KEY, None) or {}
    http = context.pop(wire.HTTP_KEY, None)
    context["streaming_update"] = _streaming_update(channel, call_id)
    batch = isinstance(data, list) and context.get(wire.BATCH_KEY) is True

    capture = worker_output.Capture(log_limit)
    ok, result, error, retire = True, None, None, False
    saved = _set_environment(environment)
    _output.capture, _current_id = capture, call_id
    try:
        if http is not None and isinstance(runner, _HandlerRunner):
            result = runner.run_http(data, context, http)
        else:
            result = runner.run(data, context, batch)
    except BaseException as exc:  # SystemExit from user code fails the request, not us
        ok, result = False, None
        public = getattr(exc, "public_error_message", None)
        error = str(public) if public is not None else GENERIC_ERROR
        if isinstance(exc, MemoryError):  # its heap may be in any state: replace the instance
            retire = True
            error = f"out of memory (limit {memory_mib} MiB)" if memory_mib else "out of memory"
        capture.note("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    finally:
        _output.capture, _current_id = None, None
        _set_environment(saved)

    if capture.overflowed:
        ok, result, error = False, None, capture.message
    logs = capture.text()
    if capture.overflowed:
        logs += "\n" + capture.message + "\n"
    reply = {"type": "result", "id": call_id, "ok": ok, "result": result, "error": error, "logs": logs,
             "retire": retire}
    try:
        body = wire.encode(reply)
    except (TypeError, ValueError, UnicodeError, RecursionError) as exc:
        reason = f"The request's result is not JSON-serialisable: {exc}"
        reply.update(ok=False, result=None, error=reason, logs=logs + reason + "\n")
        body = wire.encode(reply)
    if len(body) > wire.MAX_FRAME:
        reason = f"The request's result is too large ({len(body)} bytes; the limit is {wire.MAX_FRAME})."
        reply.update(ok=False, result=None, error=reason, logs=logs + reason + "\n")
        body = wire.encode(reply)
    channel.send_body(body)
    return retire


def _install_logs_signal(channel: _Channel) -> None:
    """On `LOGS_SIGNAL` (the server is about to kill a timed-out request) send its logs so far."""

    def send_logs(signum: int, frame: Any) -> None:
        capture, call_id = _output.capture, _current_id
        if capture is not None:
            channel.try_send({"type": "logs", "id": call_id, "logs": capture.text()})

    signal.signal(wire.LOGS_SIGNAL, send_logs)


def _watch_the_server(read_fd: int, interrupt_fd: int) -> None:
    """A thread for what the server says while user code runs: a byte on `interrupt_fd` asks for
    the logs so far (`LOGS_SIGNAL`); our input closing means the server died: stop at once."""
    import select

    def watch() -> None:
        poller = select.poll()
        poller.register(read_fd, 0)  # no events asked for: only POLLHUP/POLLERR are reported
        poller.register(interrupt_fd, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                if fd == interrupt_fd and events & select.POLLIN:
                    if not os.read(interrupt_fd, 64):
                        poller.unregister(interrupt_fd)
                    else:
                        os.kill(os.getpid(), wire.LOGS_SIGNAL)  # the handler runs in the main thread
                elif fd == read_fd:
                    if _current_id is not None:  # idle, the main thread sees EOF and stops by itself
                        os.killpg(0, signal.SIGKILL)  # the worker's own session: user subprocesses go too
                    return

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    read_fd, write_fd, interrupt_fd = int(argv[1]), int(argv[2]), int(argv[3])
    for fd in (read_fd, write_fd, interrupt_fd):
        # Subprocesses of user code must not hold the channel open (the server would miss EOF).
        os.set_inheritable(fd, False)
    faulthandler.enable(file=sys.__stderr__)  # segfault tracebacks land in the log file
    channel = _Channel(read_fd, write_fd)
    _watch_the_server(read_fd, interrupt_fd)
    _output.install()

    init = channel.receive()
    if init is None or init.get("type") != "init":
        return 2
    try:
        runner = _load(init)
    except BaseException as exc:
        traceback.print_exc()  # into the log file, which the server returns as the logs
        if isinstance(exc, _LoadError):
            error = str(exc)
        else:
            error = f"The deployment could not be loaded: {_exception_line(exc)}"
        channel.send({"type": "start_failed", "error": error})
        return 1
    log_limit = int(init.get("max_log_bytes") or 1 << 20)
    memory_mib = init.get("memory_limit_mib")
    _install_logs_signal(channel)
    channel.send({"type": "ready"})

    _serve_calls(channel, runner, log_limit, memory_mib)
    return 0


class _CpuPressure:
    """The share of the last `period` seconds (or more) in which some task of the machine was ready
    to run and waited for a CPU (Linux's pressure stall information); 1.0 where it is not told."""

    def __init__(self, period: float = 0.1, path: str = "/proc/pressure/cpu") -> None:
        self._period, self._path = period, path
        self._read_at = -period  # when the stall time was last read
        self._stalled: int | None = None  # the stall time then (µs); None: not read, or not told
        self.share = 1.0

    def update(self) -> None:
        now = time.monotonic()
        if now - self._read_at < self._period:
            return
        try:
            with open(self._path, "rb") as pressure:  # some avg10=… avg60=… avg300=… total=<µs>
                stalled: int | None = int(pressure.readline().rsplit(b"total=", 1)[1])
        except (OSError, ValueError, IndexError):  # no such figures here (not Linux, or too old a kernel)
            stalled = None
        if stalled is None or self._stalled is None:
            self.share = 1.0
        else:
            self.share = (stalled - self._stalled) / 1e6 / (now - self._read_at)
        self._read_at, self._stalled = now, stalled


def _serve_calls(channel: _Channel, runner: Any, log_limit: int, memory_mib: int | None) -> None:
    """Run the calls in the order they came, until the server says stop or goes away. The server may
    send the next calls while one runs (they wait here), and withdraw one that has not started: its
    caller timed out or gave up. What arrived is looked at before each call, so a withdrawal is seen."""
    waiting: collections.deque[dict[str, Any]] = collections.deque()
    withdrawn: set[str] = set()

    def take(message: dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind == "call":
            waiting.append(message)
        elif kind == "withdraw" and any(call["id"] == message.get("id") for call in waiting):
            withdrawn.add(message["id"])  # of one already run: nothing to do
        return kind != "stop"

    pressure = _CpuPressure()
    while True:
        if not waiting:
            pressure.update()
            if pressure.share < _POLL_UNDER_PRESSURE:
                channel.poll(_POLL_S)
            message = channel.receive()
            if message is None or not take(message):
                return
        if not all(take(message) for message in channel.arrived()):
            return
        if not waiting:
            continue
        call = waiting.popleft()
        if call["id"] in withdrawn:
            withdrawn.discard(call["id"])
            channel.send({"type": "withdrawn", "id": call["id"]})
        elif _serve(channel, runner, call, log_limit, memory_mib):
            return


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except BrokenPipeError:  # the server went away; nobody to answer
        code = 0
    sys.exit(code)

