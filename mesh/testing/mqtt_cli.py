"""The real mosquitto_pub, mosquitto_sub and mosquitto_rr against a test broker, as a user would
type them (MQTT v5, one account)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence

import msgspec

from mesh.broker.process import MosquittoProcess


class CliResult(msgspec.Struct, frozen=True):
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def lines(self) -> list[bytes]:
        return [ln for ln in self.stdout.splitlines() if ln]


class MosquittoCli:
    """`cli = MosquittoCli(broker, "tester")`; then `await cli.rr(...)`, `await cli.pub(...)`,
    `sub = await cli.sub(...)` ... `await sub.result()`."""

    def __init__(self, broker: MosquittoProcess, principal: str = "tester") -> None:
        self.broker = broker
        self.principal = principal

    def args(self, tool: str, *, v5: bool = True) -> list[str]:
        """The command line of `tool` up to its own options (port, account, protocol)."""
        out = [tool, "-p", str(self.broker.port), "-u", self.principal]
        out += ["-P", self.broker.credentials[self.principal]]
        return out + (["-V", "mqttv5"] if v5 else [])

    async def run(self, argv: Sequence[str], timeout: float = 20.0) -> CliResult:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return CliResult(returncode=proc.returncode, stdout=out, stderr=err)

    async def rr(
        self,
        topic: str,
        message: str | bytes,
        *,
        response_topic: str,
        wait_s: int = 5,
        extra: Sequence[str] = (),
    ) -> CliResult:
        """mosquitto_rr -t TOPIC -e RESPONSE_TOPIC -m MESSAGE -W WAIT."""
        body = message.decode() if isinstance(message, bytes) else message
        argv = [*self.args("mosquitto_rr"), "-t", topic, "-e", response_topic, "-m", body]
        return await self.run([*argv, "-W", str(wait_s), *extra], timeout=wait_s + 10)

    async def pub(
        self,
        topic: str,
        message: str | bytes | None,
        *,
        qos: int = 1,
        retain: bool = False,
        v5: bool = True,
        extra: Sequence[str] = (),
    ) -> CliResult:
        """mosquitto_pub -q QOS -t TOPIC -m MESSAGE (`None`: -n, an empty message; a large or
        binary message goes through -f FILE, as a user would send one)."""
        argv = [*self.args("mosquitto_pub", v5=v5), "-q", str(qos), "-t", topic]
        body = message.encode() if isinstance(message, str) else message
        with tempfile.NamedTemporaryFile(prefix="mqtt-cli-") as fh:
            if body is None:
                argv.append("-n")
            elif len(body) > 64_000 or b"\x00" in body or not _is_text(body):
                fh.write(body)
                fh.flush()
                argv += ["-f", fh.name]
            else:
                argv += ["-m", body.decode()]
            return await self.run([*argv, *(["-r"] if retain else []), *extra])

    async def sub(
        self,
        *topics: str,
        count: int = 1,
        wait_s: int = 10,
        v5: bool = True,
        extra: Sequence[str] = (),
    ) -> Subscriber:
        """mosquitto_sub -t TOPIC ... -C COUNT -W WAIT, started (give it a moment to subscribe
        before publishing; `await sub.result()` for what it printed)."""
        argv = self.args("mosquitto_sub", v5=v5)
        for t in topics:
            argv += ["-t", t]
        argv += ["-C", str(count), "-W", str(wait_s), *extra]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(0.3)
        return Subscriber(proc, wait_s + 5)


def _is_text(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Subscriber:
    def __init__(self, proc: asyncio.subprocess.Process, timeout: float) -> None:
        self.proc = proc
        self.timeout = timeout

    async def result(self) -> CliResult:
        out, err = await asyncio.wait_for(self.proc.communicate(), self.timeout)
        assert self.proc.returncode is not None
        return CliResult(returncode=self.proc.returncode, stdout=out, stderr=err)
