"""GuestAgent against a fake qemu-guest-agent peer that runs guest-exec commands for real on the host."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import pytest

from corral.engine.guest_agent import FROZEN_ALLOWED, ExecExit, ExecOutput, GuestAgent, GuestAgentCommandError
from corral.errors import GuestAgentError, GuestAgentTimeout

SHELLS: list[tuple[str, ...]] = [("/bin/sh",)]
if shutil.which("busybox"):
    SHELLS.append((shutil.which("busybox") or "busybox", "sh"))


class FakeAgent:
    """Speaks QGA over a unix socket: 0xFF resets the parser, guest-sync-delimited answers 0xFF + JSON.

    ``stale`` is sent before the first sync answer of each connection (old answers and garbage); ``ignore_syncs``
    makes the agent deaf to that many sync requests (an agent that is not running yet); commands named in
    ``silent`` get no answer at all.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stale = b'{"return": 4242}\n\xff{"return": 17}\ngarbage \xfe\x00 {"return": {"pid": 1}}\n'
        self.ignore_syncs = 0
        self.silent: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.captured: dict[int, asyncio.Future[tuple[bytes, bytes]]] = {}
        self.files: dict[int, IO[bytes]] = {}
        self.next_handle = 1000
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.frozen = False  # like qemu-ga: while frozen, only FROZEN_ALLOWED commands are served
        self.running = asyncio.Event()  # cleared: a guest whose vCPUs are stopped, answering nothing until set
        self.running.set()
        self.refused: list[str] = []

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        await asyncio.gather(*self.captured.values(), return_exceptions=True)
        for f in self.files.values():
            f.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        buf = b""
        first_sync = True
        decoder = json.JSONDecoder()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
                while True:
                    if b"\xff" in buf:
                        buf = buf[buf.rindex(b"\xff") + 1 :]
                    text = buf.decode().lstrip()
                    if not text:
                        buf = b""
                        break
                    try:
                        request, end = decoder.raw_decode(text)
                    except ValueError:
                        break
                    buf = text[end:].encode()
                    self.requests.append(request)
                    await self.running.wait()
                    answer = await self._dispatch(request)
                    if answer is None:
                        continue
                    if request["execute"] == "guest-sync-delimited":
                        if first_sync:
                            writer.write(self.stale)
                            first_sync = False
                        writer.write(b"\xff" + json.dumps(answer).encode() + b"\n")
                    else:
                        writer.write(json.dumps(answer).encode() + b"\n")
                    await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any] | None:
        command = request["execute"]
        args = request.get("arguments", {})
        if command in self.silent:
            return None
        if command == "guest-sync-delimited":
            if self.ignore_syncs > 0:
                self.ignore_syncs -= 1
                return None
            return {"return": args["id"]}
        if self.frozen and command not in FROZEN_ALLOWED:
            self.refused.append(command)
            return {"error": {"class": "CommandNotFound", "desc": f"Command {command} has been disabled: the agent "
                              "is in frozen state"}}
        handler = getattr(self, "cmd_" + command.replace("-", "_"), None)
        if handler is None:
            return {
                "error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}
            }
        try:
            return {"return": await handler(**{k.replace("-", "_"): v for k, v in args.items()})}
        except (OSError, KeyError, ValueError) as exc:
            return {"error": {"class": "GenericError", "desc": str(exc)}}

    async def cmd_guest_ping(self) -> dict[str, Any]:
        return {}

    async def cmd_guest_fsfreeze_freeze(self) -> int:
        self.frozen = True
        return 1

    async def cmd_guest_fsfreeze_thaw(self) -> int:
        was, self.frozen = self.frozen, False
        return int(was)

    async def cmd_guest_exec(
        self,
        path: str,
        arg: list[str] | None = None,
        env: list[str] | None = None,
        input_data: str | None = None,
        capture_output: bool = False,
    ) -> dict[str, Any]:
        environment = dict(item.split("=", 1) for item in env) if env is not None else None
        proc = await asyncio.create_subprocess_exec(
            path,
            *(arg or []),
            env=environment,
            stdin=asyncio.subprocess.PIPE if input_data is not None else None,
            stdout=asyncio.subprocess.PIPE if capture_output else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if capture_output else asyncio.subprocess.DEVNULL,
        )
        if input_data is not None:
            assert proc.stdin is not None
            proc.stdin.write(base64.b64decode(input_data))
            await proc.stdin.drain()
            proc.stdin.close()
        self.procs[proc.pid] = proc
        if capture_output:  # like QGA: the output is collected while it runs, handed over with the exit status
            self.captured[proc.pid] = asyncio.ensure_future(proc.communicate())
        return {"pid": proc.pid}

    async def cmd_guest_exec_status(self, pid: int) -> dict[str, Any]:
        proc = self.procs[pid]
        captured = self.captured.get(pid)
        if proc.returncode is None or (captured is not None and not captured.done()):
            return {"exited": False}
        del self.procs[pid]
        result: dict[str, Any] = {"exited": True}
        if captured is not None:
            out, err = captured.result()
            del self.captured[pid]
            result |= {"out-data": base64.b64encode(out).decode(), "err-data": base64.b64encode(err).decode()}
        if proc.returncode < 0:
            return result | {"signal": -proc.returncode}
        return result | {"exitcode": proc.returncode}

    async def cmd_guest_file_open(self, path: str, mode: str = "r") -> int:
        self.next_handle += 1
        self.files[self.next_handle] = open(path, mode.replace("b", "") + "b")  # noqa: ASYNC230, SIM115 (a fake agent, like QGA, does file I/O inline)
        return self.next_handle

    async def cmd_guest_file_read(self, handle: int, count: int = 4096) -> dict[str, Any]:
        data = self.files[handle].read(count) or b""
        result: dict[str, Any] = {"count": len(data), "eof": len(data) < count}
        if data:
            result["buf-b64"] = base64.b64encode(data).decode()
        return result

    async def cmd_guest_file_write(
        self, handle: int, buf_b64: str, count: int | None = None
    ) -> dict[str, Any]:
        data = base64.b64decode(buf_b64)
        written = self.files[handle].write(data)
        return {"count": written, "eof": False}

    async def cmd_guest_file_close(self, handle: int) -> dict[str, Any]:
        self.files.pop(handle).close()
        return {}


def run_with_agent(
    tmp_path: Path,
    body: Callable[[FakeAgent, GuestAgent], Awaitable[None]],
    *,
    shell: tuple[str, ...] = ("/bin/sh",),
    start_server: bool = True,
) -> None:
    async def main() -> None:
        fake = FakeAgent(tmp_path / "qga.sock")
        if start_server:
            await fake.start()
        guest_tmp = tmp_path / "guest-tmp"
        guest_tmp.mkdir(exist_ok=True)
        agent = GuestAgent(fake.path, tmp_dir=str(guest_tmp), shell=shell)
        try:
            await asyncio.wait_for(body(fake, agent), 60)
        finally:
            await agent.close()
            await fake.stop()

    asyncio.run(main())


async def collect(agent: GuestAgent, argv: list[str], **kwargs: Any) -> tuple[bytes, bytes, ExecExit]:
    out, err = bytearray(), bytearray()
    exit_: ExecExit | None = None
    async for item in agent.exec_stream(argv, **kwargs):
        assert exit_ is None, "nothing may follow ExecExit"
        if isinstance(item, ExecOutput):
            (out if item.stream == "stdout" else err).extend(item.data)
        else:
            exit_ = item
    assert exit_ is not None
    return bytes(out), bytes(err), exit_


def guest_tmp_files(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path / "guest-tmp"))


# -- handshake and execute ---------------------------------------------------------------------------------------


def test_wait_ready_skips_stale_data_and_pings(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        assert [r["execute"] for r in fake.requests] == ["guest-sync-delimited", "guest-ping"]
        assert await agent.execute("guest-ping") == {}

    run_with_agent(tmp_path, body)


def test_connect_early_then_wait_ready_syncs_on_that_connection(tmp_path: Path) -> None:
    """connect_early opens the socket without a word (the guest is not running yet); wait_ready then syncs on the same
    connection, and with set_time asks guest-set-time with the host's clock instead of guest-ping."""
    async def set_time(time: int) -> dict[str, Any]:
        return {}

    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        fake.cmd_guest_set_time = set_time  # type: ignore[attr-defined]
        await agent.connect_early()
        await asyncio.sleep(0.05)
        assert fake.connections == 1 and fake.requests == []
        before = time.time_ns()
        assert await agent.wait_ready(5, set_time=True) is None
        assert fake.connections == 1
        assert [r["execute"] for r in fake.requests] == ["guest-sync-delimited", "guest-set-time"]
        assert before <= fake.requests[-1]["arguments"]["time"] <= time.time_ns()

    run_with_agent(tmp_path, body)


def test_wait_ready_set_time_refused_still_means_ready(tmp_path: Path) -> None:
    """An agent that cannot set the clock (no hwclock) has answered: wait_ready returns its refusal."""
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        refusal = await agent.wait_ready(5, set_time=True)
        assert refusal is not None and "guest-set-time" in refusal
        assert await agent.execute("guest-ping") == {}

    run_with_agent(tmp_path, body)


def test_wait_ready_retries_until_socket_appears_and_agent_answers(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        async def late_start() -> None:
            await asyncio.sleep(0.5)
            fake.ignore_syncs = 2  # the agent in the guest is not running yet
            await fake.start()

        starter = asyncio.create_task(late_start())
        await agent.wait_ready(10)
        await starter
        syncs = [r for r in fake.requests if r["execute"] == "guest-sync-delimited"]
        assert len(syncs) == 3
        assert fake.requests[-1]["execute"] == "guest-ping"

    run_with_agent(tmp_path, body, start_server=False)


def test_wait_ready_times_out_without_socket(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        started = time.monotonic()
        with pytest.raises(GuestAgentTimeout, match="not ready within"):
            await agent.wait_ready(0.6)
        assert time.monotonic() - started < 2

    run_with_agent(tmp_path, body, start_server=False)


def test_wait_ready_times_out_when_agent_is_deaf(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        fake.ignore_syncs = 1000
        with pytest.raises(GuestAgentTimeout, match="guest-sync-delimited"):
            await agent.wait_ready(1.0)

    run_with_agent(tmp_path, body)


def test_error_answer_raises_command_error_and_keeps_connection(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        with pytest.raises(GuestAgentError) as info:
            await agent.execute("guest-no-such-thing", {"x": 1})
        error = info.value
        assert isinstance(error, GuestAgentCommandError)
        assert error.command == "guest-no-such-thing"
        assert error.arguments == {"x": 1}
        assert error.error_class == "CommandNotFound"
        assert "has not been found" in error.desc
        assert await agent.execute("guest-ping") == {}
        assert fake.connections == 1

    run_with_agent(tmp_path, body)


def test_no_answer_times_out_then_next_call_resyncs(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        fake.silent.add("guest-get-time")
        with pytest.raises(GuestAgentTimeout, match="guest-get-time"):
            await agent.execute("guest-get-time", timeout=0.3)
        assert await agent.execute("guest-ping") == {}
        assert fake.connections == 2
        assert fake.requests[-2]["execute"] == "guest-sync-delimited"

    run_with_agent(tmp_path, body)


def test_execute_without_socket_is_an_error(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        with pytest.raises(GuestAgentError, match="cannot connect"):
            await agent.execute("guest-ping", timeout=1)

    run_with_agent(tmp_path, body, start_server=False)


def test_concurrent_users_share_the_connection(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        results = await asyncio.gather(*(agent.execute("guest-ping") for _ in range(20)))
        assert results == [{}] * 20
        outs = await asyncio.gather(*(collect(agent, ["echo", str(i)]) for i in range(4)))
        assert [o[0] for o in outs] == [f"{i}\n".encode() for i in range(4)]
        assert fake.connections == 1

    run_with_agent(tmp_path, body)


def test_cancelled_request_resets_the_connection(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        fake.silent.add("guest-get-time")
        task = asyncio.create_task(agent.execute("guest-get-time"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await agent.execute("guest-ping") == {}
        assert fake.connections == 2

    run_with_agent(tmp_path, body)


def test_commands_wait_for_the_thaw_of_a_freeze(tmp_path: Path) -> None:
    """An exec that meets a snapshot's freeze (started during it, or polling through it) waits for the thaw
    instead of failing: nothing qemu-ga refuses while frozen is sent to it."""

    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        running = asyncio.ensure_future(collect(agent, ["sh", "-c", "sleep 0.3; echo through"]))
        await asyncio.sleep(0.1)
        assert await agent.execute("guest-fsfreeze-freeze") == 1
        started = asyncio.ensure_future(collect(agent, ["echo", "after"]))
        await asyncio.sleep(0.6)
        assert not running.done() and not started.done()
        assert await agent.execute("guest-fsfreeze-thaw") == 1
        assert (await running)[0] == b"through\n" and (await started)[0] == b"after\n"
        # frozen for longer than a command's timeout: it is not sent, and says why
        await agent.execute("guest-fsfreeze-freeze")
        with pytest.raises(GuestAgentTimeout, match="stayed frozen"):
            await agent.execute("guest-file-open", {"path": str(tmp_path / "x"), "mode": "w"}, timeout=0.3)
        await agent.execute("guest-ping")  # allowed while frozen
        await agent.execute("guest-fsfreeze-thaw")
        assert fake.refused == []

    run_with_agent(tmp_path, body)


def test_the_time_a_vms_vcpus_are_stopped_does_not_count_against_a_request(tmp_path: Path) -> None:
    """A paused guest answers nothing: a request (and the ones queued behind it) waits through the pause and gets
    its answer after the resume, its deadline moved by the pause; a guest that does not answer while running still
    times out."""

    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        fake.running.clear()
        agent.vcpus_stopped()
        first = asyncio.ensure_future(agent.execute("guest-ping", timeout=0.3))
        queued = asyncio.ensure_future(agent.execute("guest-ping", timeout=0.3))
        await asyncio.sleep(1.0)  # paused for over three times their timeout
        assert not first.done() and not queued.done()
        fake.running.set()
        agent.vcpus_resumed()
        assert await first == {}
        assert await queued == {}
        t0 = time.monotonic()
        run = asyncio.ensure_future(agent.execute("guest-ping", timeout=0.5))
        await asyncio.sleep(0.1)
        fake.running.clear()
        agent.vcpus_stopped()
        await asyncio.sleep(0.8)
        fake.running.set()
        agent.vcpus_resumed()
        assert await run == {} and time.monotonic() - t0 >= 0.8
        assert fake.connections == 1, "no request timed out through the pauses"
        fake.silent.add("guest-get-time")
        with pytest.raises(GuestAgentTimeout):
            await agent.execute("guest-get-time", timeout=0.3)

    run_with_agent(tmp_path, body)


def test_a_vm_stopped_until_someone_acts_is_not_waited_for(tmp_path: Path) -> None:
    """A full disk or an I/O error stops the VM until its user acts (frees space, resumes): a request then times out
    as usual, even when QEMU's STOP comes after, or whoever must act would hang waiting; a resume ends that."""

    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        await agent.wait_ready(5)
        fake.running.clear()
        agent.vcpus_stopped()  # STOP first, the I/O error just after
        run = asyncio.ensure_future(agent.execute("guest-ping", timeout=0.3))
        await asyncio.sleep(0.1)
        agent.stopped_until_acted_on()
        with pytest.raises(GuestAgentTimeout):
            await run
        agent.vcpus_stopped()  # and a STOP after the I/O error changes nothing
        t0 = time.monotonic()
        with pytest.raises(GuestAgentTimeout):
            await agent.execute("guest-ping", timeout=0.3)
        assert time.monotonic() - t0 < 2
        fake.running.set()
        agent.vcpus_resumed()
        assert await agent.execute("guest-ping") == {}

    run_with_agent(tmp_path, body)


# -- files -------------------------------------------------------------------------------------------------------


def test_write_and_read_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)

    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        target = str(tmp_path / "f.bin")
        await agent.write_file(target, data)
        assert Path(target).read_bytes() == data  # noqa: ASYNC240
        assert await agent.read_file(target) == data
        await agent.write_file(target, b"")
        assert await agent.read_file(target) == b""
        assert not fake.files
        with pytest.raises(GuestAgentCommandError):
            await agent.read_file(str(tmp_path / "missing"))

    run_with_agent(tmp_path, body)


# -- exec_stream -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: " ".join(s))
def test_exec_basic_exit_codes_and_cleanup(tmp_path: Path, shell: tuple[str, ...]) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        out, err, exit_ = await collect(agent, ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (out, err, exit_) == (b"out\n", b"err\n", ExecExit(3, None, False))

        out, err, exit_ = await collect(agent, ["true"])
        assert exit_ == ExecExit(0, None, False)

        out, err, exit_ = await collect(agent, ["no-such-command-xyz", "arg"])
        assert exit_ == ExecExit(127, None, False)
        assert b"no-such-command-xyz" in err and b"not found" in err

        out, err, exit_ = await collect(agent, ["sh", "-c", "kill -TERM $$; sleep 5"])
        assert exit_ == ExecExit(None, 15, False)

        assert guest_tmp_files(tmp_path) == []
        assert not fake.files and not fake.procs

    run_with_agent(tmp_path, body, shell=shell)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: " ".join(s))
def test_exec_streams_output_before_exit(tmp_path: Path, shell: tuple[str, ...]) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        arrivals: list[tuple[float, Any]] = []
        async for item in agent.exec_stream(["sh", "-c", "echo first; sleep 0.6; echo second"]):
            arrivals.append((time.monotonic(), item))
        first_at = next(t for t, i in arrivals if isinstance(i, ExecOutput) and b"first" in i.data)
        exit_at, exit_ = arrivals[-1]
        assert exit_ == ExecExit(0, None, False)
        assert exit_at - first_at > 0.4, "the first line must arrive while the command still runs"
        out = b"".join(i.data for _, i in arrivals if isinstance(i, ExecOutput) and i.stream == "stdout")
        assert out == b"first\nsecond\n"

    run_with_agent(tmp_path, body, shell=shell)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: " ".join(s))
def test_exec_stdin_env_cwd(tmp_path: Path, shell: tuple[str, ...]) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()

    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        out, _, exit_ = await collect(agent, ["cat"], stdin=b"hello\x00world")
        assert (out, exit_.exit_code) == (b"hello\x00world", 0)

        out, _, exit_ = await collect(agent, ["cat"])  # no stdin: EOF at once, no hang
        assert (out, exit_.exit_code) == (b"", 0)

        out, _, _ = await collect(agent, ["sh", "-c", 'printf "%s|%s" "$FOO" "$PATH"'], env={"FOO": "b a r"})
        assert out == b"b a r|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

        out, _, _ = await collect(agent, ["sh", "-c", 'printf %s "$PATH"'], env={"PATH": "/bin:/usr/bin"})
        assert out == b"/bin:/usr/bin"

        out, _, _ = await collect(agent, ["pwd"], cwd=str(workdir))
        assert out.decode().strip() == str(workdir)

        out, err, exit_ = await collect(agent, ["pwd"], cwd=str(tmp_path / "missing"))
        assert exit_.exit_code != 0 and err

        out, _, _ = await collect(agent, ["printf", "%s\\n", "a b", "$HOME", "'q'"])
        assert out == b"a b\n$HOME\n'q'\n"

    run_with_agent(tmp_path, body, shell=shell)


def test_exec_large_output(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        out, err, exit_ = await collect(
            agent, ["sh", "-c", "head -c 300000 /dev/zero; head -c 70000 /dev/zero >&2"]
        )
        assert (len(out), len(err), exit_.exit_code) == (300000, 70000, 0)

    run_with_agent(tmp_path, body)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # an orphan reparented to a non-reaping init stays a zombie


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: " ".join(s))
def test_exec_timeout_kills_the_process_group(tmp_path: Path, shell: tuple[str, ...]) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        started = time.monotonic()
        out, _, exit_ = await collect(agent, ["sh", "-c", "sleep 30 & echo $!; wait"], timeout=0.5)
        assert exit_ == ExecExit(None, None, True)
        assert time.monotonic() - started < 5
        child = int(out.split()[0])
        for _ in range(50):
            if _gone(child):
                break
            await asyncio.sleep(0.05)
        assert _gone(child), "the background child must be killed with its group"
        assert guest_tmp_files(tmp_path) == []
        assert not fake.procs

    run_with_agent(tmp_path, body, shell=shell)


def test_exec_abandoned_iteration_kills_and_cleans_up(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        stream = agent.exec_stream(["sh", "-c", "echo $$; exec sleep 30"])
        async for item in stream:
            assert isinstance(item, ExecOutput)
            pid = int(item.data)
            break
        await stream.aclose()  # type: ignore[attr-defined]
        assert _gone(pid)
        assert guest_tmp_files(tmp_path) == []
        assert not fake.procs

    run_with_agent(tmp_path, body)


def test_exec_cancelled_consumer_cleans_up(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        task = asyncio.create_task(collect(agent, ["sleep", "30"]))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert guest_tmp_files(tmp_path) == []
        assert not fake.procs
        assert await agent.execute("guest-ping") == {}

    run_with_agent(tmp_path, body)


def test_exec_guest_error_propagates(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        bad = GuestAgent(fake.path, tmp_dir=str(tmp_path / "no-such-dir"))
        try:
            with pytest.raises(GuestAgentCommandError) as info:
                await collect(bad, ["true"])
            assert info.value.command == "guest-file-open"
        finally:
            await bad.close()

    run_with_agent(tmp_path, body)


def test_exec_captured_output_status_stdin_and_timeout(tmp_path: Path) -> None:
    async def body(fake: FakeAgent, agent: GuestAgent) -> None:
        assert await agent.exec_captured(["/bin/sh", "-c", 'echo out; echo err >&2; exit 3']) == (3, b"out\n", b"err\n")
        assert await agent.exec_captured(["cat"], stdin=b"in\x00put") == (0, b"in\x00put", b"")
        assert (await agent.exec_captured(["/bin/sh", "-c", "kill -9 $$"]))[0] == 128 + 9
        # No files in the guest, no streaming: one guest-exec, then status questions only.
        assert {r["execute"] for r in fake.requests[-3:]} <= {"guest-exec", "guest-exec-status"}
        with pytest.raises(GuestAgentTimeout, match="did not finish within"):
            await agent.exec_captured(["sleep", "30"], timeout=0.3)
        # It was killed: it ends long before its 30 s.
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in fake.procs.values())), 5)

    run_with_agent(tmp_path, body)
