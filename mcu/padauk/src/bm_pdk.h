/* bitmcu SDCC engine for the Padauk pdk13/pdk14 cores: fully connected models (engine/CONTRACT.md §1, §3-§5).
 *
 * The generated model header (mcu/padauk/header.py) defines the sizes, the accumulator type bmp_acc_t
 * (int16_t where every layer's CONTRACT §3 bound fits, else int32_t) with its unsigned twin bmp_uacc_t,
 * the index type bmp_idx_t, BMP_USES_<FORMAT> for the formats present, the weights as const bytes in ROM
 * (each row the little-endian bytes of its packed words, trailing padding bytes dropped) and bmp_layers.
 *
 * RAM: bmp_buf only. A layer reads its int8 input at offset 0 (the first layer reads the uint8 image in
 * ROM and maps it on the fly, CONTRACT §1) and writes its bmp_acc_t outputs at offset `out_off` (its
 * input's size, 0 for the first layer); a hidden layer then requantizes them to int8 at offset 0, in
 * place, in ascending order (output i is written after value i is read and at or before its first
 * byte). The last layer's logits stay at out_off = BMP_LOGITS_OFF. No multiply, no divide, no heap.
 * The model header defines bmp_idx_t, bmp_acc_t and bmp_uacc_t before it includes this file.
 */
#ifndef BM_PDK_H
#define BM_PDK_H

#include <stdint.h>

#define BMP_FMT_BINARY 0           /* the engines' format ids (contract/formats.py) */
#define BMP_FMT_BINARYBALANCED 1
#define BMP_FMT_TERNARY 2
#define BMP_FMT_2BITSYM 3
#define BMP_FMT_4BITSYM 4

typedef struct bmp_layer {
    const uint8_t *weights;        /* n_out rows of row_bytes */
    const uint8_t *shifts;         /* per-output left shifts k[o], or 0 (per_tensor) */
    bmp_idx_t n_in, n_out;
    bmp_idx_t row_bytes;
    bmp_idx_t out_off;             /* byte offset of the outputs in bmp_buf */
    uint8_t format;                /* BMP_FMT_* */
    uint8_t last;                  /* 1: the final layer (logits, no requant) */
} bmp_layer;

#endif
