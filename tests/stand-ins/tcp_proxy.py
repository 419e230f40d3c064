"""A TCP forwarder for the "warehouse down" test: listen on 127.0.0.1:PORT, forward to HOST:TARGET.
Until it starts, the port refuses connections, as a warehouse that is down does.
Usage: tcp_proxy.py PORT HOST TARGET"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(port, host, target):
    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(host, target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
