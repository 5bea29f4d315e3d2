"""LZF (liblzf) block compression, as used by PCD `DATA binary_compressed`. Pure Python; written from the format.

A compressed block is a sequence of tokens, each starting with a control byte `c`:
  c < 32        literal run: the next c + 1 bytes are copied as they are;
  c >= 32       back reference: length L = c >> 5 (if L == 7, add the next byte), then one more byte b;
                copy L + 2 bytes starting ((c & 31) << 8) + b + 1 bytes back in the output (may overlap).
"""

from __future__ import annotations

_MAX_LITERAL = 32
_MAX_OFFSET = 1 << 13  # 13 offset bits
_MAX_MATCH = 7 + 255 + 2


def lzf_decompress(data: bytes | bytearray | memoryview, expected_size: int) -> bytes:
    """Decompress one LZF block to exactly `expected_size` bytes; ValueError if the stream is corrupt."""
    src = bytes(data)
    out = bytearray()
    ip, end = 0, len(src)
    while ip < end:
        ctrl = src[ip]
        ip += 1
        if ctrl < 32:
            run = ctrl + 1
            if ip + run > end:
                raise ValueError("LZF stream ends inside a literal run")
            out += src[ip : ip + run]
            ip += run
        else:
            length = ctrl >> 5
            if length == 7:
                if ip >= end:
                    raise ValueError("LZF stream ends inside a back reference")
                length += src[ip]
                ip += 1
            if ip >= end:
                raise ValueError("LZF stream ends inside a back reference")
            distance = ((ctrl & 0x1F) << 8) + src[ip] + 1
            ip += 1
            length += 2
            start = len(out) - distance
            if start < 0:
                raise ValueError("LZF back reference points before the start of the output")
            if distance >= length:
                out += out[start : start + length]
            else:  # overlapping copy repeats the last `distance` bytes
                pattern = bytes(out[start:])
                repeats, rest = divmod(length, distance)
                out += pattern * repeats + pattern[:rest]
        if len(out) > expected_size:
            raise ValueError(f"LZF stream decompresses to more than the declared {expected_size} bytes")
    if len(out) != expected_size:
        raise ValueError(f"LZF stream decompresses to {len(out)} bytes, the header declares {expected_size}")
    return bytes(out)


def lzf_compress(data: bytes | bytearray | memoryview) -> bytes:
    """Greedy LZF compression (3-byte hash of the last position seen); any valid LZF decoder reads the result."""
    src = bytes(data)
    n = len(src)
    out = bytearray()
    literal_start = 0
    last_seen: dict[bytes, int] = {}
    ip = 0

    def emit_literals(start: int, end: int) -> None:
        while start < end:
            run = min(_MAX_LITERAL, end - start)
            out.append(run - 1)
            out.extend(src[start : start + run])
            start += run

    while ip + 2 < n:
        key = src[ip : ip + 3]
        ref = last_seen.get(key)
        last_seen[key] = ip
        if ref is not None and ip - ref <= _MAX_OFFSET:
            limit = min(_MAX_MATCH, n - ip)
            length = 3
            while length < limit and src[ref + length] == src[ip + length]:
                length += 1
            emit_literals(literal_start, ip)
            distance = ip - ref - 1
            encoded = length - 2
            if encoded < 7:
                out.append((encoded << 5) | (distance >> 8))
            else:
                out.append((7 << 5) | (distance >> 8))
                out.append(encoded - 7)
            out.append(distance & 0xFF)
            # index a few positions inside the match so later repeats are found (cheap, not exhaustive)
            for k in range(ip + 1, min(ip + length, n - 2), max(1, length // 4)):
                last_seen[src[k : k + 3]] = k
            ip += length
            literal_start = ip
        else:
            ip += 1
    emit_literals(literal_start, n)
    return bytes(out)
