"""Golden bytes of the packed weight format, version 1 (cpp/include/lowbit/pack.h,
docs/design/packed_format.md).

Two kinds of pins:
* hand-derived bytes for tiny matrices, worked out from the layout as drawn in the header and
  the design note (not from the implementation), one per bit width plus the padding, group and
  tile rules;
* SHA-256 digests of larger deterministic matrices, so any change to any byte is caught.

Any failure here means files written by an older lowbit would be misread: bump
``kPackFormatVersion`` (and the file format's reader) and update these pins together.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lowbit import _native, reference


def test_format_version():
    assert _native.PACK_FORMAT_VERSION == 1


def pack_both(q, s, z, bits, group_size=0):
    """The C++ packer's arrays, after checking the NumPy twin writes the same bytes."""
    q = np.asarray(q, np.uint8)
    s = np.asarray(s, np.float32).reshape(q.shape[0] if np.ndim(s) else 1, -1)
    z = np.asarray(z, np.float32).reshape(s.shape)
    p = _native.pack_weights(q, s, z, bits, group_size)
    for a, b in zip(p.args()[:3], reference.pack_weights(q, s, z, bits, group_size)):
        np.testing.assert_array_equal(a, b)
    return p


def expect(codes: np.ndarray, nonzero: dict[int, int], size: int) -> None:
    """codes has `size` bytes, equal to `nonzero` at the given offsets and 0 everywhere else."""
    want = np.zeros(size, np.uint8)
    for i, v in nonzero.items():
        want[i] = v
    assert codes.shape == (size,)
    np.testing.assert_array_equal(codes, want, err_msg=f"{ {i: hex(v) for i, v in enumerate(codes) if v} }")


def test_8bit_one_row():
    # byte[4r + j] = q[r][k0 + j]; one 64-byte block per 4 columns; rows 1..15 are padding (0).
    p = pack_both([[1, 2, 3, 4]], [[0.5]], [[3]], 8)
    expect(p.codes, {0: 1, 1: 2, 2: 3, 3: 4}, 64)
    assert p.scales.shape == (1, 1, 16) and p.scales[0, 0, 0] == 0.5 and not p.scales[0, 0, 1:].any()
    assert p.zeros.shape == (1, 1, 16) and p.zeros[0, 0, 0] == 3 and not p.zeros[0, 0, 1:].any()


def test_4bit_two_rows():
    # byte[4r + j] = q[r][j] | q[r][4 + j] << 4
    p = pack_both([[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]], [[1.0], [2.0]], [[0], [15]], 4)
    expect(p.codes, {0: 0x40, 1: 0x51, 2: 0x62, 3: 0x73, 4: 0xC8, 5: 0xD9, 6: 0xEA, 7: 0xFB}, 64)
    np.testing.assert_array_equal(p.scales[0, 0, :3], [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(p.zeros[0, 0, :3], [0, 15, 0])


def test_2bit_one_row():
    # byte[j] = sum_i q[4i + j] << 2i
    q = [[0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 1, 1, 2, 2, 2, 2]]
    p = pack_both(q, [[1.0]], [[1]], 2)
    expect(p.codes, {0: 0x9C, 1: 0x99, 2: 0x96, 3: 0x93}, 64)


def test_3bit_two_rows():
    # Low two bits as the 2-bit layout in bytes 0..63; bit 2 of q[r][4i + j] in bit (4r + j) of
    # the little-endian 64-bit plane at bytes 64 + 8i.
    q = [list(range(8)) + list(range(7, -1, -1)), [7] * 16]
    p = pack_both(q, [[1.0], [1.0]], [[0], [0]], 3)
    expect(p.codes, {
        0: 0xF0, 1: 0xA5, 2: 0x5A, 3: 0x0F,  # row 0, low planes
        4: 0xFF, 5: 0xFF, 6: 0xFF, 7: 0xFF,  # row 1: 7 & 3 = 3 in all four slots
        64: 0xF0,  # plane 0 (columns 0..3): row 0 has codes 0..3 (bit 2 clear), row 1 bits 4..7
        72: 0xFF,  # plane 1 (columns 4..7): codes 4..7 and 7s
        80: 0xFF,  # plane 2 (columns 8..11): codes 7..4 and 7s
        88: 0xF0,  # plane 3 (columns 12..15): codes 3..0 and 7s
    }, 96)


def test_per_channel_padding_holds_the_zero_point():
    # K = 5 at 4 bits: Kp = 8, columns 5..7 hold the row's zero point 9.
    p = pack_both([[1, 2, 3, 4, 5]], [[1.0]], [[9]], 4)
    expect(p.codes, {0: 0x51, 1: 0x92, 2: 0x93, 3: 0x94}, 64)
    assert _native.packed_layout(4, 1, 5, 0)["padded_cols"] == 8


def test_groups_and_tiles():
    # 17 rows x 32 columns, 8 bits, groups of 16: two tiles of 8 blocks (64 B) each; scales and
    # zeros are (tile, group, row in tile).
    q = np.zeros((17, 32), np.uint8)
    q[0, 0], q[0, 31], q[15, 17], q[16, 5] = 11, 22, 33, 44
    s = np.arange(1, 35, dtype=np.float32).reshape(17, 2)
    z = np.arange(34, dtype=np.float32).reshape(17, 2)
    p = pack_both(q, s, z, 8, 16)
    tb = 8 * 64
    expect(p.codes, {
        0: 11,                     # row 0, column 0: block 0, byte 0
        7 * 64 + 4 * 0 + 3: 22,    # row 0, column 31: block 7, j = 3
        4 * 64 + 4 * 15 + 1: 33,   # row 15, column 17: block 4, byte 4 * 15 + 1
        tb + 1 * 64 + 1: 44,       # row 16 = tile 1 row 0, column 5: block 1, j = 1
    }, 2 * tb)
    assert p.scales.shape == (2, 2, 16)
    assert p.scales[0, 1, 15] == s[15, 1] and p.scales[1, 0, 0] == s[16, 0] and p.scales[1, 1, 0] == s[16, 1]
    assert p.zeros[0, 0, 3] == z[3, 0] and p.zeros[1, 1, 0] == z[16, 1]
    assert not p.scales[1, :, 1:].any() and not p.zeros[1, :, 1:].any()  # padding rows


def pattern(bits, rows, cols, gs):
    """A deterministic matrix that uses every code value, distinct scales and zero points."""
    n = np.arange(rows)[:, None]
    k = np.arange(cols)[None, :]
    q = ((n * 7 + k * 13 + (n * k) % 5) % (1 << bits)).astype(np.uint8)
    g = np.arange(cols // gs if gs else 1)[None, :]
    s = (0.015625 * (1 + (n * 3 + g) % 11)).astype(np.float32)
    z = ((n + 2 * g) % (1 << bits)).astype(np.float32)
    return q, s, z


DIGESTS = {
    (2, 37, 100, 0): "aa67b7c236bb591ab7222515e3ff0573",
    (2, 20, 256, 64): "5f3b0fe19d063ab8a42bec213463f868",
    (2, 17, 128, 128): "888aa53e1c6fd4ef1d39a27ed293cdf9",
    (2, 5, 96, 32): "66e49cccdd0614f3f9bd71fa5001d587",
    (3, 37, 100, 0): "3afdda6ddb69b3d752397e33c6cf4d96",
    (3, 20, 256, 64): "bdb66f73124da87ff19b2ed13934bbda",
    (3, 17, 128, 128): "c6437739d9eedf6f706865cdbb1cd3f1",
    (3, 5, 96, 32): "df8657bfdf90e7aa0278ca0c396f6a66",
    (4, 37, 100, 0): "ac5b97301551e3d7b20cb186e141f45e",
    (4, 20, 256, 64): "6216af18207d41f320107e4bb0cd7e8b",
    (4, 17, 128, 128): "979bf59b12b3447b02cf412b12d9ac07",
    (4, 5, 96, 32): "d8e9d02e0c930279c17badeb153b4694",
    (8, 37, 100, 0): "365ef7448436b49d7a7c59caf6858be4",
    (8, 20, 256, 64): "8f5d6a6021928e1256c64f254296fb56",
    (8, 17, 128, 128): "ea2709e3088412c7354d2a6db9b7a076",
    (8, 5, 96, 32): "9418f81040cebed05297fba07d24644e",
}


@pytest.mark.parametrize("key", list(DIGESTS), ids=lambda k: "b{}_{}x{}_g{}".format(*k))
def test_digest(key):
    bits, rows, cols, gs = key
    p = pack_both(*pattern(bits, rows, cols, gs), bits, gs)
    lay = _native.packed_layout(bits, rows, cols, gs)
    assert p.codes.nbytes == lay["code_bytes"]
    h = hashlib.sha256(p.codes.tobytes() + p.scales.astype("<f4").tobytes() + p.zeros.tobytes()).hexdigest()
    assert h[:32] == DIGESTS[key]
