#include "bind_packed.h"

namespace lowbit::bind {

void bind_pack(py::module_& m) {
  m.attr("PACK_FORMAT_VERSION") = kPackFormatVersion;
  m.def(
      "packed_layout",
      [](int bits, int64_t rows, int64_t cols, int64_t group_size) {
        const PackedShape s = packed_shape_of(bits, rows, cols, group_size);
        py::dict d;
        d["version"] = kPackFormatVersion;
        d["padded_cols"] = s.padded_cols();
        d["groups"] = s.groups();
        d["group_cols"] = s.group_cols();
        d["tiles"] = s.tiles();
        d["tile_rows"] = kTileRows;
        d["tile_bytes"] = s.tile_bytes();
        d["code_bytes"] = s.code_bytes();
        d["block_cols"] = pack_block_cols(bits);
        d["block_bytes"] = pack_block_bytes(bits);
        return d;
      },
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"));
  m.def(
      "pack_weights",
      [](const Array<uint8_t>& q, const Array<float>& scale, const Array<float>& zero, int bits,
         int64_t group_size, Array<uint8_t>& codes, Array<float>& scales, Array<uint8_t>& zeros) {
        auto qv = matrix_in(q, "q");
        const PackedShape s = packed_shape_of(bits, qv.rows, qv.cols, group_size);
        check_ndim(scale, 2, "scale");
        check_shape(zero, {scale.shape(0), scale.shape(1)}, "zero");
        check_shape(codes, {s.code_bytes()}, "codes");
        check_shape(scales, {s.tiles(), s.groups(), kTileRows}, "scales");
        check_shape(zeros, {s.tiles(), s.groups(), kTileRows}, "zeros");
        QuantParams p{scale.data(), zero.data(), scale.shape(0), scale.shape(1), bits};
        uint8_t* c = mutable_ptr(codes, "codes");
        float* sc = mutable_ptr(scales, "scales");
        uint8_t* z = mutable_ptr(zeros, "zeros");
        py::gil_scoped_release release;
        pack_weights(qv, p, s, c, sc, z);
      },
      py::arg("q").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("group_size"), py::arg("codes").noconvert(),
      py::arg("scales").noconvert(), py::arg("zeros").noconvert());
  m.def(
      "unpack_weights",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, Array<uint8_t>& q,
         Array<float>& scale, Array<float>& zero) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        check_shape(q, {rows, cols}, "q");
        check_shape(scale, {rows, w.shape.groups()}, "scale");
        check_shape(zero, {rows, w.shape.groups()}, "zero");
        auto qv = matrix_out(q, "q");
        float* s = mutable_ptr(scale, "scale");
        float* z = mutable_ptr(zero, "zero");
        py::gil_scoped_release release;
        unpack_weights(w, qv, s, z);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("q").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert());
  m.def(
      "dequantize_rows",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, const Array<int32_t>& index,
         Array<float>& out) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        check_ndim(index, 1, "index");
        check_shape(out, {index.shape(0), cols}, "out");
        float* o = mutable_ptr(out, "out");
        py::gil_scoped_release release;
        dequantize_rows(w, index.data(), index.shape(0), o);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("index").noconvert(), py::arg("out").noconvert());
}

}  // namespace lowbit::bind
