"""The same round trip on s3:// against a real S3 endpoint (moto's server on loopback), and atomicity.

A failure injected mid-write (an encoder that raises, a put that raises) must leave no object behind; writes
never go through a write-mode ``fs.open()`` (s3fs uploads partial objects when an exception happens inside it).
"""

from __future__ import annotations

import numpy as np
import pytest

from dpe_core.io import StorageError, read_photo, write_photo
from dpe_core.io import readwrite as readwrite_module
from dpe_core.io.storage import list_files, read_bytes
from tests.core.exiftool_support import (  # noqa: F401  (fixtures: sources stay untouched)
    MUST_CHANGE,
    _testdata_hashes,
    assert_metadata_carried,
    exiftool_path,
    pristine_testdata,
)

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

BUCKET = "dpe-photos"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        yield url
    finally:
        server.stop()  # by its handle, never by process name


@pytest.fixture()
def s3(s3_endpoint, monkeypatch):
    """Storage options for s3fs against the moto endpoint, with a fresh bucket per test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    opts = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint},
        "skip_instance_cache": True,
    }
    fs = s3fs.S3FileSystem(**opts)
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    return fs, opts


def _upload(fs, testdata, rel: str) -> str:
    src = testdata / rel
    if not src.is_file():
        pytest.skip(f"{rel} not in the test data")
    key = f"{BUCKET}/in/{rel}"
    fs.pipe_file(key, src.read_bytes())
    return f"s3://{key}"


S3_FILES = [
    "camera/iphone4s_gps.jpg",
    "camera/nikon_e4600_icc_xmp.jpg",
    "orientation/hopper_6.jpg",
    "edge/rgb16.png",
    "edge/rgba.webp",
    "heic/sony_a7s3_exif_xmp_iptc_64px.heic",
]


@pytest.mark.skipif(exiftool_path() is None, reason="exiftool not installed")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("rel", S3_FILES)
def test_s3_roundtrip_keeps_metadata(testdata, s3, rel):
    fs, opts = s3
    url = _upload(fs, testdata, rel)
    photo = read_photo(url, **opts)
    out = f"s3://{BUCKET}/out/{rel}"
    write_photo(photo, out, **opts)
    data = read_bytes(out, **opts)
    allowed = list(MUST_CHANGE["encoding"])
    if photo.orientation_applied != 1:
        allowed += MUST_CHANGE["rotated"]
    if photo.source_format == "HEIF":
        allowed += MUST_CHANGE["heif-container"] + MUST_CHANGE["heif-aux"]
    assert_metadata_carried(testdata / rel, data, allowed)
    back = read_photo(out, **opts)
    assert back.pixels.shape == photo.pixels.shape
    assert fs.cat_file(url[len("s3://") :]) == (testdata / rel).read_bytes()  # source object untouched


def test_s3_encoder_failure_leaves_no_object(testdata, s3, monkeypatch):
    fs, opts = s3
    photo = read_photo(_upload(fs, testdata, "camera/iphone4s_gps.jpg"), **opts)

    def broken_encoder(*args, **kwargs):
        raise RuntimeError("encoder crashed mid-way")

    monkeypatch.setattr(readwrite_module, "encode_photo", broken_encoder)
    out = f"s3://{BUCKET}/out/broken.jpg"
    with pytest.raises(RuntimeError):
        write_photo(photo, out, **opts)
    assert not fs.exists(out[len("s3://") :])


def test_s3_failed_put_leaves_no_object_and_never_streams(testdata, s3, monkeypatch):
    fs, opts = s3
    photo = read_photo(_upload(fs, testdata, "camera/iphone4s_gps.jpg"), **opts)
    real_open = s3fs.S3FileSystem._open

    def no_write_open(self, path, mode="rb", *args, **kwargs):
        assert "w" not in mode and "a" not in mode, "write-mode open on an object store"
        return real_open(self, path, mode, *args, **kwargs)

    async def failing_pipe(self, path, data, *args, **kwargs):
        raise OSError("connection reset during upload")

    monkeypatch.setattr(s3fs.S3FileSystem, "_open", no_write_open)
    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", failing_pipe)
    out = f"s3://{BUCKET}/out/failed.jpg"
    with pytest.raises(StorageError, match="failed.jpg"):
        write_photo(photo, out, **opts)
    monkeypatch.undo()
    check = s3fs.S3FileSystem(**opts)
    assert not check.exists(out[len("s3://") :])
    assert check.find(f"{BUCKET}/out") == []


def test_s3_write_uses_one_put(testdata, s3, monkeypatch):
    fs, opts = s3
    photo = read_photo(_upload(fs, testdata, "camera/canon_s40.jpg"), **opts)
    calls = []
    real_pipe = s3fs.S3FileSystem._pipe_file

    async def counting_pipe(self, path, data, *args, **kwargs):
        calls.append((path, len(data)))
        return await real_pipe(self, path, data, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", counting_pipe)
    write_photo(photo, f"s3://{BUCKET}/out/one.jpg", **opts)
    assert len(calls) == 1 and calls[0][1] > 1000


def test_s3_list_files(testdata, s3):
    fs, opts = s3
    for rel in ("camera/canon_s40.jpg", "edge/rgb16.png", "orientation/hopper_6.webp"):
        _upload(fs, testdata, rel)
    fs.pipe_file(f"{BUCKET}/in/notes.txt", b"not a photo")
    root = f"s3://{BUCKET}/in"
    assert list_files(root, "**", **opts) == [
        "camera/canon_s40.jpg",
        "edge/rgb16.png",
        "notes.txt",
        "orientation/hopper_6.webp",
    ]
    assert list_files(root, "**", extensions=["jpg", ".PNG"], **opts) == ["camera/canon_s40.jpg", "edge/rgb16.png"]
    assert list_files(root, ["camera/*.jpg", "orientation/*"], **opts) == [
        "camera/canon_s40.jpg",
        "orientation/hopper_6.webp",
    ]


def test_s3_missing_object_is_a_storage_error(s3):
    fs, opts = s3
    with pytest.raises(StorageError, match="nothing-here.jpg"):
        read_photo(f"s3://{BUCKET}/nothing-here.jpg", **opts)


def test_s3_sixteen_bit_png_exact(testdata, s3):
    fs, opts = s3
    url = _upload(fs, testdata, "edge/rgba16.png")
    photo = read_photo(url, **opts)
    out = f"s3://{BUCKET}/out/rgba16.png"
    write_photo(photo, out, **opts)
    back = read_photo(out, **opts)
    assert back.pixels.dtype == np.uint16
    assert np.array_equal(back.pixels, photo.pixels) and np.array_equal(back.alpha, photo.alpha)
