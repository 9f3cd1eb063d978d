/* bitmcu SDCC engine for the Padauk pdk13/pdk14 cores: fully connected models (engine/CONTRACT.md §1, §3-§5).
 *
 * The generated model header (mcu/padauk/header.py) defines, before it includes this file, the accumulator
 * type bmp_acc_t (int16_t where every partial sum the weights allow fits, else int32_t) with its unsigned twin
 * bmp_uacc_t, the index type bmp_idx_t, the sizes BMP_*, BMP_USES_<FORMAT> for the formats present, the
 * weights as const bytes (ROM: each row the little-endian bytes of its packed words, trailing padding
 * bytes dropped), the images, and BMP_LAYERS: one BMP_HIDDEN(weights, shifts, n_in, n_out, format, in, out)
 * per hidden layer and BMP_LAST(weights, shifts, n_in, n_out, format, in), which bm_pdk.c expands into
 * straight-line code (no layer table to index: no multiply).
 *
 * RAM: bmp_ram, two regions of int8 activations (each hidden layer writes the one its input is not in) and
 * the logits over the start of region A; no accumulators are kept (a hidden layer runs twice, bm_pdk.c). The
 * first layer reads the uint8 image in ROM and maps it on the fly (CONTRACT §1). No multiply, no divide, no
 * heap.
 */
#ifndef BM_PDK_H
#define BM_PDK_H

#include <stdint.h>

#define BMP_FMT_BINARY 0           /* the engines' format ids (contract/formats.py) */
#define BMP_FMT_BINARYBALANCED 1
#define BMP_FMT_TERNARY 2
#define BMP_FMT_2BITSYM 3
#define BMP_FMT_4BITSYM 4

union bmp_ram_u {                  /* the activations (two regions of int8), the logits at offset 0 */
    int8_t b[BMP_RAM_N];
    bmp_acc_t l[BMP_N_CLASSES];
};
extern union bmp_ram_u bmp_ram;    /* the logits of the image just run are bmp_ram.l, after bmp_done */
extern volatile uint8_t bmp_class; /* their argmax (ties: the lowest index) */

#endif
