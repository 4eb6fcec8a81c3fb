"""What data identity by content and the self-checking cache cost.

    python benchmarks/content_hash.py --images=100000 --folder=/tmp/hash_bench --cached=50000

Writes the folder once (10 class folders of random 32x32 RGB PNGs, ~3 KB each), then times, in
this process:
- listing the folder (what a run did before: paths, sizes, modification times);
- its content hash with no digests kept (every file read and hashed: a first run, a renamed
  folder, or no --cache_dir);
- the same with every digest kept in the cache folder (a later run: stats compared, nothing read);
- after `touch` of every file (every file read again, the same hash);
and, for a cache file of --cached random 32x32x3 images, opening it with its checksum checked (in
memory: read and checked in one pass; streamed: checked at open) against np.load of the same file
unchecked. The folder's files are in the page cache after the first pass (cold disk reads are
the disk's). Prints one line per measurement and the machine.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.streaming import write_folder  # noqa: E402  the same random PNGs
from maxl_tf.data import folder as folder_lib  # noqa: E402
from maxl_tf.data import images as images_lib  # noqa: E402
from maxl_tf.data import source as source_lib  # noqa: E402


def timed(what: str, fn, repeat: int = 3):
    """Best of `repeat` wall times of fn(); prints it and returns fn's last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{what}: {best:.2f} s (best of {repeat})", flush=True)
    return result


def hash_folder(folder: str, cache_dir: str) -> None:
    listing = timed(
        "list the folder (paths, sizes, mtimes: the identity before)", lambda: folder_lib.list_folder(folder)
    )
    size = sum(s[3] for s in listing.stats)
    print(f"{len(listing.paths)} images, {size / 2**20:.0f} MiB of PNG", flush=True)

    def cold():
        shutil.rmtree(cache_dir, ignore_errors=True)
        return folder_lib.content_hash(folder_lib.list_folder(folder), cache_dir)

    content, read = timed("list + content hash, nothing kept (every file read)", cold)
    assert read == len(listing.paths)
    kept = timed(
        "list + content hash, digests kept (nothing read)",
        lambda: folder_lib.content_hash(folder_lib.list_folder(folder), cache_dir),
    )
    assert kept == (content, 0)
    memo = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(cache_dir, "content")) for f in fs]
    print(f"kept digests: {sum(map(os.path.getsize, memo)) / 2**20:.1f} MiB", flush=True)
    subprocess.run(["find", folder, "-name", "*.png", "-exec", "touch", "{}", "+"], check=True)
    again = timed(
        "list + content hash after touch of every file (every file read once)",
        lambda: folder_lib.content_hash(folder_lib.list_folder(folder), cache_dir),
        repeat=1,
    )
    assert again == (content, len(listing.paths))


def check_cache(images: int) -> None:
    with tempfile.TemporaryDirectory() as cache_dir:
        shape = (images, 32, 32, 3)
        rows = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        path = images_lib._cache_path(cache_dir, ["bench", images])
        images_lib._write_rows(path, shape, lambda out: out.__setitem__(slice(0, images), rows)).close()
        print(f"cache file of {images} 32x32x3 images: {os.path.getsize(path) / 2**20:.0f} MiB", flush=True)
        timed("np.load, unchecked (the read before)", lambda: np.load(path, allow_pickle=False))
        for stream in ("off", "on"):
            options = source_lib.Options(stream=stream)
            loaded, streamed, why = timed(
                f"open with the checksum checked, stream={stream}",
                lambda options=options: images_lib._open_cached(path, images, options),
            )
            assert why == "" and streamed == (stream == "on"), why
            if not streamed:
                assert np.array_equal(loaded, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--folder", default="/tmp/hash_bench")
    parser.add_argument("--cached", type=int, default=50_000)
    args = parser.parse_args()
    model = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    print(f"{time.strftime('%Y-%m-%d')}, {model[0] if model else platform.processor()}, {os.cpu_count()} cores")
    write_folder(args.folder, args.images)
    with tempfile.TemporaryDirectory() as cache_dir:
        hash_folder(args.folder, cache_dir)
    check_cache(args.cached)


if __name__ == "__main__":
    main()
