#!/usr/bin/env python3
"""Benchmark corpus for the mover (see bench/mover.sh).

  mover_corpus.py make DIR     # 1 GiB db, 256 MiB log, 50k small files, 4 GiB sparse (100 MiB data)
  mover_corpus.py mutate DIR   # 1% random 4 KiB page rewrites in the db, +10 MiB log, +100 small files

Deterministic (fixed seeds) so runs are comparable.
"""
import os
import random
import sys

MiB = 1 << 20


def rand_bytes(rng, n):
    return rng.randbytes(n)


def make(root):
    rng = random.Random(1)
    os.makedirs(f"{root}/db", exist_ok=True)
    os.makedirs(f"{root}/log", exist_ok=True)
    with open(f"{root}/db/app.db", "wb") as f:
        for _ in range(1024):
            f.write(rand_bytes(rng, MiB))
    with open(f"{root}/log/app.log", "wb") as f:
        for _ in range(256):
            f.write(rand_bytes(rng, MiB))
    for d in range(250):
        p = f"{root}/small/d{d:03}"
        os.makedirs(p, exist_ok=True)
        for i in range(200):
            with open(f"{p}/f{i:03}", "wb") as f:
                f.write(rand_bytes(rng, rng.randint(100, 8192)))
    with open(f"{root}/sparse.img", "wb") as f:
        f.truncate(4 << 30)
        for i in range(100):  # 100 x 1 MiB of data spread over 4 GiB
            f.seek(i * (40 * MiB) + rng.randrange(0, 8) * MiB)
            f.write(rand_bytes(rng, MiB))


def mutate(root):
    rng = random.Random(2)
    pages = (1 << 30) // 4096
    with open(f"{root}/db/app.db", "r+b") as f:
        for p in rng.sample(range(pages), pages // 100):
            f.seek(p * 4096)
            f.write(rand_bytes(rng, 4096))
    with open(f"{root}/log/app.log", "ab") as f:
        f.write(rand_bytes(rng, 10 * MiB))
    os.makedirs(f"{root}/small/new", exist_ok=True)
    for i in range(100):
        with open(f"{root}/small/new/f{i:03}", "wb") as f:
            f.write(rand_bytes(rng, rng.randint(100, 8192)))


if __name__ == "__main__":
    {"make": make, "mutate": mutate}[sys.argv[1]](sys.argv[2])
