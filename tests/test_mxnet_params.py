"""The MXNet .params reader on files written by MXNet 1.9.1 (tests/fixtures/params, made by
make_fixtures.py) and on truncated, corrupt and foreign files."""
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from dcnviz.convert.mxnet_params import read_params
from dcnviz.errors import UserError

import params_writer
from limits import run_limited

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "params")


def expected():
    with np.load(os.path.join(FIXTURES, "expected.npz"), allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        return {n: z[f"a{i}"] for i, n in enumerate(names)}


def fixture_bytes(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def write_bytes(tmp_path, data, name="x.params"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("version", ["v2", "legacy", "v1"])
def test_reads_every_encoding_written_by_mxnet(version):
    ref = expected()
    pf = read_params(os.path.join(FIXTURES, f"{version}.params"))
    assert list(pf.arrays) == list(ref)  # file order
    for name, want in ref.items():
        got = pf.arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
    assert dict(pf.encodings) == {version: len(ref)}
    assert dict(pf.dtypes) == {"float32": 4, "float64": 1, "float16": 1}


def test_progress_reports_each_array():
    calls = []
    read_params(os.path.join(FIXTURES, "v2.params"), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]


@pytest.mark.parametrize("version", ["v2", "legacy", "v1"])
def test_writer_matches_mxnet(version):
    assert params_writer.encode(expected(), version) == fixture_bytes(f"{version}.params")


def test_unnamed_list_file_is_refused():
    with pytest.raises(UserError, match="unnamed"):
        read_params(os.path.join(FIXTURES, "unnamed.params"))


def test_sparse_array_is_refused():
    with pytest.raises(UserError, match="sparse"):
        read_params(os.path.join(FIXTURES, "sparse.params"))


@pytest.mark.parametrize("version", ["v2", "legacy"])
def test_every_truncation_is_a_user_error(tmp_path, version):
    data = fixture_bytes(f"{version}.params")
    for cut in range(len(data)):
        with pytest.raises(UserError):
            read_params(write_bytes(tmp_path, data[:cut]))


def test_trailing_bytes_are_refused(tmp_path):
    with pytest.raises(UserError, match="unexpected bytes"):
        read_params(write_bytes(tmp_path, fixture_bytes("v2.params") + b"\0"))


def test_single_byte_corruptions_are_refused_or_harmless(tmp_path):
    """Every byte of the header and the first array (a V2 (2, 3, 3, 3) float32) replaced by 0xFF: a
    structural field (magics, counts, storage type, ndim, dims, type flag) is refused with a UserError;
    a field the reader does not interpret (the reserved word, the device) or a data byte parses to the
    same arrays, only the first array's data changed where the byte was."""
    data, ref = fixture_bytes("v2.params"), expected()
    first = "arg:conv_weight"
    assert ref[first].shape == (2, 3, 3, 3) and ref[first].dtype == np.float32  # the offsets below
    reserved, device, data_start = range(8, 16), range(68, 76), 80
    for pos in range(data_start + 8):
        bad = bytearray(data)
        bad[pos] = 0xFF
        path = write_bytes(tmp_path, bytes(bad))
        if pos in reserved or pos in device or pos >= data_start:
            arrays = read_params(path).arrays
            assert list(arrays) == list(ref), pos
            for name, a in ref.items():
                want = a
                if name == first and pos >= data_start:
                    raw = bytearray(a.tobytes())
                    raw[pos - data_start] = 0xFF
                    want = np.frombuffer(bytes(raw), a.dtype).reshape(a.shape)
                np.testing.assert_array_equal(arrays[name], want, err_msg=f"byte {pos}")
        else:
            with pytest.raises(UserError):
                read_params(path)


def test_many_tiny_records_are_refused_at_the_header_within_bounded_memory(tmp_path):
    """20 million 4-byte "none" records (a sparse 80 MB file): refused from the array count before any
    record is read. Without the bound, every record made a numpy object (gigabytes); the subprocess runs
    under an address-space limit of its size after imports + 512 MiB."""
    path = tmp_path / "many.params"
    n = 20_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, n))
        f.truncate(24 + 4 * n + 8)  # zeros: legacy records of ndim 0, then a name count of 0
    proc = run_limited(f"""
from dcnviz.convert.mxnet_params import read_params
from dcnviz.errors import UserError
try:
    read_params({str(path)!r})
except UserError as e:
    print("refused:", e)
""")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused: ") and "20000000 arrays, more than the 100000" in proc.stdout


def test_the_model_bounds_the_values_read(tmp_path):
    """With the model's limits, an array larger than the whole model is refused before it is read."""
    arrays = {"arg:a": np.zeros(4, np.float32), "arg:b": np.zeros(100, np.float32)}
    path = write_bytes(tmp_path, params_writer.encode(arrays))
    assert read_params(path, max_arrays=2, max_elements=104).arrays.keys() == arrays.keys()
    with pytest.raises(UserError, match=r"array 1 \(100,\) holds more values than the model has \(96 left\)"):
        read_params(path, max_elements=100)
    with pytest.raises(UserError, match="2 arrays, more than the 1 the model has"):
        read_params(path, max_arrays=1)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    data = np.random.RandomState(seed).bytes(1 + 997 * seed)
    with pytest.raises(UserError):
        read_params(write_bytes(tmp_path, data))


def test_random_bytes_after_a_valid_header(tmp_path):
    data = struct.pack("<QQQ", 0x112, 0, 3) + np.random.RandomState(0).bytes(4000)
    with pytest.raises(UserError):
        read_params(write_bytes(tmp_path, data))


def test_pickle_is_named_and_not_loaded(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    path = write_bytes(tmp_path, pickle.dumps({"w": Boom()}, protocol=4), "model.pth")
    with pytest.raises(UserError, match="pickle"):
        read_params(path)


def test_zip_is_named(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(UserError, match="zip"):
        read_params(str(path))


def test_safetensors_is_named(tmp_path):
    header = b'{"__metadata__":{}}'
    path = write_bytes(tmp_path, struct.pack("<Q", len(header)) + header, "w.safetensors")
    with pytest.raises(UserError, match="safetensors"):
        read_params(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_params(str(tmp_path / "nope.params"))
    with pytest.raises(UserError, match="no such file"):
        read_params(str(tmp_path))


def _one_array(header: bytes, data: bytes = b"", name: bytes = b"arg:x") -> bytes:
    return (struct.pack("<QQQ", 0x112, 0, 1) + header + data + struct.pack("<Q", 1)
            + struct.pack("<Q", len(name)) + name)


@pytest.mark.parametrize("header, match", [
    (struct.pack("<Iii", 0xF993FAC9, 0, 1000), "ndim 1000"),
    (struct.pack("<Iii", 0xF993FAC9, 0, -1), "ndim -1"),
    (struct.pack("<Iiiq", 0xF993FAC9, 0, 1, -5), "negative dimension"),
    # 2**40 float32 elements: refused from the sizes alone, nothing is allocated
    (struct.pack("<Iiiq", 0xF993FAC9, 0, 1, 2 ** 40) + struct.pack("<iii", 1, 0, 0), "needs 4398046511104 bytes"),
    (struct.pack("<Iiiq", 0xF993FAC9, 0, 1, 1) + struct.pack("<iii", 1, 0, 99), "type flag 99"),
    (struct.pack("<Iiiq", 0xF993FACA, 0, 1, 1), "V3"),
    (struct.pack("<I", 40), "ndim 40"),  # legacy ndim out of range
])
def test_corrupt_array_headers(tmp_path, header, match):
    with pytest.raises(UserError, match=match):
        read_params(write_bytes(tmp_path, _one_array(header)))


def test_huge_counts_are_refused_before_reading(tmp_path):
    with pytest.raises(UserError, match="array count"):
        read_params(write_bytes(tmp_path, struct.pack("<QQQ", 0x112, 0, 2 ** 62)))
    ok = struct.pack("<Iiiq", 0xF993FAC9, 0, 1, 1) + struct.pack("<iii", 1, 0, 0) + b"\0\0\0\0"
    too_long = struct.pack("<QQQ", 0x112, 0, 1) + ok + struct.pack("<QQ", 1, 2 ** 50)
    with pytest.raises(UserError, match="name 0 is"):
        read_params(write_bytes(tmp_path, too_long))


def test_names_must_be_text_and_unique(tmp_path):
    arr = {"arg:a": np.zeros(1, np.float32)}
    data = params_writer.encode(arr).replace(b"arg:a", b"\xff\xfe:ab")
    with pytest.raises(UserError, match="not text"):
        read_params(write_bytes(tmp_path, data))
    data = params_writer.encode({"arg:a": np.zeros(1, np.float32), "arg:b": np.ones(1, np.float32)})
    with pytest.raises(UserError, match="duplicate array names: arg:a"):
        read_params(write_bytes(tmp_path, data.replace(b"arg:b", b"arg:a")))


def test_name_count_must_match(tmp_path):
    data = params_writer.encode({"arg:a": np.zeros(1, np.float32)})
    bad = data[:-(8 + 8 + 5)] + struct.pack("<Q", 2) + data[-(8 + 5):]
    with pytest.raises(UserError, match="2 names for 1 arrays"):
        read_params(write_bytes(tmp_path, bad))
