/* bitmcu SDCC engine for the Padauk pdk13/pdk14 cores: fully connected models (engine/CONTRACT.md §1, §3-§5).
 *
 * The generated model header (mcu/padauk/header.py) defines, before it includes this file, the accumulator
 * type bmp_acc_t (int16_t where every layer's CONTRACT §3 bound fits, else int32_t) with its unsigned twin
 * bmp_uacc_t, the index type bmp_idx_t, the sizes BMP_*, BMP_USES_<FORMAT> for the formats present, the
 * weights as const bytes (ROM: each row the little-endian bytes of its packed words, trailing padding
 * bytes dropped), the images, and BMP_LAYERS: one BMP_LAYER(weights, shifts, n_in, n_out, format, last)
 * per layer, which bm_pdk.c expands into straight-line code (no layer table to index: no multiply).
 *
 * RAM: bmp_acc (a layer's accumulators; the logits at the end) and bmp_act (a hidden layer's int8
 * outputs, the next layer's input); the first layer reads the uint8 image in ROM and maps it on the fly
 * (CONTRACT §1). No multiply, no divide, no heap.
 */
#ifndef BM_PDK_H
#define BM_PDK_H

#include <stdint.h>

#define BMP_FMT_BINARY 0           /* the engines' format ids (contract/formats.py) */
#define BMP_FMT_BINARYBALANCED 1
#define BMP_FMT_TERNARY 2
#define BMP_FMT_2BITSYM 3
#define BMP_FMT_4BITSYM 4

extern bmp_acc_t bmp_acc[];        /* the logits of the image just run, after bmp_done */
extern volatile uint8_t bmp_class; /* their argmax (ties: the lowest index) */

#endif
