// Row tiles, shared by every tiled format (ternary, int4, bf16, bf16c) and their kernels.
//
// A tiled matrix pads its rows with zero rows to a multiple of kTileRows and stores each
// run of kTileRows rows contiguously (each format draws its tile in its own header), so a
// GEMV task streams one sequential run of bytes and produces kTileRows outputs at once.
// Matmul tasks therefore start on a tile boundary. f32 is the one untiled format.
#pragma once
#include <cstddef>

namespace ternlm {

constexpr size_t kTileRows = 16;

// Tiles holding `rows` rows, and the rows they store (padding rows included).
inline size_t TileCount(size_t rows) { return (rows + kTileRows - 1) / kTileRows; }
inline size_t TiledRows(size_t rows) { return TileCount(rows) * kTileRows; }

}  // namespace ternlm
