/* bitmcu.h: integer-only inference for the bitmcu low-bit MNIST nets (engine/CONTRACT.md).

   ABOUT
   C99, <stdint.h> and <stddef.h> only, no heap, no printf, no undefined behaviour for inputs that
   satisfy the contract. It runs the same arithmetic, bit for bit, as QModel.int_eval (PyTorch),
   refimpl/ (numba) and tests/naive.py. Built for the CH32V003 (RV32EC, no multiplier, 2 KB RAM,
   16 KB flash) and, through engine/build.py, for the host under cffi.

   BUILDING
   Compile bitmcu.c together with one translation unit that includes a generated model header
   (engine/header.py: weights, layer table and buffers). The build options below must be the same
   in every translation unit (pass them with -D):

     BM_CFG_FORMATS       bit mask of the weight formats whose kernels are compiled in,
                          BM_FMT_BIT(BM_FMT_x) | ...  Default: every format (BM_FMTS_ALL), or
                          BM_FMTS_MULFREE when BM_CFG_NO_MULTIPLY is defined. A model header that
                          uses a format left out fails with #error naming the format; a kernel
                          called at runtime with such a format returns BM_ERR_FORMAT.
     BM_CFG_FC_FORMATS    the formats bm_fc accepts and BM_CFG_CONV_FORMATS those bm_conv3x3 accepts
     BM_CFG_CONV_FORMATS  (subsets of BM_CFG_FORMATS, which they default to): a firmware leaves out the
                          kernels and decoders of formats its fc or conv layers do not use (flash, SRAM).
     BM_CFG_NO_MULTIPLY   when defined, selecting 4bit, 8bit or nf4 is a compile error. The
                          remaining kernels use add, subtract and shift only, so the object has no
                          mul/div instruction and no __mulsi3/__divsi3 call on RV32EC. Without it
                          the conv kernels and size computations use the core's multiply.
     BM_CFG_CNN           1 (default): bm_run also runs CNN layer tables (the channel-streaming
                          driver); 0: FC tables only, which leaves the driver out (about 2 KB of
                          flash on RV32EC). A model header with conv layers fails with #error then.
     BM_CFG_CONV_MAX_CPG  largest input-channels-per-group a conv kernel accepts (default 4; the
                          contract's CNN uses 1). It sizes a 9*cpg byte window on the stack.
     BM_CFG_KERNELS       bm_fc's kernels: 1 (default) the fast column-table kernels described
                          below, 0 the reference row-by-row decoders (the conv kernels do not depend
                          on it: CONV KERNELS).
                          Same outputs bit for bit; 1 takes 256 bytes more stack per table word
                          column and about 500 bytes more code.
     BM_CFG_FC_WORDS      word columns per table block of the fast kernels: 1 (default) or 2. With
                          2, each accumulator is loaded and stored once per 16 fields instead of 8
                          (about 0.5 cycle per weight less on RV32EC) for 256 more bytes of stack.
     BM_CFG_CHAN_BYTES    bytes of the chan buffer (the conv layers' working map) of the model
                          bm_run will be given: 0 (default) when unknown. Where it holds the fast
                          kernels' column tables (256 bytes per table word column), bm_run's fc
                          layers build them there, free once the conv layers are done, instead of on
                          the stack: a firmware of such a CNN needs that much less RAM. bm_run then
                          returns BM_ERR_ARG for a model whose chan is smaller or not 2-aligned (the
                          generated header declares it as int16_t). bm_fc itself always uses the
                          stack.

   FAST FC KERNELS (BM_CFG_KERNELS 1)
     bm_fc walks the packed layer one word column at a time instead of one row at a time. For a
     column of 8 four-bit fields (4bitsym, fp130, 4bit, nf4: 8 inputs; 2bitsym: 16 inputs, 2 per
     field; binary, binarybalanced: 32 inputs, 4 per field) it first builds on the stack, for each
     field position, the table of the 16 values that field can contribute: 4bitsym +-(2m+1)*x[i] by
     repeated addition of 2x, fp130 +-x[i] doubled e times, 4bit by adding x, nf4 by multiplying,
     2bitsym and binary the 16 signed sums of the field's 2 or 4 inputs. That is 128 int16 entries,
     about 40 instructions per input, shared by all n_out rows. Then each row adds 8 table entries
     to its int32 accumulator out[o]: per field a shift, a mask, an add of the table address, a
     16-bit load and an add (5.75 instructions per 4-bit weight with the row's word and accumulator
     loads, against about 15 for a decode with branches and a shift-and-add product). Ternary does
     the same per byte of 5 trits: a 256-entry constant table turns the byte into the mask of its +1
     inputs and the mask of its -1 inputs, each indexing a 32-entry table of subset sums of the 5
     inputs. 8bit (a multiply format) stays row by row, a word at a time, as sum((field ^ 0x80) * x)
     - 128 * sum(x) in wrapping uint32, whose result, bounded by the contract, is exact.
     Why it is exact: each table entry is an exact product or sum of products (|entry| <= 16,256 fits
     int16), inputs past n_in enter the tables as 0 so a row's padding adds 0, and every partial sum
     of a row is a sum of a subset of its products, inside CONTRACT §3's bound. Only the order of the
     additions changes, which integer addition does not see.
     The per-weight and per-input loops (bm__rows_*, bm__tab_*, bm__fc_8bit) are separate functions
     (never inlined), so that a firmware can place just them in SRAM by name.

   CONV KERNELS
     A conv with one input channel per group (conv1's channels, the depthwise layers) runs one output
     channel at a time. On a core that multiplies, the channel's 9 weights are decoded once, with the
     shift k folded in (w * 2^k, exact under CONTRACT §3's bound), and each weight load serves two (a
     row of outputs) or four (a 2x2 block) neighbouring outputs; the CNN driver's kernels requantize
     each value with the layer's guessed shift as it is computed (bm__conv_q), or, for a layer with a
     pool, take each 2x2 block's maximum and requantize that once (bm__conv_pool), writing int8 in
     place of the channel's map. With BM_CFG_NO_MULTIPLY the channel's weights times 2^k are decoded
     once into 1 or 2 planes of 9 signed power-of-two terms (fp130 and binary 1, 2bitsym, ternary and
     4bitsym 2, and a 4bitsym 11 or 13 one extra term), 36 bytes of stack (76 with 4bitsym), and each term
     costs a shift, an XOR and an add, with the same two or four outputs per term load (bitmcu.c, "conv
     kernels", says why it is exact). The loops (bm__conv_*) are functions of their own for SRAM placement.

   FORMATS
     Each weight format is described once: bitmcu.h's BM_FMT_x_FIELD_BITS and BM_FMT_x_CODES_PER_WORD (and
     BM_NF4_CODES) below, and in bitmcu.c one descriptor per format (bm__fmts) with its codes per word and
     the functions of each kernel this build has for it (row dot product, fast fc table builder and rows
     kernel, conv weight decoder). The kernels read the descriptor instead of switching on the format.

   CNN DRIVER
     bm_run streams a CNN's conv layers one channel at a time (CONTRACT §6, "Streaming") in named steps
     (bm__cnn_open, bm__cnn_pass, bm__cnn_channel, bm__cnn_hidden, bm__cnn_last, bm__cnn_settle,
     bm__cnn_close, bm__cnn_trace). refimpl/stream.py is the same driver in Python under the same names,
     and tests/refimpl/test_stream.py holds the two equal, state between runs included.

   KERNEL NAMES
     The Python engines use the C names without bm_: refimpl/kernels.py and tests/naive.py have input, fc,
     conv3x3, maxpool2, shiftnorm and argmax.

   USAGE
     #include "model.h"                       (generated; includes this header)
     int32_t logits[BM_NUM_CLASSES];
     if (bm_run(BM_MODEL, pixels, NULL, logits) == BM_OK)
         cls = bm_argmax(logits, BM_NUM_CLASSES);

   API (every input const, output last; a status or a documented value is returned)
     bm_input     pixels -> x0 = (p >> 1) - Z                                   CONTRACT §1
     bm_fc        packed fully connected layer, int32 outputs (ReLU << k, or sign-magnitude << k)
     bm_conv3x3   packed 3x3 valid grouped correlation (conv1: groups 1; depthwise: groups = C)
     bm_maxpool2  2x2 max-pool, stride 2, floor (may run in place)
     bm_shiftnorm per-sample requant to int8 [0, 127]; returns the shift s            CONTRACT §4
     bm_argmax    index of the largest logit, ties to the lowest index              CONTRACT §5
     bm_run       a whole model from its layer table, optional per-layer trace

   Arrays are row-major. Activations are int8 with |x| <= 127. Feature maps are [C][H][W].
   Accumulators are int32: export proves |acc| <= 2^31 - 2^24 (CONTRACT §3), so no sum overflows.
*/
#ifndef BITMCU_H
#define BITMCU_H

#include <stddef.h>
#include <stdint.h>

/* ---- weight formats (ids equal refimpl/kernels.py FORMAT_IDS) ------------------------------- */
#define BM_FMT_BINARY 0
#define BM_FMT_BINARYBALANCED 1
#define BM_FMT_TERNARY 2
#define BM_FMT_2BITSYM 3
#define BM_FMT_4BITSYM 4
#define BM_FMT_4BIT 5
#define BM_FMT_8BIT 6
#define BM_FMT_FP130 7
#define BM_FMT_NF4 8
#define BM_FMT_COUNT 9

/* Per format: the bits of one packed field and the codes one 32-bit word holds (CONTRACT §9; equal to
   contract/formats.py's field_bits and codes_per_word). Ternary packs 5 base-3 digits into each byte,
   so its field is a byte. bitmcu.c's format descriptors are built from these. */
#define BM_FMT_BINARY_FIELD_BITS 1
#define BM_FMT_BINARY_CODES_PER_WORD 32
#define BM_FMT_BINARYBALANCED_FIELD_BITS 1
#define BM_FMT_BINARYBALANCED_CODES_PER_WORD 32
#define BM_FMT_TERNARY_FIELD_BITS 8
#define BM_FMT_TERNARY_CODES_PER_WORD 20
#define BM_FMT_2BITSYM_FIELD_BITS 2
#define BM_FMT_2BITSYM_CODES_PER_WORD 16
#define BM_FMT_4BITSYM_FIELD_BITS 4
#define BM_FMT_4BITSYM_CODES_PER_WORD 8
#define BM_FMT_4BIT_FIELD_BITS 4
#define BM_FMT_4BIT_CODES_PER_WORD 8
#define BM_FMT_8BIT_FIELD_BITS 8
#define BM_FMT_8BIT_CODES_PER_WORD 4
#define BM_FMT_FP130_FIELD_BITS 4
#define BM_FMT_FP130_CODES_PER_WORD 8
#define BM_FMT_NF4_FIELD_BITS 4
#define BM_FMT_NF4_CODES_PER_WORD 8
/* The NF4 code of each 4-bit field 0..15 (CONTRACT §2), an initializer for int8_t[16]. */
#define BM_NF4_CODES {-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127}

#define BM_FMT_BIT(id) (1u << (id))
#define BM_FMTS_ALL 0x1FFu
/* binary, binarybalanced, ternary, 2bitsym, 4bitsym, fp130: add/sub/shift only */
#define BM_FMTS_MULFREE (BM_FMT_BIT(BM_FMT_BINARY) | BM_FMT_BIT(BM_FMT_BINARYBALANCED) | \
                         BM_FMT_BIT(BM_FMT_TERNARY) | BM_FMT_BIT(BM_FMT_2BITSYM) |      \
                         BM_FMT_BIT(BM_FMT_4BITSYM) | BM_FMT_BIT(BM_FMT_FP130))

#ifndef BM_CFG_FORMATS
#ifdef BM_CFG_NO_MULTIPLY
#define BM_CFG_FORMATS BM_FMTS_MULFREE
#else
#define BM_CFG_FORMATS BM_FMTS_ALL
#endif
#endif

#if (BM_CFG_FORMATS) & ~BM_FMTS_ALL
#error "bitmcu: BM_CFG_FORMATS has bits above BM_FMTS_ALL (0x1FF); use BM_FMT_BIT(BM_FMT_x) | ..."
#endif
#if (BM_CFG_FORMATS) == 0
#error "bitmcu: BM_CFG_FORMATS selects no weight format"
#endif
#ifdef BM_CFG_NO_MULTIPLY
#if (BM_CFG_FORMATS) & BM_FMT_BIT(BM_FMT_4BIT)
#error "bitmcu: BM_CFG_NO_MULTIPLY forbids format 4bit (it needs a multiply); drop it from BM_CFG_FORMATS"
#endif
#if (BM_CFG_FORMATS) & BM_FMT_BIT(BM_FMT_8BIT)
#error "bitmcu: BM_CFG_NO_MULTIPLY forbids format 8bit (it needs a multiply); drop it from BM_CFG_FORMATS"
#endif
#if (BM_CFG_FORMATS) & BM_FMT_BIT(BM_FMT_NF4)
#error "bitmcu: BM_CFG_NO_MULTIPLY forbids format nf4 (it needs a multiply); drop it from BM_CFG_FORMATS"
#endif
#endif

#ifndef BM_CFG_FC_FORMATS
#define BM_CFG_FC_FORMATS BM_CFG_FORMATS
#endif
#ifndef BM_CFG_CONV_FORMATS
#define BM_CFG_CONV_FORMATS BM_CFG_FORMATS
#endif
#if ((BM_CFG_FC_FORMATS) | (BM_CFG_CONV_FORMATS)) & ~(BM_CFG_FORMATS)
#error "bitmcu: BM_CFG_FC_FORMATS and BM_CFG_CONV_FORMATS must be subsets of BM_CFG_FORMATS"
#endif

#ifndef BM_CFG_CNN
#define BM_CFG_CNN 1
#endif
#if BM_CFG_CNN != 0 && BM_CFG_CNN != 1
#error "bitmcu: BM_CFG_CNN must be 0 (FC models only) or 1"
#endif

#ifndef BM_CFG_CONV_MAX_CPG
#define BM_CFG_CONV_MAX_CPG 4
#endif
#if BM_CFG_CONV_MAX_CPG < 1
#error "bitmcu: BM_CFG_CONV_MAX_CPG must be >= 1"
#endif

#ifndef BM_CFG_KERNELS
#define BM_CFG_KERNELS 1
#endif
#if BM_CFG_KERNELS != 0 && BM_CFG_KERNELS != 1
#error "bitmcu: BM_CFG_KERNELS must be 0 (reference kernels) or 1 (fast kernels)"
#endif
#ifndef BM_CFG_FC_WORDS
#define BM_CFG_FC_WORDS 1
#endif
#if BM_CFG_FC_WORDS != 1 && BM_CFG_FC_WORDS != 2
#error "bitmcu: BM_CFG_FC_WORDS must be 1 or 2"
#endif
#ifndef BM_CFG_CHAN_BYTES
#define BM_CFG_CHAN_BYTES 0
#endif
#if BM_CFG_CHAN_BYTES < 0
#error "bitmcu: BM_CFG_CHAN_BYTES must be 0 or more"
#endif

/* ---- status ----------------------------------------------------------------------------------- */
typedef enum bm_status {
    BM_OK = 0,
    BM_ERR_ARG = -1,    /* NULL pointer, size out of range, shapes that do not fit together */
    BM_ERR_FORMAT = -2  /* unknown format id, or a format not compiled in (BM_CFG_FORMATS) */
} bm_status;

/* ---- model description (generated by engine/header.py) ------------------------------------------ */
#define BM_OP_FC 0      /* fully connected: n_in inputs, n_out outputs */
#define BM_OP_CONV 1    /* 3x3 valid conv, groups = 1 (conv1) or any divisor of in_c and n_out */
#define BM_OP_DWCONV 2  /* the same kernel; depthwise is groups = in_c = n_out */
#define BM_OP_PWCONV 3  /* 1x1 conv, in_c -> n_out = in_c channels, rows like fc rows (n_in = in_c), no pool */

/* One weight layer. 32 bytes on a 32-bit target. Every layer but the last is followed by ReLU,
   << k, optional 2x2 max-pool and ShiftNorm; the last must be BM_OP_FC and gives the logits. */
typedef struct bm_layer {
    const uint32_t *words;       /* n_out rows of row_words packed words (CONTRACT §9) */
    const uint8_t *out_shifts;   /* n_out left shifts k in [0, 7], or NULL for all 0 (per_tensor) */
    uint16_t n_in;               /* codes per row: fc inputs, or 9 * in_c / groups */
    uint16_t n_out;              /* outputs (fc) or output channels (conv) */
    uint16_t groups;             /* conv groups (1 for fc) */
    uint16_t in_c, in_h, in_w;   /* conv input map [in_c][in_h][in_w]; fc: n_in, 1, 1 */
    uint16_t out_h, out_w;       /* output map after the optional pool; fc: 1, 1 */
    uint16_t row_words;          /* words per packed row */
    uint8_t op;                  /* BM_OP_FC, BM_OP_CONV, BM_OP_DWCONV or BM_OP_PWCONV */
    uint8_t format;              /* BM_FMT_x */
    uint8_t pool;                /* 1: 2x2 max-pool after the conv, before ShiftNorm */
} bm_layer;

/* A model: its layer table and the working buffers bm_run uses (not reentrant: one run at a time).
   An fc layer writes its int32 outputs to acc and its activations to act. A CNN's conv layers run one
   channel at a time (CONTRACT §6, "Streaming"): act holds the input x0 and then the flattened features,
   chan (N x N bytes) one channel's map, which conv1 writes and the later conv layers but the last
   overwrite in place, acc the last conv layer's int32 channel map, feat the last conv layer's values
   kept to 8 bits, one exponent per channel and two bytes per conv layer (the pass bookkeeping). The
   generated header puts feat in acc right after that map (BM_MAP_WORDS): both are dead once the fc layers
   write their outputs to acc; bm_run checks that the map does not reach feat. start
   (const, from the export) holds the shift guesses each run starts from, one per conv layer but the last,
   then the C channels in the order a pass takes them (a permutation), or is NULL (guesses 0, channels in
   order): it sets only how long a run takes. The generated
   header sizes the buffers (BM_ACC_WORDS, BM_ACT_BYTES, BM_CHAN_BYTES, BM_FEAT_BYTES; chan, feat and start
   are NULL and 0 for fc models) and bm_run checks every layer against them. A pw layer (BM_OP_PWCONV, at
   most one, between two conv layers) splits the conv layers into two streamed runs (CONTRACT §6, "With
   pw1"): act then holds x0 and the first run's map after it, which the pw layer rewrites in place, a pixel at
   a time with the fc kernels (its inputs gathered in feat, its outputs in acc), and the second run reads;
   start has a part for each run of two or more layers. */
typedef struct bm_model {
    const bm_layer *layers;
    int32_t *acc;
    int8_t *act;
    int8_t *chan;
    uint8_t *feat;
    const uint8_t *start;
    uint32_t acc_words;
    uint32_t act_bytes;
    uint32_t chan_bytes;
    uint32_t feat_bytes;
    uint16_t n_pixels;           /* image_size * image_size */
    uint8_t n_layers;
    uint8_t image_size;
    uint8_t input_zero;          /* Z in [0, 127] */
    uint8_t num_classes;         /* n_out of the last layer */
} bm_model;

/* Optional per-image record of every layer, for bit-exact comparison with the reference engines. */
typedef struct bm_trace {
    int8_t *acts;       /* BM_TRACE_ACT_BYTES: x0, then each requantized layer's output, in order */
    int32_t *shifts;    /* BM_N_SHIFTS: ShiftNorm's s of each requantized layer, in order */
    int32_t *logits;    /* num_classes final logits, or NULL */
} bm_trace;

/* ---- kernels -------------------------------------------------------------------------------------- */

/* out[i] = (pixels[i] >> 1) - zero for i < n. zero in [0, 127]. Returns BM_OK or BM_ERR_ARG. */
bm_status bm_input(const uint8_t *pixels, int32_t n, int32_t zero, int8_t *out);

/* Fully connected layer on packed rows (CONTRACT §3):
     acc[o] = sum_{i < n_in} x[i] * w[o][i]
     relu != 0 (hidden): out[o] = max(acc[o], 0) << k[o]
     relu == 0 (final):  out[o] = acc[o] >= 0 ? acc[o] << k[o] : -((-acc[o]) << k[o])
   x: n_in int8. words: n_out rows of row_words words (row_words large enough for n_in codes).
   fmt: BM_FMT_x. out_shifts: n_out values in [0, 7], or NULL for all 0. out: n_out int32.
   Returns BM_OK, BM_ERR_FORMAT (fmt unknown or not compiled in) or BM_ERR_ARG. */
bm_status bm_fc(const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words, int32_t fmt,
                int32_t n_out, const uint8_t *out_shifts, int32_t relu, int32_t *out);

/* 3x3 valid correlation, stride 1, groups (CONTRACT §6), then the shift of bm_fc:
     acc[c][h][w] = sum_{ci, dy, dx} x[g*cpg + ci][h+dy][w+dx] * w[c][ci][dy][dx]
   with cpg = c_in / groups, g = c / (n_out / groups). x: [c_in][h][w], h, w >= 3.
   Row c of words holds its 9 * cpg codes in [ci][dy][dx] order. out: [n_out][h-2][w-2] int32.
   c_in and n_out must be multiples of groups, cpg <= BM_CFG_CONV_MAX_CPG.
   Returns BM_OK, BM_ERR_FORMAT or BM_ERR_ARG. */
bm_status bm_conv3x3(const int8_t *x, int32_t c_in, int32_t h, int32_t w, const uint32_t *words,
                     int32_t row_words, int32_t fmt, int32_t n_out, int32_t groups,
                     const uint8_t *out_shifts, int32_t relu, int32_t *out);

/* 2x2 max-pool, stride 2, odd last row/column dropped: y [c][h][w] -> out [c][h/2][w/2].
   out may equal y (in place). Returns BM_OK or BM_ERR_ARG. */
bm_status bm_maxpool2(const int32_t *y, int32_t c, int32_t h, int32_t w, int32_t *out);

/* ShiftNorm (CONTRACT §4) of n values y (each <= 2^31 - 2^24; negatives count as 0):
     M = max(y, 0), s = max(0, bitlen(M) - 7), out[i] = min((max(y[i], 0) + ((1 << s) >> 1)) >> s, 127)
   Returns s in [0, 24], or BM_ERR_ARG (< 0). */
int32_t bm_shiftnorm(const int32_t *y, int32_t n, int8_t *out);

/* Index of the largest of n >= 1 logits; ties go to the lowest index. BM_ERR_ARG (< 0) if n < 1. */
int32_t bm_argmax(const int32_t *logits, int32_t n);

/* Run model m on n_pixels uint8 pixels (row-major N x N) and write its num_classes int32 logits.
   trace, when not NULL, receives x0, every requantized activation, every shift and the logits.
   A CNN's run time depends on the previous run (1 to n_conv passes over its conv layers), its
   results do not. Returns BM_OK, BM_ERR_FORMAT (a layer's format unknown or not compiled in) or BM_ERR_ARG (a
   layer table that is inconsistent or does not fit m's buffers). */
bm_status bm_run(const bm_model *m, const uint8_t *pixels, bm_trace *trace, int32_t *logits_out);

#endif /* BITMCU_H */
