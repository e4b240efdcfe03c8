"""Integrity check of JPEG files: damage the decoders do not report.

libjpeg decodes a JPEG whose entropy-coded data is damaged (flipped or garbled bytes)
into a visibly wrong image and only prints a warning ("Corrupt JPEG data: ..."), which
Pillow and OpenCV drop. `jpeg_damage` walks the Huffman-coded data of a sequential
(baseline or extended) JPEG as a decoder does, without the inverse DCT, and says where it
does not fit the image: a code no table has, a block of more than 64 coefficients, data
that ends before the last block, or bytes left over after it (libjpeg's "extraneous
bytes"). Progressive, arithmetic-coded and lossless JPEGs are not checked.
"""

from __future__ import annotations

import numpy as np

EOI, SOS, DHT, DRI = 0xD9, 0xDA, 0xC4, 0xDD
SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # baseline, extended sequential
OTHER_FRAMES = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # not checked
RESTARTS = range(0xD0, 0xD8)
PEEK_BITS = 16  # the longest Huffman code


class _Damage(Exception):
    pass


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _lookup_table(counts: bytes, symbols: bytes) -> list[int]:
    """Canonical Huffman table as a lookup on the next 16 bits: `length << 8 | symbol` (0: no code)."""
    table = np.zeros(1 << PEEK_BITS, dtype=np.int32)
    code, index = 0, 0
    for length, count in enumerate(counts, start=1):
        for _ in range(count):
            start = code << (PEEK_BITS - length)
            table[start : start + (1 << (PEEK_BITS - length))] = length << 8 | symbols[index]
            code, index = code + 1, index + 1
        code <<= 1
    return table.tolist()


def _bit_windows(segment: bytes) -> list[int]:
    """The 16 bits starting at every bit of `segment` (zero bits past its end)."""
    data = np.frombuffer(segment + bytes(8), dtype=np.uint8).astype(np.uint32)
    three = data[:-2] << 16 | data[1:-1] << 8 | data[2:]  # [n + 6]
    shifts = np.arange(8, 0, -1, dtype=np.uint32)
    return ((three[:, None] >> shifts) & 0xFFFF).reshape(-1).tolist()


def _walk(segment: bytes, mcus: int, blocks: list[tuple[list[int], list[int]]], first_mcu: int) -> None:
    """Decode the Huffman symbols of `mcus` MCUs (blocks: (DC, AC) tables per block of an MCU)."""
    windows, bits, position = _bit_windows(segment), 8 * len(segment), 0
    for mcu in range(mcus):
        for dc, ac in blocks:
            entry = dc[windows[position]]
            if not entry:
                raise _Damage(f"an invalid Huffman code at MCU {first_mcu + mcu}")
            position += (entry >> 8) + (entry & 15)
            k = 1
            while k < 64:
                entry = ac[windows[position]]
                if not entry:
                    raise _Damage(f"an invalid Huffman code at MCU {first_mcu + mcu}")
                position += entry >> 8
                run, size = entry >> 4 & 15, entry & 15
                if size:
                    k += run + 1
                    position += size
                elif run == 15:
                    k += 16
                else:
                    break
            if k > 64:
                raise _Damage(f"a block of more than 64 coefficients at MCU {first_mcu + mcu}")
            if position > bits:
                raise _Damage(f"the data ends inside MCU {first_mcu + mcu}")
    if bits - position >= 8:
        raise _Damage(f"{(bits - position) // 8} bytes left over after MCU {first_mcu + mcus - 1}")


def _scan_segments(data: bytes, start: int) -> tuple[list[bytes], int]:
    """Entropy-coded data from `start`, split at restart markers and unstuffed; and the
    offset of the marker that ends it."""
    segments, begin, at = [], start, start
    while True:
        at = data.find(b"\xff", at)
        if at < 0 or at + 1 >= len(data):
            raise _Damage("the file ends inside the image data")
        following = data[at + 1]
        if following == 0x00:
            at += 2
        elif following in RESTARTS:
            segments.append(data[begin:at].replace(b"\xff\x00", b"\xff"))
            begin = at = at + 2
        elif following == 0xFF:
            at += 1
        else:
            segments.append(data[begin:at].replace(b"\xff\x00", b"\xff"))
            return segments, at


def jpeg_damage(data: bytes) -> str | None:
    """Why the entropy-coded data of JPEG `data` is damaged, or None when it decodes cleanly
    (or is of a kind not checked: progressive, arithmetic, lossless)."""
    try:
        _check(data)
    except _Damage as damage:
        return str(damage)
    except (IndexError, KeyError, ValueError):
        return "malformed JPEG headers"
    return None


def _check(data: bytes) -> None:
    if data[:2] != b"\xff\xd8":
        raise _Damage("no JPEG start marker")
    dc_tables: dict[int, list[int]] = {}
    ac_tables: dict[int, list[int]] = {}
    frame = None
    restart_interval = 0
    at = 2
    while True:
        while at < len(data) and data[at] == 0xFF and at + 1 < len(data) and data[at + 1] == 0xFF:
            at += 1  # fill bytes
        if at + 1 >= len(data) or data[at] != 0xFF:
            raise _Damage(
                "the file ends before its end marker"
                if at + 1 >= len(data)
                else f"unexpected bytes at offset {at} where a marker should be"
            )
        marker = data[at + 1]
        if marker == EOI:
            return
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        body = data[at + 4 : at + 2 + length]
        if len(body) != length - 2:
            raise _Damage("the file ends inside a header")
        at += 2 + length
        if marker in OTHER_FRAMES:
            return  # progressive, arithmetic or lossless: not checked
        if marker in SEQUENTIAL_HUFFMAN:
            height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
            components = {body[6 + 3 * i]: (body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(body[5])}
            frame = (height, width, components)
        elif marker == DHT:
            offset = 0
            while offset < len(body):
                kind, counts = body[offset], body[offset + 1 : offset + 17]
                symbols = body[offset + 17 : offset + 17 + sum(counts)]
                (ac_tables if kind >> 4 else dc_tables)[kind & 15] = _lookup_table(counts, symbols)
                offset += 17 + sum(counts)
        elif marker == DRI:
            restart_interval = int.from_bytes(body[:2], "big")
        elif marker == SOS:
            if frame is None:
                raise _Damage("image data before the frame header")
            segments, at = _scan_segments(data, at)
            _check_scan(body, frame, dc_tables, ac_tables, restart_interval, segments)


def _check_scan(body: bytes, frame, dc_tables, ac_tables, restart_interval: int, segments: list[bytes]) -> None:
    height, width, components = frame
    h_max = max(h for h, _ in components.values())
    v_max = max(v for _, v in components.values())
    scan = [(body[1 + 2 * i], body[2 + 2 * i]) for i in range(body[0])]
    if len(scan) == 1:  # non-interleaved: one block per MCU
        h, v = components[scan[0][0]]
        columns = _ceil_div(_ceil_div(width * h, h_max), 8)
        rows = _ceil_div(_ceil_div(height * v, v_max), 8)
        blocks = [(dc_tables[scan[0][1] >> 4], ac_tables[scan[0][1] & 15])]
    else:
        columns, rows = _ceil_div(width, 8 * h_max), _ceil_div(height, 8 * v_max)
        blocks = [
            (dc_tables[tables >> 4], ac_tables[tables & 15])
            for ident, tables in scan
            for _ in range(components[ident][0] * components[ident][1])
        ]
    total = columns * rows
    per_segment = restart_interval or total
    expected = _ceil_div(total, per_segment)
    if len(segments) != expected:
        raise _Damage(f"{len(segments)} restart intervals where the image has {expected}")
    for index, segment in enumerate(segments):
        first = index * per_segment
        _walk(segment, min(per_segment, total - first), blocks, first)
