"""The fault campaign's NBD client (crates/cleave/tests/campaign.rs), on libnbd.

One sequential client per volume: it writes deterministic 4 KiB blocks, FLUSHes now
and then, and reads back what it wrote in this session. It never has two requests in
flight, so a FLUSH acknowledgement covers exactly the writes acknowledged before it.
Every step is printed (line-buffered) before and after it happens, for the checker:

    W <version> <offset> <length>   write issued        A <version>    write acknowledged
    WE <version> <errno> <message>  write failed (connection still up)
    F                               flush issued        FA             flush acknowledged
    FE <errno> <message>            flush failed (connection still up)
    R <offset> <length>             read back and checked (bytes)
    X <message>                     a read-back differs from what this session wrote
    E <message>                     the connection is gone (the gateway died): exit 2
    DONE                            the stop file appeared; a last flush was acknowledged

Block `b` (byte offset b*4096) of write `version` on volume `tag` is a 32-byte header
(b"CLVCAMP1", tag, b, version as little-endian u64) and 127 copies of a 32-byte unit of
four splitmix64 words of (b, version): see `block()`; campaign.rs computes the same.

Arguments: URI TAG SIZE SEED VERSION_BASE STOP_FILE
"""

import os
import random
import struct
import sys
import time

import nbd

BLOCK = 4096
MASK = (1 << 64) - 1


def splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def block(tag, b, version):
    seed = (b * 0x9E3779B97F4A7C15 + version * 0xD1B54A32D192ED03) & MASK
    unit = struct.pack("<4Q", *(splitmix(seed + j) for j in range(4)))
    return b"CLVCAMP1" + struct.pack("<3Q", tag, b, version) + unit * 127


def say(*words):
    print(*words, flush=True)


def main():
    uri, tag, size, seed, base, stop = sys.argv[1:7]
    tag, size, seed, base = int(tag), int(size), int(seed), int(base)
    rng = random.Random(seed)
    blocks = size // BLOCK
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        say("E", "connect:", e.string)
        sys.exit(2)
    known = {}  # block -> version written (and acknowledged) in this session
    n = 0

    def dead(e):
        try:
            alive = not (h.aio_is_dead() or h.aio_is_closed())
        except nbd.Error:
            alive = False
        if not alive:
            say("E", (e.string or "").replace("\n", " "))
            sys.exit(2)

    while True:
        if os.path.exists(stop):
            try:
                say("F")
                h.flush()
                say("FA")
                say("DONE")
                h.shutdown()
            except nbd.Error as e:
                dead(e)
                say("FE", e.errno, (e.string or "").replace("\n", " "))
                continue
            return
        roll = rng.random()
        if roll < 0.70:
            # Mostly small writes in a hot region, sometimes long ones across chunks.
            count = rng.choice([1, 1, 2, 3, 4, 8, 16, 32]) if rng.random() < 0.9 else rng.choice([64, 256, 300])
            hot = rng.random() < 0.6
            span = blocks // 4 if hot else blocks
            first = rng.randrange(0, max(1, span - count))
            count = min(count, blocks - first)
            version = base + n
            n += 1
            data = b"".join(block(tag, b, version) for b in range(first, first + count))
            say("W", version, first * BLOCK, count * BLOCK)
            try:
                h.pwrite(data, first * BLOCK)
            except nbd.Error as e:
                dead(e)
                say("WE", version, e.errno, (e.string or "").replace("\n", " "))
                for b in range(first, first + count):
                    known.pop(b, None)
                continue
            say("A", version)
            for b in range(first, first + count):
                known[b] = version
        elif roll < 0.90:
            say("F")
            try:
                h.flush()
            except nbd.Error as e:
                dead(e)
                say("FE", e.errno, (e.string or "").replace("\n", " "))
                continue
            say("FA")
        elif known:
            start = rng.choice(list(known))
            count = min(rng.choice([1, 4, 16, 64]), blocks - start)
            try:
                got = h.pread(count * BLOCK, start * BLOCK)
            except nbd.Error as e:
                dead(e)
                say("X", "read of", count * BLOCK, "bytes at", start * BLOCK, "failed:", e.string)
                sys.exit(3)
            for i in range(count):
                b = start + i
                if b in known and got[i * BLOCK:(i + 1) * BLOCK] != block(tag, b, known[b]):
                    head = got[i * BLOCK:i * BLOCK + 32]
                    say("X", "block", b, "expected version", known[b], "got header", head.hex())
                    sys.exit(3)
            say("R", start * BLOCK, count * BLOCK)
        time.sleep(rng.random() * 0.01)


if __name__ == "__main__":
    main()
