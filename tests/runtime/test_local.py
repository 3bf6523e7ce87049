"""LocalRuntime against real worker processes running tiny packages written into tmp_path."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import textwrap
import time
import venv
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelbay.runtime import wire
from modelbay.runtime.base import (
    Call,
    CallNotStarted,
    CallOutcome,
    CallTimedOut,
    Instance,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
    InstanceState,
)
from modelbay.runtime.local import LocalRuntime
from tests.fixtures.processes import process_gone, processes_working_in

T = TypeVar("T")

ECHO = """
class Deployment:
    def request(self, data):
        return data
"""


def package(tmp_path: Path, source: str, name: str = "pkg", filename: str = "deployment.py") -> Path:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / filename).write_text(textwrap.dedent(source))
    return directory


def spec_for(directory: Path, **kwargs: Any) -> InstanceSpec:
    values: dict[str, Any] = {"python": Path(sys.executable), "init_context": {"deployment": "d1", "version": "v1"}}
    values.update(kwargs)
    return InstanceSpec(version_id="v1", package_dir=directory, **values)


def with_runtime(tmp_path: Path, scenario: Callable[[LocalRuntime], Awaitable[T]], **kwargs: Any) -> T:
    """Run `scenario` on a fresh loop, always closing the runtime afterwards."""

    async def main() -> T:
        runtime = LocalRuntime(log_dir=tmp_path / "logs", **kwargs)
        try:
            return await scenario(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


async def start_and_call(
    runtime: LocalRuntime, directory: Path, data: Any, timeout: float = 30, **call_kwargs: Any
) -> CallOutcome:
    instance = await runtime.start(spec_for(directory))
    return await runtime.call(instance, Call("req-1", data, {"id": "req-1"}, **call_kwargs), timeout)


def wait_until(condition: Callable[[], bool], deadline_s: float = 10.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def wait_for_async(condition: Callable[[], T], deadline_s: float = 10.0) -> T:
    """Poll `condition` on the loop until it returns something truthy."""
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
    return value


# --- requests -------------------------------------------------------------------------


def test_a_structured_request_returns_its_dict(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                return {"sum": data["a"] + data["b"], "nested": {"list": [1, 2, None]}}
        """,
    )
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, {"a": 1, "b": 2}))
    assert outcome == CallOutcome(ok=True, result={"sum": 3, "nested": {"list": [1, 2, None]}}, logs="")


def test_a_plain_text_request_returns_a_string(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                return data.upper() + " ünïcode"
        """,
    )
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, "hello"))
    assert outcome.ok and outcome.result == "HELLO ünïcode"


def test_an_instance_is_idle_after_start_and_serves_many_requests_in_a_row(tmp_path: Path) -> None:
    directory = package(tmp_path, ECHO)

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        assert instance.state is InstanceState.IDLE and len(instance.id) == 32
        assert await runtime.healthy(instance)
        for i in range(200):
            outcome = await runtime.call(instance, Call(f"r{i}", {"i": i}), 30)
            assert outcome.result == {"i": i}
        assert instance.state is InstanceState.IDLE

    with_runtime(tmp_path, scenario)


def test_results_and_requests_of_several_megabytes_make_the_round_trip(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                return {"text": data["text"] * 2, "numbers": list(range(300_000))}
        """,
    )
    text = "ab" * 2_000_000
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, {"text": text}))
    assert outcome.ok
    assert outcome.result["text"] == text * 2
    assert outcome.result["numbers"][-1] == 299_999


def test_a_result_that_is_not_json_fails_the_request_naming_its_type(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                return {"tags": {"a", "b"}}
        """,
    )
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, {}))
    assert not outcome.ok
    assert outcome.error is not None and "not JSON-serialisable" in outcome.error and "set" in outcome.error


# --- the UbiOps convention ------------------------------------------------------------

INIT_RECORDER = """
class Deployment:
    def __init__({params}):
        self.seen = {seen}

    def request(self, data):
        return self.seen
"""


@pytest.mark.parametrize(
    ("params", "seen", "expected_keys"),
    [
        ("self, base_directory, context", "{'base_directory': base_directory, 'context': context}", {"base_directory", "context"}),
        ("self, context", "{'context': context}", {"context"}),
        ("self", "{}", set()),
        ("self, **kwargs", "dict(kwargs)", {"base_directory", "context"}),
    ],
    ids=["both", "only-context", "none", "kwargs"],
)
def test_init_receives_base_directory_and_context_as_far_as_it_declares_them(
    tmp_path: Path, params: str, seen: str, expected_keys: set[str]
) -> None:
    directory = package(tmp_path, INIT_RECORDER.format(params=params, seen=seen))
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, {}))
    assert outcome.ok, outcome
    assert set(outcome.result) == expected_keys
    if "base_directory" in expected_keys:
        assert outcome.result["base_directory"] == str(directory)
    if "context" in expected_keys:
        assert outcome.result["context"] == {"deployment": "d1", "version": "v1"}


def test_the_package_and_its_libraries_dir_are_importable_and_the_cwd_is_the_package(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import os
        import helper
        import vendored

        class Deployment:
            def request(self, data):
                return [helper.NAME, vendored.NAME, os.getcwd()]
        """,
    )
    (directory / "helper.py").write_text("NAME = 'helper'\n")
    (directory / "libraries").mkdir()
    (directory / "libraries" / "vendored.py").write_text("NAME = 'vendored'\n")
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, None))
    assert outcome.result == ["helper", "vendored", str(directory)]


def test_the_worker_runs_in_a_bare_venv_and_hides_its_own_modules(tmp_path: Path) -> None:
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    directory = package(
        tmp_path,
        """
        import importlib.util
        import sys

        class Deployment:
            def request(self, data):
                return {name: importlib.util.find_spec(name) is not None for name in data}
        """,
    )

    async def scenario(runtime: LocalRuntime) -> CallOutcome:
        instance = await runtime.start(spec_for(directory, python=tmp_path / "venv" / "bin" / "python"))
        return await runtime.call(instance, Call("r", ["modelbay", "orjson", "wire", "worker", "base", "json"]), 30)

    outcome = with_runtime(tmp_path, scenario)
    assert outcome.result == {
        "modelbay": False,
        "orjson": False,
        "wire": False,
        "worker": False,
        "base": False,
        "json": True,
    }


def test_user_code_sees_its_environment_but_not_the_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBAY_SECRET_FOR_TEST", "do-not-leak")
    directory = package(
        tmp_path,
        """
        import os

        class Deployment:
            def request(self, data):
                return [os.environ.get("MY_SETTING"), os.environ.get("MODELBAY_SECRET_FOR_TEST")]
        """,
    )

    async def scenario(runtime: LocalRuntime) -> CallOutcome:
        instance = await runtime.start(spec_for(directory, environment={"MY_SETTING": "42"}))
        return await runtime.call(instance, Call("r", None), 30)

    assert with_runtime(tmp_path, scenario).result == ["42", None]


def test_a_request_with_context_gets_its_id_and_streams_partials_in_order(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data, context):
                for word in ["one", "two", "three"]:
                    context["streaming_update"](word)
                return {"id": context["id"], "mode": context.get("request_mode")}
        """,
    )
    partials: list[str] = []

    async def scenario(runtime: LocalRuntime) -> CallOutcome:
        instance = await runtime.start(spec_for(directory))
        call = Call("req-9", {}, {"id": "req-9", "request_mode": "direct"})
        return await runtime.call(instance, call, 30, on_update=partials.append)

    outcome = with_runtime(tmp_path, scenario)
    assert outcome.result == {"id": "req-9", "mode": "direct"}
    assert partials == ["one", "two", "three"]


def test_the_context_is_only_passed_to_a_two_parameter_request_naming_it(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data, extra=None):
                return {"extra": extra}
        """,
    )
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, {}))
    assert outcome.result == {"extra": None}


def test_print_output_lands_in_the_logs_and_not_on_the_channel(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import logging
        import os
        import sys

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
        print("printed at import")

        class Deployment:
            def request(self, data):
                print("to stdout")
                print("to stderr", file=sys.stderr)
                sys.stdout.buffer.write(b"as bytes\\n")
                logging.info("via logging")
                os.write(1, b"\\x00\\x00\\x00\\x05garbage straight to fd 1\\n")
                return "fine"
        """,
    )

    async def scenario(runtime: LocalRuntime) -> tuple[CallOutcome, CallOutcome, str]:
        instance = await runtime.start(spec_for(directory))
        first = await runtime.call(instance, Call("r1", None), 30)
        second = await runtime.call(instance, Call("r2", None), 30)
        log_path = tmp_path / "logs" / f"{instance.id}.log"
        # fd 1 is a pipe the server copies into the file: its bytes may arrive after the reply.
        deadline = time.monotonic() + 10
        while log_path.read_text().count("garbage straight to fd 1") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return first, second, log_path.read_text()

    first, second, log_file = with_runtime(tmp_path, scenario)
    assert first.ok and first.result == "fine" and second.ok
    assert first.logs == "to stdout\nto stderr\nas bytes\nvia logging\n"
    assert "printed at import" in log_file and "garbage straight to fd 1" in log_file
    assert "to stdout" not in log_file


# --- errors ---------------------------------------------------------------------------


def test_an_exception_with_a_public_error_message_becomes_the_error(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class UserError(Exception):
            def __init__(self, message):
                super().__init__(message)
                self.public_error_message = message

        class Deployment:
            def request(self, data):
                raise UserError("The input needs a field 'x'.")
        """,
    )
    outcome = with_runtime(tmp_path, lambda rt: start_and_call(rt, directory, {}))
    assert not outcome.ok and outcome.result is None
    assert outcome.error == "The input needs a field 'x'."


def test_any_other_exception_gives_the_generic_error_and_its_traceback_in_the_logs(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                print("about to fail")
                return 1 / 0
        """,
    )

    async def scenario(runtime: LocalRuntime) -> tuple[CallOutcome, CallOutcome]:
        instance = await runtime.start(spec_for(directory))
        failed = await runtime.call(instance, Call("r1", None), 30)
        again = await runtime.call(instance, Call("r2", None), 30)
        return failed, again

    failed, again = with_runtime(tmp_path, scenario)
    assert failed.error == "An exception occurred in the request. See the logs for details."
    assert failed.logs.startswith("about to fail\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in failed.logs
    assert not again.ok  # the instance survived and answered again


def test_os_exit_in_a_request_loses_the_instance_and_a_new_one_works(tmp_path: Path) -> None:
    dying = package(
        tmp_path,
        """
        import os

        class Deployment:
            def request(self, data):
                os._exit(1)
        """,
    )
    healthy = package(tmp_path, ECHO, name="healthy")

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(dying))
        pids = processes_working_in(dying)
        assert pids
        with pytest.raises(InstanceLost) as lost:
            await runtime.call(instance, Call("r1", {}), 30)
        assert "stopped unexpectedly (exit code 1)" in lost.value.message
        assert instance.state is InstanceState.STOPPED
        assert not await runtime.healthy(instance)
        await wait_for_async(lambda: all(process_gone(pid) for pid in pids))  # the sandbox's init a moment later
        with pytest.raises(CallNotStarted):  # it never reached the ended instance: it may be sent elsewhere
            await runtime.call(instance, Call("r2", {}), 30)

        replacement = await runtime.start(spec_for(healthy))
        assert (await runtime.call(replacement, Call("r3", "ok"), 30)).result == "ok"

    with_runtime(tmp_path, scenario)


def test_a_segfault_loses_the_instance_and_reports_the_signal(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import os
        import signal

        class Deployment:
            def request(self, data):
                os.kill(os.getpid(), signal.SIGSEGV)
        """,
    )

    async def scenario(runtime: LocalRuntime) -> None:
        with pytest.raises(InstanceLost) as lost:
            await start_and_call(runtime, directory, {})
        assert "SIGSEGV" in lost.value.message
        assert "Fatal Python error" in lost.value.logs  # faulthandler wrote to the log file

    with_runtime(tmp_path, scenario)


def test_an_instance_that_dies_while_idle_is_reported_unhealthy(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import os
        import threading
        import time

        def exit_once(signal_file):
            while not os.path.exists(signal_file):
                time.sleep(0.01)
            os._exit(3)

        class Deployment:
            def request(self, data):
                threading.Thread(target=exit_once, args=(data,), daemon=True).start()
                return "bye"
        """,
    )
    goodbye = directory / "goodbye"  # the code directory: the sandbox shows it (read-only)

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        assert (await runtime.call(instance, Call("r", str(goodbye)), 30)).result == "bye"
        goodbye.touch()  # it dies once its answer is in: idle
        deadline = time.monotonic() + 10
        while await runtime.healthy(instance):
            assert time.monotonic() < deadline, "the dead instance still looks healthy"
            await asyncio.sleep(0.01)
        assert instance.state is InstanceState.STOPPED

    with_runtime(tmp_path, scenario)


def test_a_request_hanging_past_its_timeout_is_killed_with_its_logs_so_far(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import time

        class Deployment:
            def request(self, data):
                print("working on it")
                time.sleep(600)
        """,
    )

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        pids = processes_working_in(directory)
        assert pids
        started = time.monotonic()
        with pytest.raises(CallTimedOut) as timed_out:
            await runtime.call(instance, Call("r", {}), 0.5)
        assert time.monotonic() - started < 5
        assert timed_out.value.timeout == 0.5
        assert timed_out.value.logs == "working on it\n"
        assert instance.state is InstanceState.STOPPED
        assert not await runtime.healthy(instance)
        # Killing the sandbox ends what runs inside it a moment later (the kernel tears it down).
        await wait_for_async(lambda: all(process_gone(pid) for pid in pids))

    with_runtime(tmp_path, scenario)


FLOOD = """
class Deployment:
    def request(self, data):
        if data == "again":
            return "next request is fine"
        for _ in range(50_000):  # 50 MB
            if data == "swallow":
                try:
                    print("y" * 999)
                except Exception:
                    pass
            else:
                print("y" * 999)
        return "survived"
"""


@pytest.mark.parametrize("mode", ["raise", "swallow"])
def test_printing_fifty_megabytes_fails_the_request_and_the_instance_keeps_serving(tmp_path: Path, mode: str) -> None:
    directory = package(tmp_path, FLOOD)
    limit = 100_000

    async def scenario(runtime: LocalRuntime) -> tuple[CallOutcome, CallOutcome]:
        instance = await runtime.start(spec_for(directory, max_log_bytes=limit))
        flood = await runtime.call(instance, Call("r1", mode), 60)
        after = await runtime.call(instance, Call("r2", "again"), 30)
        return flood, after

    flood, after = with_runtime(tmp_path, scenario)
    message = f"The request printed more than {limit} bytes of logs; output was cut off."
    assert not flood.ok and flood.result is None
    assert flood.error == message
    assert flood.logs.startswith("y" * 999 + "\n")
    kept = flood.logs.split("Traceback")[0].split(message)[0]
    assert len(kept.rstrip("\n").encode()) <= limit
    assert message in flood.logs
    assert after == CallOutcome(ok=True, result="next request is fine", logs="")


# --- start failures -------------------------------------------------------------------


def test_a_package_whose_import_raises_fails_to_start_with_the_error(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        print("loading my model")
        raise RuntimeError("model file is missing")
        """,
    )

    async def scenario(runtime: LocalRuntime) -> None:
        with pytest.raises(InstanceStartFailed) as failed:
            await runtime.start(spec_for(directory))
        assert "RuntimeError: model file is missing" in failed.value.message
        assert "loading my model" in failed.value.logs
        assert "Traceback (most recent call last)" in failed.value.logs
        assert list((tmp_path / "logs").iterdir()) == []  # nothing left behind

    with_runtime(tmp_path, scenario)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("class NotADeployment:\n    pass\n", "does not define a class named Deployment"),
        (
            "class Deployment:\n    def __init__(self):\n        raise ValueError('bad weights')\n"
            "    def request(self, data):\n        return data\n",
            "ValueError: bad weights",
        ),
        ("import os\nos._exit(7)\n", "exit code 7"),
        ("def broken(:\n", "SyntaxError"),
    ],
    ids=["no-class", "init-raises", "exits", "syntax-error"],
)
def test_a_package_that_cannot_load_fails_to_start_saying_why(tmp_path: Path, source: str, expected: str) -> None:
    directory = package(tmp_path, source)

    async def scenario(runtime: LocalRuntime) -> None:
        with pytest.raises(InstanceStartFailed) as failed:
            await runtime.start(spec_for(directory))
        assert expected in failed.value.message

    with_runtime(tmp_path, scenario)


def test_a_missing_deployment_file_fails_to_start(tmp_path: Path) -> None:
    directory = tmp_path / "empty"
    directory.mkdir()

    async def scenario(runtime: LocalRuntime) -> None:
        with pytest.raises(InstanceStartFailed) as failed:
            await runtime.start(spec_for(directory))
        assert "No module named 'deployment'" in failed.value.message

    with_runtime(tmp_path, scenario)


def test_a_package_that_loads_too_slowly_fails_to_start_and_is_killed(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import time

        time.sleep(600)
        """,
    )

    async def scenario(runtime: LocalRuntime) -> None:
        starting = asyncio.ensure_future(runtime.start(spec_for(directory)))
        pids = await wait_for_async(lambda: processes_working_in(directory))
        with pytest.raises(InstanceStartFailed) as failed:
            await starting
        assert "did not finish loading within 1 s" in failed.value.message
        # The worker's sandbox is gone; the kernel ends the code inside it a moment later.
        assert await wait_for_async(lambda: all(process_gone(pid) for pid in pids), deadline_s=5.0)

    with_runtime(tmp_path, scenario, start_timeout=1.0)


def test_a_missing_interpreter_fails_to_start(tmp_path: Path) -> None:
    directory = package(tmp_path, ECHO)

    async def scenario(runtime: LocalRuntime) -> None:
        with pytest.raises(InstanceStartFailed) as failed:
            await runtime.start(spec_for(directory, python=tmp_path / "no-such-python"))
        assert "Could not start the interpreter" in failed.value.message

    with_runtime(tmp_path, scenario)


# --- other styles ---------------------------------------------------------------------


def test_a_handler_style_package_gets_an_abeja_request_and_returns_its_content(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import json

        def handler(request, context):
            if isinstance(request["contents"], str):
                return "plain: " + request.read().decode()
            return {
                "status_code": 200,
                "content_type": "application/json",
                "content": {
                    "method": request["http_method"],
                    "content_type": request["content_type"],
                    "contents": request["contents"],
                    "body": json.loads(request.read()),
                    "id": context["id"],
                },
            }
        """,
        filename="main.py",
    )

    async def scenario(runtime: LocalRuntime) -> tuple[CallOutcome, CallOutcome]:
        instance = await runtime.start(spec_for(directory, handler="main:handler"))
        structured = await runtime.call(instance, Call("r1", {"x": 1}, {"id": "r1"}), 30)
        plain = await runtime.call(instance, Call("r2", "hi", {"id": "r2"}), 30)
        return structured, plain

    structured, plain = with_runtime(tmp_path, scenario)
    assert structured.result == {
        "method": "POST",
        "content_type": "application/json",
        "contents": {"x": 1},
        "body": {"x": 1},
        "id": "r1",
    }
    assert plain.result == "plain: hi"


def test_per_call_environment_is_set_for_that_call_only(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import os

        class Deployment:
            def request(self, data):
                return [os.environ.get("A"), os.environ.get("B")]
        """,
    )

    async def scenario(runtime: LocalRuntime) -> list[CallOutcome]:
        instance = await runtime.start(spec_for(directory, environment={"A": "instance", "B": "kept"}))
        with_env = await runtime.call(instance, Call("r1", "x", {wire.ENVIRONMENT_KEY: {"A": "call"}}), 30)
        without = await runtime.call(instance, Call("r2", "x", {}), 30)
        return [with_env, without]

    with_env, without = with_runtime(tmp_path, scenario)
    assert with_env.result == ["call", "kept"]
    assert without.result == ["instance", "kept"]


def test_an_http_call_gives_handler_code_the_raw_body_and_returns_its_whole_response(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        def handler(request, context):
            if request["content_type"] == "application/json":
                return {"status_code": 202, "content_type": "application/json", "content": request["contents"]}
            return {"status_code": 200, "content_type": "image/png", "content": request.read()[::-1]}
        """,
        filename="main.py",
    )
    raw = base64.b64encode(b"\x00\xffpng").decode()

    async def scenario(runtime: LocalRuntime) -> list[CallOutcome]:
        instance = await runtime.start(spec_for(directory, handler="main:handler"))
        as_json = {wire.HTTP_KEY: {"content_type": "application/json", "encoding": "text"}}
        as_bytes = {wire.HTTP_KEY: {"content_type": "image/png", "encoding": "base64"}}
        return [await runtime.call(instance, Call("r1", '{"a": 1}', as_json), 30),
                await runtime.call(instance, Call("r2", raw, as_bytes), 30)]

    json_outcome, bytes_outcome = with_runtime(tmp_path, scenario)
    assert json.loads(json_outcome.result) == {"status_code": 202, "content_type": "application/json",
                                               "body": '{"a": 1}', "encoding": "text"}
    envelope = json.loads(bytes_outcome.result)
    assert envelope["content_type"] == "image/png" and envelope["encoding"] == "base64"
    assert base64.b64decode(envelope["body"]) == b"gnp\xff\x00"


def test_a_batch_goes_to_requests_when_the_deployment_has_it(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                raise AssertionError("request() must not be called for a batch")

            def requests(self, data, context):
                return [{"n": item["n"] * 10, "id": context["id"]} for item in data]
        """,
    )
    call_context = {"id": "b1", "batch_list": True}
    outcome = with_runtime(tmp_path, lambda rt: _call(rt, directory, [{"n": 1}, {"n": 2}], call_context))
    assert outcome.result == [{"n": 10, "id": "b1"}, {"n": 20, "id": "b1"}]


def test_a_batch_calls_request_per_item_without_requests_and_a_plain_list_is_one_input(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        class Deployment:
            def request(self, data):
                return {"got": data}
        """,
    )

    async def scenario(runtime: LocalRuntime) -> tuple[CallOutcome, CallOutcome]:
        batch = await _call(runtime, directory, ["a", "b"], {"batch_list": True})
        single = await _call(runtime, directory, ["a", "b"], {})
        return batch, single

    batch, single = with_runtime(tmp_path, scenario)
    assert batch.result == [{"got": "a"}, {"got": "b"}]
    assert single.result == {"got": ["a", "b"]}


async def _call(runtime: LocalRuntime, directory: Path, data: Any, context: dict[str, Any]) -> CallOutcome:
    instance = await runtime.start(spec_for(directory))
    return await runtime.call(instance, Call("r", data, context), 30)


# --- lifecycle ------------------------------------------------------------------------


def test_stop_is_idempotent_and_close_stops_every_instance_concurrently(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import os

        class Deployment:
            def request(self, data):
                return os.getpid()
        """,
    )

    async def scenario(runtime: LocalRuntime) -> set[int]:
        instances: list[Instance] = list(await asyncio.gather(*(runtime.start(spec_for(directory)) for _ in range(3))))
        assert all([(await runtime.call(instance, Call("r", None), 30)).ok for instance in instances])
        pids = processes_working_in(directory)
        await runtime.stop(instances[0])
        await runtime.stop(instances[0])
        assert instances[0].state is InstanceState.STOPPED
        assert processes_working_in(directory) < pids
        started = time.monotonic()
        await runtime.close()
        assert time.monotonic() - started < 5
        assert all(instance.state is InstanceState.STOPPED for instance in instances)
        return pids

    pids = with_runtime(tmp_path, scenario)
    # The workers were waited for; what ran in their sandboxes ends with them, a moment later under load.
    assert wait_until(lambda: all(process_gone(pid) for pid in pids))
    assert list((tmp_path / "logs").iterdir()) == []


def test_an_instance_ignoring_the_polite_stop_is_killed(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import atexit
        import os
        import time

        atexit.register(time.sleep, 600)  # would keep the process around after "stop"

        class Deployment:
            def request(self, data):
                return os.getpid()
        """,
    )

    async def scenario(runtime: LocalRuntime) -> set[int]:
        instance = await runtime.start(spec_for(directory))
        assert (await runtime.call(instance, Call("r", None), 30)).ok
        pids = processes_working_in(directory)
        assert pids
        started = time.monotonic()
        await runtime.stop(instance)
        assert time.monotonic() - started < 5
        return pids

    pids = with_runtime(tmp_path, scenario, stop_grace=0.2)
    assert wait_until(lambda: all(process_gone(pid) for pid in pids))


def test_a_cancelled_call_stops_the_instance(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import time

        class Deployment:
            def request(self, data):
                time.sleep(600)
        """,
    )

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        task = asyncio.ensure_future(runtime.call(instance, Call("r", None), 600))
        while instance.state is not InstanceState.BUSY:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert instance.state is InstanceState.STOPPED
        await runtime.stop(instance)

    with_runtime(tmp_path, scenario)


# --- the wire -------------------------------------------------------------------------


def test_a_worker_writing_garbage_on_the_channel_is_lost_and_the_server_is_fine(tmp_path: Path) -> None:
    directory = package(
        tmp_path,
        """
        import os
        import sys

        class Deployment:
            def request(self, data):
                os.write(int(sys.argv[2]), b"\\xff\\xff\\xff\\xff")  # announces a 4 GiB frame
                return "unreachable"
        """,
    )
    healthy = package(tmp_path, ECHO, name="healthy")

    async def scenario(runtime: LocalRuntime) -> CallOutcome:
        with pytest.raises(InstanceLost) as lost:
            await start_and_call(runtime, directory, {})
        assert "oversized message" in lost.value.message
        return await start_and_call(runtime, healthy, "still serving")

    assert with_runtime(tmp_path, scenario).result == "still serving"


def test_frames_are_reassembled_from_any_chunking() -> None:
    from modelbay.runtime import wire

    messages = [{"type": "update", "id": "r", "text": "x" * n} for n in (0, 1, 70_000)]
    stream = b"".join(wire.frame(wire.encode(m)) for m in messages)
    for chunk_size in (1, 3, 4, 5, 4096, len(stream)):
        buffer = wire.FrameBuffer()
        bodies = [body for i in range(0, len(stream), chunk_size) for body in buffer.feed(stream[i : i + chunk_size])]
        assert [json.loads(body) for body in bodies] == messages
    with pytest.raises(wire.FrameTooLarge):
        wire.FrameBuffer().feed((wire.MAX_FRAME + 1).to_bytes(4, "big"))
