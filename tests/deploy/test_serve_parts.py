"""The server's parts on their own: dynamic batching, bounded bodies, in-memory multipart."""

from __future__ import annotations

import asyncio

import pytest
import torch
from tests._extras import require_extra

require_extra("fastapi", "serve")

from fewclip.serve import free_port, is_loopback  # noqa: E402
from fewclip.serve.batcher import DynamicBatcher  # noqa: E402
from fewclip.serve.uploads import BadForm, BodyTooLarge, parse_multipart, read_body  # noqa: E402


def _run(coro):
    return asyncio.run(coro)


def test_rows_submitted_together_run_as_one_batch_in_order():
    calls: list[int] = []

    def double(x):
        calls.append(len(x))
        return x * 2

    async def main():
        b = DynamicBatcher(double, max_batch=8, max_wait=60)
        await b.start()
        rows = [torch.full((2,), float(i)) for i in range(5)]
        # all five are queued before the collector runs; five < max_batch, and the collector
        # stops waiting once the queue is empty only at the deadline, so end it by filling up
        results = await asyncio.gather(
            *(b.submit(r[None]) for r in rows), b.submit(torch.zeros(3, 2))
        )
        await b.stop()
        return results

    results = _run(main())
    assert calls == [8]
    for i, (out, sizes) in enumerate(results[:5]):
        assert torch.equal(out, torch.full((1, 2), 2.0 * i))
        assert sizes == [8]


def test_a_request_larger_than_max_batch_is_spread_over_batches():
    calls: list[int] = []

    def ident(x):
        calls.append(len(x))
        return x + 0

    async def main():
        b = DynamicBatcher(ident, max_batch=2, max_wait=0)
        await b.start()
        out, sizes = await b.submit(torch.arange(5.0)[:, None])
        await b.stop()
        return out, sizes

    out, sizes = _run(main())
    assert calls == [2, 2, 1]
    assert sizes == [2, 2, 2, 2, 1]
    assert torch.equal(out, torch.arange(5.0)[:, None])


def test_a_failing_batch_fails_its_requests_and_the_next_one_runs():
    state = {"fail": True}
    batches: list[int] = []

    def flaky(x):
        if state.pop("fail", False):
            raise RuntimeError("out of memory")
        return x

    async def main():
        b = DynamicBatcher(flaky, max_batch=4, max_wait=0, on_batch=batches.append)
        await b.start()
        with pytest.raises(RuntimeError, match="out of memory"):
            await b.submit(torch.ones(2, 1))
        out, _ = await b.submit(torch.ones(3, 1))
        await b.stop()
        return out

    assert torch.equal(_run(main()), torch.ones(3, 1))
    assert batches == [3]  # on_batch counts batches that ran


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch: expected a positive integer, found 0"):
        DynamicBatcher(lambda x: x, max_batch=0)


class _Request:
    def __init__(self, chunks, length=None):
        self.headers = {} if length is None else {"content-length": str(length)}
        self._chunks = chunks

    async def stream(self):
        for c in self._chunks:
            yield c


def test_read_body_refuses_by_header_and_by_streamed_size():
    assert _run(read_body(_Request([b"ab", b"cd"], 4), 4)) == b"abcd"
    with pytest.raises(BodyTooLarge, match=r"larger than 0\.25 MiB"):
        _run(read_body(_Request([b"x"], 2**20), 2**18))
    consumed = []

    class Counting(_Request):
        async def stream(self):
            for c in self._chunks:
                consumed.append(c)
                yield c

    with pytest.raises(BodyTooLarge):
        _run(read_body(Counting([b"a" * 3, b"b" * 3, b"c" * 3]), 5))  # no header
    assert len(consumed) == 2  # stopped as soon as the limit was passed


def _form(parts):
    body = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--BND\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--BND--\r\n"


def test_multipart_file_parts_in_order_fields_ignored():
    binary = bytes(range(256)) * 3 + b"\r\n--BN"  # CRLF and a boundary prefix inside the data
    body = _form([
        ("files", "a.png", binary),
        ("note", None, b"plain field"),
        ("other", "b.jpg", b""),
        ("files", "ünï.png", b"x"),
    ])  # fmt: skip
    ups = parse_multipart("multipart/form-data; boundary=BND", body)
    assert [(u.field, u.filename, u.data) for u in ups] == [
        ("files", "a.png", binary),
        ("other", "b.jpg", b""),
        ("files", "ünï.png", b"x"),
    ]


def test_multipart_errors():
    with pytest.raises(BadForm, match="expected a multipart/form-data body with a boundary"):
        parse_multipart("multipart/form-data", b"")
    with pytest.raises(BadForm, match="expected a multipart/form-data body"):
        parse_multipart("application/json; boundary=x", b"{}")
    with pytest.raises(BadForm, match="malformed multipart body"):
        parse_multipart("multipart/form-data; boundary=BND", b"--XYZ\r\ngarbage")


def test_loopback_hosts_and_free_ports():
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.5")
    assert not is_loopback("example.org")
    port = free_port("127.0.0.1")
    assert 0 < port < 65536
    assert free_port("203.0.113.1") == 0  # not an address of this machine
