"""A TCP proxy the tests can cut and restore, to make a real broker unreachable on demand."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from leadpulse.dev.embedded import free_port


class Proxy:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        self.enabled = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Stopped by close(): finish the pipes and close the loop in the thread that ran it.
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    def start(self) -> Proxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.enabled:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def _call(self, fn: object) -> None:
        async def run() -> None:
            fn()  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones: the broker is unreachable."""

        def do() -> None:
            self.enabled = False
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._call(do)

    def restore(self) -> None:
        def do() -> None:
            self.enabled = True

        self._call(do)

    def close(self) -> None:
        def do() -> None:
            if self._server:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        self._call(do)

        async def settle() -> None:
            await asyncio.sleep(0.1)  # let aborted transports finish closing their sockets

        asyncio.run_coroutine_threadsafe(settle(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
