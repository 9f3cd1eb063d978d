/* bitmcu.c: kernels and model driver of bitmcu.h; the arithmetic is engine/CONTRACT.md's.

   Everything a kernel needs to know about a weight format is in its descriptor (bm__fmts, "format
   descriptors"): codes per word and the format's row dot product, fast fc table builder and rows kernel,
   and conv weight decoder, each present when this build compiles that kernel for the format. A kernel
   indexes the table once per call instead of switching on the format.
   Each format has a row dot product bm__dot_<fmt>(row, x, n) = sum_{j < n} w_j * x[j] that decodes
   the packed row (CONTRACT §9) one word at a time, first code in the least significant bits.
   bm_fc uses them with BM_CFG_KERNELS 0; by default it uses the column-table kernels of the "fast
   fully connected kernels" section (bitmcu.h, FAST FC KERNELS).
   The multiplier-free formats use add, subtract and shift only: no '*', '/' or '%' on a variable,
   and index arithmetic walks running pointers, so that RV32EC code has no mul/div and calls no
   __mulsi3/__divsi3. Sizes are formed once per call with bm__umul (shift and add with
   BM_CFG_NO_MULTIPLY, else the core's multiply).
   A conv (bitmcu.h, CONV KERNELS) decodes each output channel's row once and multiplies in place on
   a core that multiplies; with BM_CFG_NO_MULTIPLY it decodes the row into shift terms (one shift, XOR and
   add per term), and only a conv with several input channels per group gathers each window for the row
   dot product.
   Right shifts are applied to unsigned or non-negative values only, left shifts to non-negative
   values only, and no unsigned value is converted to a signed type out of range (CONTRACT §10).
*/
#include "bitmcu.h"

#define BM__HAS(id) (((BM_CFG_FORMATS) >> (id)) & 1u)
#define BM__HAS_FC(id) (((BM_CFG_FC_FORMATS) >> (id)) & 1u)        /* bm_fc's formats */
#define BM__HAS_CONV(id) (((BM_CFG_CONV_FORMATS) >> (id)) & 1u)    /* bm_conv3x3's and the CNN driver's */

typedef int32_t (*bm__dot_fn)(const uint32_t *row, const int8_t *x, int32_t n);

/* The hot loops stay functions of their own, never inlined into their callers, so that a firmware
   can place just them in SRAM by name (bm__rows_*, bm__tab_*, bm__fc_8bit, bm__conv_*). */
#ifdef __GNUC__
#define BM__HOT __attribute__((noinline))
#else
#define BM__HOT
#endif

/* A helper of a hot loop: -Os would otherwise keep some of them as calls, one per weight or output. */
#ifdef __GNUC__
#define BM__INLINE static inline __attribute__((always_inline))
#else
#define BM__INLINE static inline
#endif

/* a * b for small non-negative sizes: with BM_CFG_NO_MULTIPLY by shift and add (no multiply instruction or
   libcall), else with the core's multiply. */
static uint32_t bm__umul(uint32_t a, uint32_t b)
{
#ifdef BM_CFG_NO_MULTIPLY
    uint32_t r = 0;
    while (b != 0u) {
        if (b & 1u)
            r += a;
        a <<= 1;
        b >>= 1;
    }
    return r;
#else
    return a * b;                 /* a core that multiplies (BM_CFG_NO_MULTIPLY not defined) */
#endif
}

/* q with a == q * b exactly (b >= 1), by subtraction; -1 when b does not divide a. */
static int32_t bm__div_exact(int32_t a, int32_t b)
{
    int32_t q = 0;
    while (a >= b) {
        a -= b;
        q++;
    }
    return a == 0 ? q : -1;
}

/* The conv kernels (bm__conv_*) multiply each channel's weights, decoded once, with '*' (BM__CONV_MUL 1: a
   core that multiplies), or add up its shift terms, also decoded once (0: BM_CFG_NO_MULTIPLY, add, subtract,
   shift and XOR only; a conv with cpg > 1 calls the row dot products). BM_CFG_KERNELS chooses bm_fc's kernels
   only. */
#ifndef BM_CFG_NO_MULTIPLY
#define BM__CONV_MUL 1
#else
#define BM__CONV_MUL 0
#endif
/* the row dot products: bm_fc's reference kernels and the gathered-window convs (cpg > 1); BM__HAS_DOT(id): format id's
   is called (the others are left out, so that their descriptors do not keep them in a firmware) */
#define BM__DOTS (BM_CFG_KERNELS == 0 || !BM__CONV_MUL)
#define BM__DOT_FMTS ((BM_CFG_KERNELS == 0 ? (BM_CFG_FC_FORMATS) : 0u) | (BM__CONV_MUL ? 0u : (BM_CFG_CONV_FORMATS)))
#define BM__HAS_DOT(id) (((BM__DOT_FMTS) >> (id)) & 1u)

/* the formats of four-bit table fields in the fast fc kernels (ternary has its own rows kernel, 8bit none) */
#define BM__NIB_FMTS (BM_FMT_BIT(BM_FMT_BINARY) | BM_FMT_BIT(BM_FMT_BINARYBALANCED) |                   \
                      BM_FMT_BIT(BM_FMT_2BITSYM) | BM_FMT_BIT(BM_FMT_4BITSYM) | BM_FMT_BIT(BM_FMT_FP130) | \
                      BM_FMT_BIT(BM_FMT_4BIT) | BM_FMT_BIT(BM_FMT_NF4))
#define BM__HAS_NIB (BM_CFG_KERNELS == 1 && ((BM_CFG_FC_FORMATS) & BM__NIB_FMTS) != 0u)
#define BM__HAS_COLS (BM__HAS_NIB || (BM_CFG_KERNELS == 1 && BM__HAS_FC(BM_FMT_TERNARY)))

/* ---- weight fields ------------------------------------------------------------------------- */

/* Two's complement fields of 4bit ([-8, 7]) and 8bit ([-128, 127]), written as a subtraction rather
   than a cast (CONTRACT §10.6). Shared by the dot kernels and the conv weight decoders. */
static inline int32_t bm__code_4bit(uint32_t f)
{
    return f >= 8u ? (int32_t)f - 16 : (int32_t)f;
}

static inline int32_t bm__code_8bit(uint32_t f)
{
    return f >= 128u ? (int32_t)f - 256 : (int32_t)f;
}

#if BM__HAS_DOT(BM_FMT_TERNARY) || (BM__CONV_MUL && BM__HAS_CONV(BM_FMT_TERNARY))
/* t / 3 for t <= 255: (t * 171) >> 9 written as shifts and adds. */
static uint32_t bm__div3(uint32_t t)
{
    return ((t << 7) + (t << 5) + (t << 3) + (t << 1) + t) >> 9;
}
#endif

#if BM__HAS_DOT(BM_FMT_NF4) || BM__HAS_CONV(BM_FMT_NF4) || (BM_CFG_KERNELS == 1 && BM__HAS_FC(BM_FMT_NF4))
static const int8_t bm__nf4[16] = BM_NF4_CODES;   /* every NF4 decoder and table builder reads this one */
#endif

/* ---- row dot products, one per format -------------------------------------------------------- */

#if BM__DOTS

#if BM__HAS_DOT(BM_FMT_BINARY) || BM__HAS_DOT(BM_FMT_BINARYBALANCED)
/* field 1 -> +1, 0 -> -1 */
static int32_t bm__dot_binary(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t acc = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 32 ? n : 32;
        n -= left;
        for (; left > 0; left--) {
            int32_t v = *x++;
            acc += (word & 1u) ? v : -v;
            word >>= 1;
        }
    }
    return acc;
}
#endif

#if BM__HAS_DOT(BM_FMT_TERNARY)
/* 4 bytes per word, 5 base-3 digits per byte, earliest weight least significant; digit 0, 1, 2
   is weight 0, +1, -1. */
static int32_t bm__dot_ternary(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t acc = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 20 ? n : 20;
        n -= left;
        while (left > 0) {
            uint32_t t = word & 0xFFu;
            int32_t j = left < 5 ? left : 5;
            word >>= 8;
            left -= j;
            for (; j > 0; j--) {
                uint32_t q = bm__div3(t);
                uint32_t d = t - (q + q + q);
                int32_t v = *x++;
                if (d == 1u)
                    acc += v;
                else if (d == 2u)
                    acc -= v;
                t = q;
            }
        }
    }
    return acc;
}
#endif

#if BM__HAS_DOT(BM_FMT_2BITSYM)
/* bit1 sign, bit0 m, weight +-(2m+1): acc = A + 2*B with A = sum sx, B = sum over m = 1 of sx. */
static int32_t bm__dot_2bitsym(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t a = 0, b = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 16 ? n : 16;
        n -= left;
        for (; left > 0; left--) {
            int32_t v = *x++;
            int32_t sv = (word & 2u) ? -v : v;
            a += sv;
            if (word & 1u)
                b += sv;
            word >>= 2;
        }
    }
    return a + b + b;
}
#endif

#if BM__HAS_DOT(BM_FMT_4BITSYM)
/* bit3 sign, bits 0..2 m, weight +-(2m+1) = sign * (1 + 2*m0 + 4*m1 + 8*m2): one accumulator per
   bit of m, combined by doubling (Horner). */
static int32_t bm__dot_4bitsym(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t a = 0, b0 = 0, b1 = 0, b2 = 0, t;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 8 ? n : 8;
        n -= left;
        for (; left > 0; left--) {
            int32_t v = *x++;
            int32_t sv = (word & 8u) ? -v : v;
            a += sv;
            if (word & 1u)
                b0 += sv;
            if (word & 2u)
                b1 += sv;
            if (word & 4u)
                b2 += sv;
            word >>= 4;
        }
    }
    t = b2;
    t = t + t + b1;
    t = t + t + b0;
    return t + t + a;
}
#endif

#if BM__HAS_DOT(BM_FMT_FP130)
/* bit3 sign, bits 0..2 e, weight +-2^e: the product in sign-magnitude form, |x| << e. */
static int32_t bm__dot_fp130(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t acc = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 8 ? n : 8;
        n -= left;
        for (; left > 0; left--) {
            int32_t v = *x++;
            int32_t p = (v < 0 ? -v : v) << (word & 7u);
            uint32_t neg = ((word >> 3) & 1u) ^ (v < 0 ? 1u : 0u);
            acc += neg ? -p : p;
            word >>= 4;
        }
    }
    return acc;
}
#endif

#if BM__HAS_DOT(BM_FMT_4BIT)
static int32_t bm__dot_4bit(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t acc = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 8 ? n : 8;
        n -= left;
        for (; left > 0; left--) {
            acc += bm__code_4bit(word & 15u) * (int32_t)*x++;
            word >>= 4;
        }
    }
    return acc;
}
#endif

#if BM__HAS_DOT(BM_FMT_8BIT)
static int32_t bm__dot_8bit(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t acc = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 4 ? n : 4;
        n -= left;
        for (; left > 0; left--) {
            acc += bm__code_8bit(word & 255u) * (int32_t)*x++;
            word >>= 8;
        }
    }
    return acc;
}
#endif

#if BM__HAS_DOT(BM_FMT_NF4)
/* index into the NF4 table (CONTRACT §2) */
static int32_t bm__dot_nf4(const uint32_t *row, const int8_t *x, int32_t n)
{
    int32_t acc = 0;
    while (n > 0) {
        uint32_t word = *row++;
        int32_t left = n < 8 ? n : 8;
        n -= left;
        for (; left > 0; left--) {
            acc += (int32_t)bm__nf4[word & 15u] * (int32_t)*x++;
            word >>= 4;
        }
    }
    return acc;
}
#endif
#endif /* BM__DOTS */


/* 1 when fmt is a format id in the bit mask set (BM_CFG_FC_FORMATS or BM_CFG_CONV_FORMATS). */
static int32_t bm__fmt_in(int32_t fmt, uint32_t set)
{
    return fmt >= 0 && fmt < BM_FMT_COUNT && ((set >> fmt) & 1u);
}


/* CONTRACT §3: hidden max(acc, 0) << k; final acc * 2^k in sign-magnitude form. */
static int32_t bm__out_shift(int32_t acc, uint32_t k, int32_t relu)
{
    if (relu)
        return acc > 0 ? acc << k : 0;
    return acc >= 0 ? acc << k : -((-acc) << k);
}

/* ---- format descriptors: the type ----------------------------------------------------------------------
   bm__fmts[fmt] (after the kernels, "format descriptors: the table") holds what the kernels need of format
   fmt: its codes per word (bitmcu.h's BM_FMT_x_CODES_PER_WORD) and its functions for each kernel this build
   has. A kernel the build leaves out for a format (BM_CFG_FC_FORMATS, BM_CFG_CONV_FORMATS) is NULL there, and
   every kernel checks the format against its set (bm__fmt_in) before it reads the descriptor, so a kernel
   indexes the table once per call where it used to switch on the format. */
#if BM__HAS_COLS
/* Fills the BM__TAB_WORD entries of one word column from the column's inputs x (all of them: zero
   padded past n_in by the caller). */
typedef void (*bm__tab_fn)(const int8_t *x, int16_t *t);

/* Adds row o's word of the column (w, then every stride words) into acc[o], for acc .. end - 1. */
typedef void (*bm__rows_fn)(const uint32_t *w, uint32_t stride, int32_t *acc, const int32_t *end,
                            const int16_t *t);
#endif
#if BM__CONV_MUL
/* w[j] = (weight j of a packed row) * 2^k for j < n */
typedef void (*bm__decode_fn)(const uint32_t *row, int32_t n, uint32_t k, int32_t *w);
#else
/* The 9 weights of a packed row times 2^k as shift terms, 9 per plane, and t[18 + j] the extra term of weight j
   where it has one (4bitsym; left 0 otherwise) (bm__cw); returns the planes, 1 or 2 */
typedef uint32_t (*bm__terms_fn)(const uint32_t *row, uint32_t k, int8_t *t);
#endif

typedef struct bm__fmt {
#if BM__DOTS
    bm__dot_fn dot;               /* row dot product: bm_fc's reference kernels, the gathered-window convs */
#endif
#if BM__HAS_COLS
    bm__tab_fn tab;               /* bm__columns: a word column's tables (NULL: 8bit, row by row) */
    bm__rows_fn rows;             /* and the rows kernel that adds them up */
#if BM_CFG_FC_WORDS == 2
    bm__rows_fn rows2;            /* the same for two word columns at once, or NULL */
#endif
#endif
#if BM__CONV_MUL
    bm__decode_fn decode;         /* a conv row's weights times 2^k */
#else
    bm__terms_fn terms;           /* a cpg-1 conv row's weights times 2^k as shift terms */
#endif
    uint8_t per_word;             /* codes per packed word */
} bm__fmt;

#if BM_CFG_KERNELS == 1
/* ---- fast fully connected kernels (bitmcu.h, FAST FC KERNELS) -------------------------------------
   bm_fc walks the packed layer one block of BM_CFG_FC_WORDS word columns at a time: it builds the
   block's tables from the block's inputs, then adds each row's words of that block into out[o]
   through the tables. Only the rows kernels (bm__rows_*, per weight) and the table builders
   (bm__tab_*, per input) are hot; bm__columns runs once per column. */

#if BM__HAS_COLS
#define BM__TAB_WORD 128        /* int16 per word column: 8 fields x 16 values, or 4 bytes x 32 masks */
#define BM__MAX_PER_WORD 32     /* codes per word of the column formats (binary) */
#define BM__TAB_BYTES (2 * BM__TAB_WORD * BM_CFG_FC_WORDS)   /* a table block, 2-aligned */
/* bm_run's fc tables go to m->chan where the build says it holds them (BM_CFG_CHAN_BYTES) */
#define BM__TAB_IN_CHAN (BM_CFG_CHAN_BYTES >= BM__TAB_BYTES)

/* The int16 at byte offset off of t: the row kernels turn a field into a byte offset with one shift
   and one mask, and the field position goes into the load's constant offset. */
BM__INLINE int32_t bm__at(const int16_t *t, uint32_t off)
{
    return *(const int16_t *)(const void *)((const uint8_t *)t + off);
}

/* t[m] = a and t[m + 8] = -a: the two signs of a sign-magnitude field (bit 3 = sign). */
#define BM__PAIR(t, m, a) ((t)[m] = (int16_t)(a), (t)[(m) + 8] = (int16_t)-(a))
#endif

#if BM__HAS_NIB
/* The sum over the 8 four-bit fields of word v: field p adds t[16 p + field] (byte offset 32 p + 2 field). */
BM__INLINE int32_t bm__nib8(const int16_t *t, uint32_t v)
{
    return bm__at(t, (v << 1) & 0x1Eu) + bm__at(t + 16, (v >> 3) & 0x1Eu) + bm__at(t + 32, (v >> 7) & 0x1Eu) +
           bm__at(t + 48, (v >> 11) & 0x1Eu) + bm__at(t + 64, (v >> 15) & 0x1Eu) +
           bm__at(t + 80, (v >> 19) & 0x1Eu) + bm__at(t + 96, (v >> 23) & 0x1Eu) +
           bm__at(t + 112, (v >> 27) & 0x1Eu);
}

/* one word column of four-bit fields */
BM__HOT static void bm__rows_nib(const uint32_t *w, uint32_t stride, int32_t *acc, const int32_t *end,
                                 const int16_t *t)
{
    do {
        uint32_t v = *w;
        int32_t a = *acc;
        a += bm__nib8(t, v);
        *acc++ = a;
        w += stride;
    } while (acc != end);
}

#if BM_CFG_FC_WORDS == 2
/* two word columns (tables t and t + BM__TAB_WORD): one accumulator load and store per 16 fields */
BM__HOT static void bm__rows_nib2(const uint32_t *w, uint32_t stride, int32_t *acc, const int32_t *end,
                                  const int16_t *t)
{
    do {
        uint32_t v = w[0], u = w[1];
        int32_t a = *acc;
        a += bm__nib8(t, v);
        a += bm__nib8(t + BM__TAB_WORD, u);
        *acc++ = a;
        w += stride;
    } while (acc != end);
}
#endif
#endif

#if BM__HAS_FC(BM_FMT_4BITSYM)
/* field s m: +-(2m+1) x, the odd multiples by adding 2x */
BM__HOT static void bm__tab_4bitsym(const int8_t *x, int16_t *t)
{
    int32_t p;
    for (p = 0; p < 8; p++, t += 16) {
        int32_t a = *x++, d = a + a;
        BM__PAIR(t, 0, a); a += d;
        BM__PAIR(t, 1, a); a += d;
        BM__PAIR(t, 2, a); a += d;
        BM__PAIR(t, 3, a); a += d;
        BM__PAIR(t, 4, a); a += d;
        BM__PAIR(t, 5, a); a += d;
        BM__PAIR(t, 6, a); a += d;
        BM__PAIR(t, 7, a);
    }
}
#endif

#if BM__HAS_FC(BM_FMT_FP130)
/* field s e: +-2^e x, by doubling (an addition: x may be negative) */
BM__HOT static void bm__tab_fp130(const int8_t *x, int16_t *t)
{
    int32_t p;
    for (p = 0; p < 8; p++, t += 16) {
        int32_t a = *x++;
        BM__PAIR(t, 0, a); a += a;
        BM__PAIR(t, 1, a); a += a;
        BM__PAIR(t, 2, a); a += a;
        BM__PAIR(t, 3, a); a += a;
        BM__PAIR(t, 4, a); a += a;
        BM__PAIR(t, 5, a); a += a;
        BM__PAIR(t, 6, a); a += a;
        BM__PAIR(t, 7, a);
    }
}
#endif

#if BM__HAS_FC(BM_FMT_2BITSYM)
/* Field p holds inputs 2p (bits 0-1) and 2p+1 (bits 2-3); a 2-bit field f is +1, +3, -1, -3 for
   f = 0..3, so t[4 f1 + f0] = c(f0) x0 + c(f1) x1. */
BM__HOT static void bm__tab_2bitsym(const int8_t *x, int16_t *t)
{
    int32_t p;
    for (p = 0; p < 8; p++, x += 2) {
        int32_t v = x[0], v3 = v + v + v, h = x[1], h3 = h + h + h, j;
        int32_t hi[4];
        hi[0] = h;
        hi[1] = h3;
        hi[2] = -h;
        hi[3] = -h3;
        for (j = 0; j < 4; j++, t += 4) {
            int32_t b = hi[j];
            t[0] = (int16_t)(b + v);
            t[1] = (int16_t)(b + v3);
            t[2] = (int16_t)(b - v);
            t[3] = (int16_t)(b - v3);
        }
    }
}
#endif

#if BM__HAS_FC(BM_FMT_BINARY) || BM__HAS_FC(BM_FMT_BINARYBALANCED)
/* Field p holds inputs 4p .. 4p+3, bit k set: +x[4p+k], clear: -x[4p+k]. */
BM__HOT static void bm__tab_binary(const int8_t *x, int16_t *t)
{
    int32_t p;
    for (p = 0; p < 8; p++, x += 4) {
        int32_t e0 = x[0] + x[0], e1 = x[1] + x[1], e2 = x[2] + x[2], e3 = x[3] + x[3], j;
        int32_t c0 = -(x[0] + x[1] + x[2] + x[3]), c1 = c0 + e0, c2 = c0 + e1, c3 = c1 + e1;
        int32_t hi[4];
        hi[0] = 0;
        hi[1] = e2;
        hi[2] = e3;
        hi[3] = e2 + e3;
        for (j = 0; j < 4; j++, t += 4) {
            int32_t b = hi[j];
            t[0] = (int16_t)(c0 + b);
            t[1] = (int16_t)(c1 + b);
            t[2] = (int16_t)(c2 + b);
            t[3] = (int16_t)(c3 + b);
        }
    }
}
#endif

#if BM__HAS_FC(BM_FMT_4BIT)
/* two's complement field f: (f < 8 ? f : f - 16) x, by adding x */
BM__HOT static void bm__tab_4bit(const int8_t *x, int16_t *t)
{
    int32_t p, m;
    for (p = 0; p < 8; p++, t += 16) {
        int32_t v = *x++, a = 0, b;
        for (m = 0; m < 8; m++, a += v)
            t[m] = (int16_t)a;
        b = -a;                                /* -8 x */
        for (m = 8; m < 16; m++, b += v)
            t[m] = (int16_t)b;
    }
}
#endif

#if BM__HAS_FC(BM_FMT_NF4)
/* index f: NF4[f] x (a multiply format: 16 products per input) */
BM__HOT static void bm__tab_nf4(const int8_t *x, int16_t *t)
{
    int32_t p, m;
    for (p = 0; p < 8; p++, t += 16) {
        int32_t v = *x++;
        for (m = 0; m < 16; m++)
            t[m] = (int16_t)(bm__nf4[m] * v);
    }
}
#endif

#if BM__HAS_FC(BM_FMT_TERNARY)
/* Byte b of 5 trits -> (mask of its +1 digits) << 1 | (mask of its -1 digits) << 7: byte offsets
   (x2) into a 32-entry int16 table of subset sums. Bytes 243..255 do not occur in a packed row. */
#define BM__TD(b, d) (((b) / (d)) % 3)
#define BM__TM(b, v) ((BM__TD(b, 1) == (v)) | (BM__TD(b, 3) == (v)) << 1 | (BM__TD(b, 9) == (v)) << 2 | \
                      (BM__TD(b, 27) == (v)) << 3 | (BM__TD(b, 81) == (v)) << 4)
#define BM__TE(b) (uint16_t)(BM__TM(b, 1) << 1 | BM__TM(b, 2) << 7)
#define BM__T4(b) BM__TE(b), BM__TE((b) + 1), BM__TE((b) + 2), BM__TE((b) + 3)
#define BM__T16(b) BM__T4(b), BM__T4((b) + 4), BM__T4((b) + 8), BM__T4((b) + 12)
#define BM__T64(b) BM__T16(b), BM__T16((b) + 16), BM__T16((b) + 32), BM__T16((b) + 48)
static const uint16_t bm__trits[256] = {BM__T64(0), BM__T64(64), BM__T64(128), BM__T64(192)};

/* Byte j holds inputs 5j .. 5j+4; t[32 j + mask] = sum of those inputs over the bits of mask. */
BM__HOT static void bm__tab_ternary(const int8_t *x, int16_t *t)
{
    int32_t j, k, i;
    for (j = 0; j < 4; j++, t += 32) {
        int32_t n = 1;
        t[0] = 0;
        for (k = 0; k < 5; k++, n += n) {
            int32_t v = *x++;
            for (i = 0; i < n; i++)
                t[n + i] = (int16_t)(t[i] + v);
        }
    }
}

/* One byte of 5 trits through its table t: + (sum over its +1 inputs) - (sum over its -1 inputs). */
BM__INLINE int32_t bm__tern(const int16_t *t, uint32_t byte)
{
    uint32_t e = bm__trits[byte];
    return bm__at(t, e & 0x3Eu) - bm__at(t, e >> 6);
}

BM__HOT static void bm__rows_ternary(const uint32_t *w, uint32_t stride, int32_t *acc, const int32_t *end,
                                     const int16_t *t)
{
    do {
        uint32_t v = *w;
        int32_t a = *acc;
        a += bm__tern(t, v & 255u);
        a += bm__tern(t + 32, (v >> 8) & 255u);
        a += bm__tern(t + 64, (v >> 16) & 255u);
        a += bm__tern(t + 96, v >> 24);
        *acc++ = a;
        w += stride;
    } while (acc != end);
}
#endif

#if BM__HAS_COLS
/* out[o] = sum_i x[i] w[o][i] (CONTRACT §3, before the shift) for format d, one with column tables, built in
   tab (BM__TAB_BYTES). */
static void bm__columns(const bm__fmt *d, const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words,
                        int32_t n_out, int32_t *out, int16_t *tab)
{
    int8_t pad[BM__MAX_PER_WORD];
    bm__tab_fn build = d->tab;
    bm__rows_fn rows = d->rows;
    int32_t *end = out + n_out, *o;
    int32_t per = d->per_word;
    for (o = out; o != end; o++)
        *o = 0;
#if BM_CFG_FC_WORDS == 2
    if (d->rows2 != NULL)
        for (; n_in >= per + per; n_in -= per + per, x += per + per, words += 2) {
            build(x, tab);
            build(x + per, tab + BM__TAB_WORD);
            d->rows2(words, (uint32_t)row_words, out, end, tab);
        }
#endif
    for (; n_in >= per; n_in -= per, x += per, words++) {
        build(x, tab);
        rows(words, (uint32_t)row_words, out, end, tab);
    }
    if (n_in > 0) {                            /* the last, partial column: inputs past n_in are 0 */
        int32_t i;
        for (i = 0; i < per; i++)
            pad[i] = i < n_in ? x[i] : 0;
        build(pad, tab);
        rows(words, (uint32_t)row_words, out, end, tab);
    }
}
#endif

#if BM__HAS_FC(BM_FMT_8BIT)
/* 8bit: out[o] = sum_i x[i] w[o][i], a word (4 codes) at a time. With u = field ^ 0x80 in [0, 255]
   the code is u - 128, so the sum is sum(u x) - 128 sum(x): no sign extension per code. The uint32
   sums wrap, and the result, which the contract bounds to int32, is recovered exactly. */
BM__HOT static void bm__fc_8bit(const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words,
                                int32_t n_out, int32_t *out)
{
    int32_t full = n_in >> 2, rest = n_in & 3, j;
    uint32_t bias = 0;
    for (j = 0; j < (full << 2); j++)
        bias += (uint32_t)(int32_t)x[j];
    bias <<= 7;
    for (; n_out > 0; n_out--, words += row_words) {
        const uint32_t *w = words;
        const int8_t *xp = x;
        uint32_t u = 0u - bias;
        int32_t i, acc;
        for (i = full; i > 0; i--) {
            uint32_t v = *w++ ^ 0x80808080u;
            u += (v & 255u) * (uint32_t)(int32_t)*xp++;
            u += ((v >> 8) & 255u) * (uint32_t)(int32_t)*xp++;
            u += ((v >> 16) & 255u) * (uint32_t)(int32_t)*xp++;
            u += (v >> 24) * (uint32_t)(int32_t)*xp++;
        }
        acc = u <= 0x7FFFFFFFu ? (int32_t)u : -(int32_t)~u - 1;
        if (rest > 0) {
            uint32_t v = *w;
            for (i = rest; i > 0; i--, v >>= 8)
                acc += bm__code_8bit(v & 255u) * (int32_t)*xp++;
        }
        *out++ = acc;
    }
}
#endif
#endif /* BM_CFG_KERNELS == 1 */

/* ---- conv weight decoders ---------------------------------------------------------------------------------
   bm__conv_decode_<fmt>(row, n, k, w) (BM__CONV_MUL): w[j] = (weight j of the packed row) * 2^k for j < n,
   n >= 1. Folding the shift into the weights is exact: relu(acc) << k = max(sum x (w 2^k), 0) and
   acc * 2^k = sum x (w 2^k), and every partial sum stays inside CONTRACT §3's bound n_in * 127 * max|w| * 2^k.
   bm__conv_terms_<fmt> (no multiplier): the same 9 weights as shift terms, "conv kernels" below. One loop per
   format: a format switch per weight costs more than the weight. */
/* A packed row read field by field, first field in the least significant bits (CONTRACT §9). */
typedef struct bm__fields {
    const uint32_t *row;          /* the next word */
    uint32_t word;                /* the current word, shifted to its next field */
    uint32_t left;                /* fields left in word */
} bm__fields;

/* The next b-bit field (b divides 32). */
BM__INLINE uint32_t bm__next_field(bm__fields *r, uint32_t b)
{
    uint32_t f;
    if (r->left == 0u) {
        r->word = *r->row++;
        r->left = 32u / b;
    }
    r->left--;
    f = r->word & ((1u << b) - 1u);
    r->word >>= b;
    return f;
}

#if BM__CONV_MUL

#if BM__HAS_CONV(BM_FMT_BINARY) || BM__HAS_CONV(BM_FMT_BINARYBALANCED)
BM__HOT static void bm__conv_decode_binary(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do                                   /* 1 -> +1, 0 -> -1 */
        *w = bm__next_field(&r, BM_FMT_BINARY_FIELD_BITS) ? pk : -pk;
    while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_2BITSYM)
BM__HOT static void bm__conv_decode_2bitsym(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do {                                   /* bit1 sign, bit0 m: +-(2m+1) */
        uint32_t f = bm__next_field(&r, BM_FMT_2BITSYM_FIELD_BITS);
        int32_t v = (int32_t)((f & 1u) * 2u + 1u);
        *w = ((f & 2u) ? -v : v) * pk;
    } while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_4BITSYM)
BM__HOT static void bm__conv_decode_4bitsym(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do {                                   /* bit3 sign, bits 0..2 m: +-(2m+1) */
        uint32_t f = bm__next_field(&r, BM_FMT_4BITSYM_FIELD_BITS);
        int32_t v = (int32_t)(((f & 7u) << 1) + 1u);
        *w = ((f & 8u) ? -v : v) * pk;
    } while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_FP130)
BM__HOT static void bm__conv_decode_fp130(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do {                                   /* bit3 sign, bits 0..2 e: +-2^e */
        uint32_t f = bm__next_field(&r, BM_FMT_FP130_FIELD_BITS);
        int32_t v = (int32_t)1 << (f & 7u);
        *w = ((f & 8u) ? -v : v) * pk;
    } while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_4BIT)
BM__HOT static void bm__conv_decode_4bit(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do
        *w = bm__code_4bit(bm__next_field(&r, BM_FMT_4BIT_FIELD_BITS)) * pk;
    while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_8BIT)
BM__HOT static void bm__conv_decode_8bit(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do {                                   /* two's complement: f - 256 when bit 7 is set */
        uint32_t f = bm__next_field(&r, BM_FMT_8BIT_FIELD_BITS);
        *w = ((int32_t)f - (int32_t)((f & 128u) << 1)) * pk;
    } while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_NF4)
BM__HOT static void bm__conv_decode_nf4(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    do
        *w = (int32_t)bm__nf4[bm__next_field(&r, BM_FMT_NF4_FIELD_BITS)] * pk;
    while (++w != end);
}
#endif

#if BM__HAS_CONV(BM_FMT_TERNARY)
BM__HOT static void bm__conv_decode_ternary(const uint32_t *row, int32_t n, uint32_t k, int32_t *w)
{
    bm__fields r = {row, 0u, 0u};
    int32_t *end = w + n, pk = (int32_t)1 << k;    /* a multiply by pk compiles to a shift */
    uint32_t t = 0, trits = 0;
    do {                                   /* 5 base-3 digits per byte: 0, 1, 2 -> 0, +1, -1 */
        uint32_t q, d;
        if (trits == 0u) {
            t = bm__next_field(&r, BM_FMT_TERNARY_FIELD_BITS);
            trits = 5;
        }
        trits--;
        q = bm__div3(t);
        d = t - (q + q + q);
        t = q;
        *w = d == 0u ? 0 : d == 1u ? pk : -pk;
    } while (++w != end);
}
#endif
#else /* no multiplier */
/* A shift term: sign neg, shift c = e + k + 5 in [5, 31], as the byte (neg ? c - 32 : c); "conv kernels". */
BM__INLINE int8_t bm__term(uint32_t neg, uint32_t c)
{
    return (int8_t)(neg ? (int32_t)c - 32 : (int32_t)c);
}

#if BM__HAS_CONV(BM_FMT_BINARY) || BM__HAS_CONV(BM_FMT_BINARYBALANCED)
BM__HOT static uint32_t bm__conv_terms_binary(const uint32_t *row, uint32_t k, int8_t *t)
{
    bm__fields r = {row, 0u, 0u};
    int8_t *end = t + 9;
    do                                   /* 1 -> +1, 0 -> -1: one plane */
        *t = bm__term(bm__next_field(&r, BM_FMT_BINARY_FIELD_BITS) ^ 1u, k + 5u);
    while (++t != end);
    return 1;
}
#endif

#if BM__HAS_CONV(BM_FMT_TERNARY)
BM__HOT static uint32_t bm__conv_terms_ternary(const uint32_t *row, uint32_t k, int8_t *t)
{
    bm__fields r = {row, 0u, 0u};
    int8_t *end = t + 9;
    uint32_t b = 0, trits = 0;
    do {                                 /* digits 0, 1, 2: 0 = 1 - 1, +1 = 2 - 1, -1 = -2 + 1 */
        uint32_t q, d;
        if (trits == 0u) {
            b = bm__next_field(&r, BM_FMT_TERNARY_FIELD_BITS);
            trits = 5;
        }
        trits--;
        q = bm__div3(b);
        d = b - (q + q + q);
        b = q;
        t[0] = bm__term(d == 2u, k + 5u + (d != 0u));
        t[9] = bm__term(d != 2u, k + 5u);
    } while (++t != end);
    return 2;
}
#endif

#if BM__HAS_CONV(BM_FMT_2BITSYM)
BM__HOT static uint32_t bm__conv_terms_2bitsym(const uint32_t *row, uint32_t k, int8_t *t)
{
    bm__fields r = {row, 0u, 0u};
    int8_t *end = t + 9;
    do {                                 /* bit1 sign, bit0 m: +-(2 + (m ? 1 : -1)) */
        uint32_t f = bm__next_field(&r, BM_FMT_2BITSYM_FIELD_BITS), neg = f >> 1;
        t[0] = bm__term(neg, k + 6u);
        t[9] = bm__term(neg ^ (f & 1u) ^ 1u, k + 5u);
    } while (++t != end);
    return 2;
}
#endif

#if BM__HAS_CONV(BM_FMT_4BITSYM)
/* +-(2m+1) for m = 0..7 as 2^a + (bit 3 ? -1 : 1) (bits 0..2: a), and for 11 and 13 (m = 5, 6) 8 + 1 plus the
   extra term 2^(x - 1) (bits 4..5: x, 0 for none): 1 = 2 - 1, 3 = 2 + 1, ..., 11 = 8 + 1 + 2, 15 = 16 - 1. */
static const uint8_t bm__sym2[8] = {0x09, 0x01, 0x02, 0x0B, 0x03, 0x23, 0x33, 0x0C};

BM__HOT static uint32_t bm__conv_terms_4bitsym(const uint32_t *row, uint32_t k, int8_t *t)
{
    bm__fields r = {row, 0u, 0u};
    int8_t *end = t + 9;
    do {                                 /* bit3 sign, bits 0..2 m: two planes and the extra terms */
        uint32_t f = bm__next_field(&r, BM_FMT_4BITSYM_FIELD_BITS), neg = f >> 3, d = bm__sym2[f & 7u];
        t[0] = bm__term(neg, k + 5u + (d & 7u));
        t[9] = bm__term(neg ^ ((d >> 3) & 1u), k + 5u);
        if (d >> 4)
            t[18] = bm__term(neg, k + 4u + (d >> 4));
    } while (++t != end);
    return 2;
}
#endif

#if BM__HAS_CONV(BM_FMT_FP130)
BM__HOT static uint32_t bm__conv_terms_fp130(const uint32_t *row, uint32_t k, int8_t *t)
{
    bm__fields r = {row, 0u, 0u};
    int8_t *end = t + 9;
    do {                                 /* bit3 sign, bits 0..2 e: +-2^e, one plane */
        uint32_t f = bm__next_field(&r, BM_FMT_FP130_FIELD_BITS);
        *t = bm__term(f >> 3, k + 5u + (f & 7u));
    } while (++t != end);
    return 1;
}
#endif
#endif /* BM__CONV_MUL */

/* ---- format descriptors: the table ---------------------------------------------------------------------- */

/* The initializers of the fields a build has: an argument of a kernel the build leaves out is dropped unread. */
#if BM__HAS_COLS && BM_CFG_FC_WORDS == 2
#define BM__COLS(tab_, rows_, rows2_) .tab = (tab_), .rows = (rows_), .rows2 = (rows2_),
#elif BM__HAS_COLS
#define BM__COLS(tab_, rows_, rows2_) .tab = (tab_), .rows = (rows_),
#else
#define BM__COLS(tab_, rows_, rows2_)
#endif
/* A conv's weight decoder: the multiply kernels' (decode_), or the shift terms (terms_; NULL for a multiply
   format, which a build without a multiplier does not have). */
#if BM__CONV_MUL
#define BM__DECODE(decode_, terms_) .decode = (decode_),
#else
#define BM__DECODE(decode_, terms_) .terms = (terms_),
#endif

/* The table spans the ids up to the largest format that bm_fc or a conv of this build accepts. */
#define BM__FMTS_USED ((BM_CFG_FC_FORMATS) | (BM_CFG_CONV_FORMATS))
#if (BM__FMTS_USED) >> 8
#define BM__FMT_END 9
#elif (BM__FMTS_USED) >> 7
#define BM__FMT_END 8
#elif (BM__FMTS_USED) >> 6
#define BM__FMT_END 7
#elif (BM__FMTS_USED) >> 5
#define BM__FMT_END 6
#elif (BM__FMTS_USED) >> 4
#define BM__FMT_END 5
#elif (BM__FMTS_USED) >> 3
#define BM__FMT_END 4
#elif (BM__FMTS_USED) >> 2
#define BM__FMT_END 3
#elif (BM__FMTS_USED) >> 1
#define BM__FMT_END 2
#else
#define BM__FMT_END 1
#endif

static const bm__fmt bm__fmts[BM__FMT_END] = {
#if BM__HAS_FC(BM_FMT_BINARY) || BM__HAS_CONV(BM_FMT_BINARY)
    [BM_FMT_BINARY] = {
#if BM__HAS_DOT(BM_FMT_BINARY)
        .dot = bm__dot_binary,
#endif
#if BM__HAS_FC(BM_FMT_BINARY)
        BM__COLS(bm__tab_binary, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_BINARY)
        BM__DECODE(bm__conv_decode_binary, bm__conv_terms_binary)
#endif
        .per_word = BM_FMT_BINARY_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_BINARYBALANCED) || BM__HAS_CONV(BM_FMT_BINARYBALANCED)
    [BM_FMT_BINARYBALANCED] = {                    /* binary's codes and kernels; only training differs */
#if BM__HAS_DOT(BM_FMT_BINARYBALANCED)
        .dot = bm__dot_binary,
#endif
#if BM__HAS_FC(BM_FMT_BINARYBALANCED)
        BM__COLS(bm__tab_binary, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_BINARYBALANCED)
        BM__DECODE(bm__conv_decode_binary, bm__conv_terms_binary)
#endif
        .per_word = BM_FMT_BINARYBALANCED_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_TERNARY) || BM__HAS_CONV(BM_FMT_TERNARY)
    [BM_FMT_TERNARY] = {
#if BM__HAS_DOT(BM_FMT_TERNARY)
        .dot = bm__dot_ternary,
#endif
#if BM__HAS_FC(BM_FMT_TERNARY)
        BM__COLS(bm__tab_ternary, bm__rows_ternary, NULL)
#endif
#if BM__HAS_CONV(BM_FMT_TERNARY)
        BM__DECODE(bm__conv_decode_ternary, bm__conv_terms_ternary)
#endif
        .per_word = BM_FMT_TERNARY_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_2BITSYM) || BM__HAS_CONV(BM_FMT_2BITSYM)
    [BM_FMT_2BITSYM] = {
#if BM__HAS_DOT(BM_FMT_2BITSYM)
        .dot = bm__dot_2bitsym,
#endif
#if BM__HAS_FC(BM_FMT_2BITSYM)
        BM__COLS(bm__tab_2bitsym, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_2BITSYM)
        BM__DECODE(bm__conv_decode_2bitsym, bm__conv_terms_2bitsym)
#endif
        .per_word = BM_FMT_2BITSYM_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_4BITSYM) || BM__HAS_CONV(BM_FMT_4BITSYM)
    [BM_FMT_4BITSYM] = {
#if BM__HAS_DOT(BM_FMT_4BITSYM)
        .dot = bm__dot_4bitsym,
#endif
#if BM__HAS_FC(BM_FMT_4BITSYM)
        BM__COLS(bm__tab_4bitsym, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_4BITSYM)
        BM__DECODE(bm__conv_decode_4bitsym, bm__conv_terms_4bitsym)
#endif
        .per_word = BM_FMT_4BITSYM_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_4BIT) || BM__HAS_CONV(BM_FMT_4BIT)
    [BM_FMT_4BIT] = {
#if BM__HAS_DOT(BM_FMT_4BIT)
        .dot = bm__dot_4bit,
#endif
#if BM__HAS_FC(BM_FMT_4BIT)
        BM__COLS(bm__tab_4bit, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_4BIT)
        BM__DECODE(bm__conv_decode_4bit, NULL)
#endif
        .per_word = BM_FMT_4BIT_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_8BIT) || BM__HAS_CONV(BM_FMT_8BIT)
    [BM_FMT_8BIT] = {                              /* fast fc: row by row (bm__fc_8bit), no tables */
#if BM__HAS_DOT(BM_FMT_8BIT)
        .dot = bm__dot_8bit,
#endif
#if BM__HAS_CONV(BM_FMT_8BIT)
        BM__DECODE(bm__conv_decode_8bit, NULL)
#endif
        .per_word = BM_FMT_8BIT_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_FP130) || BM__HAS_CONV(BM_FMT_FP130)
    [BM_FMT_FP130] = {
#if BM__HAS_DOT(BM_FMT_FP130)
        .dot = bm__dot_fp130,
#endif
#if BM__HAS_FC(BM_FMT_FP130)
        BM__COLS(bm__tab_fp130, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_FP130)
        BM__DECODE(bm__conv_decode_fp130, bm__conv_terms_fp130)
#endif
        .per_word = BM_FMT_FP130_CODES_PER_WORD},
#endif
#if BM__HAS_FC(BM_FMT_NF4) || BM__HAS_CONV(BM_FMT_NF4)
    [BM_FMT_NF4] = {
#if BM__HAS_DOT(BM_FMT_NF4)
        .dot = bm__dot_nf4,
#endif
#if BM__HAS_FC(BM_FMT_NF4)
        BM__COLS(bm__tab_nf4, bm__rows_nib, bm__rows_nib2)
#endif
#if BM__HAS_CONV(BM_FMT_NF4)
        BM__DECODE(bm__conv_decode_nf4, NULL)
#endif
        .per_word = BM_FMT_NF4_CODES_PER_WORD},
#endif
};
#undef BM__COLS
#undef BM__DECODE

/* BM_OK when n codes fit in row_words words and every shift is in [0, 7]. fmt: a format of the build. */
static bm_status bm__check_rows(int32_t fmt, int32_t n, int32_t row_words, const uint8_t *k, int32_t n_out)
{
    if (row_words < 1 || (uint32_t)n > bm__umul((uint32_t)row_words, bm__fmts[fmt].per_word))
        return BM_ERR_ARG;
    if (k != NULL)
        for (; n_out > 0; n_out--)
            if (*k++ > 7u)
                return BM_ERR_ARG;
    return BM_OK;
}

/* ---- kernels ------------------------------------------------------------------------------------------ */

bm_status bm_input(const uint8_t *pixels, int32_t n, int32_t zero, int8_t *out)
{
    if (pixels == NULL || out == NULL || n < 0 || zero < 0 || zero > 127)
        return BM_ERR_ARG;
    for (; n > 0; n--)
        *out++ = (int8_t)((int32_t)(*pixels++ >> 1) - zero);
    return BM_OK;
}

/* bm_fc with the column tables (if its kernels use them) in tab: BM__TAB_BYTES, 2-aligned */
static bm_status bm__fc_in(const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words, int32_t fmt,
                           int32_t n_out, const uint8_t *out_shifts, int32_t relu, int32_t *out, int16_t *tab)
{
    bm_status st;
    (void)tab;
    if (!bm__fmt_in(fmt, BM_CFG_FC_FORMATS))
        return BM_ERR_FORMAT;
    if (x == NULL || words == NULL || out == NULL || n_in < 1 || n_out < 1)
        return BM_ERR_ARG;
    st = bm__check_rows(fmt, n_in, row_words, out_shifts, n_out);
    if (st != BM_OK)
        return st;
#if BM_CFG_KERNELS == 1
#if BM__HAS_FC(BM_FMT_8BIT)
    if (fmt == BM_FMT_8BIT)                    /* a multiply format without tables: row by row */
        bm__fc_8bit(x, n_in, words, row_words, n_out, out);
    else
#endif
    {
#if BM__HAS_COLS
        bm__columns(&bm__fmts[fmt], x, n_in, words, row_words, n_out, out, tab);    /* the others */
#endif
    }
    for (; n_out > 0; n_out--, out++) {        /* out holds the sums: CONTRACT §3's shift */
        int32_t a = *out;
        uint32_t k = out_shifts != NULL ? *out_shifts++ : 0u;
        *out = relu ? (a > 0 ? a << k : 0) : bm__out_shift(a, k, 0);
    }
#else
    for (; n_out > 0; n_out--) {
        uint32_t k = out_shifts != NULL ? *out_shifts++ : 0u;
        *out++ = bm__out_shift(bm__fmts[fmt].dot(words, x, n_in), k, relu);
        words += row_words;
    }
#endif
    return BM_OK;
}

bm_status bm_fc(const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words, int32_t fmt,
                int32_t n_out, const uint8_t *out_shifts, int32_t relu, int32_t *out)
{
#if BM__HAS_COLS
    int16_t tab[BM__TAB_BYTES / 2];
#else
    int16_t *tab = NULL;
#endif
    return bm__fc_in(x, n_in, words, row_words, fmt, n_out, out_shifts, relu, out, tab);
}


/* ---- conv kernels ------------------------------------------------------------------------------------------
   A conv with one input channel per group (cpg 1: conv1's channels and the depthwise layers) runs one output
   channel at a time through bm__conv_q (int8 outputs requantized with a given shift, for the streaming CNN
   driver), bm__conv_pool (the same with a 2x2 max-pool, or int32 pooled values for the driver's last layer)
   or bm__conv_y (int32 outputs, for bm_conv3x3 and a last layer without a pool). A channel's weights
   (bm__cw) are decoded once with CONTRACT §3's shift k folded in: its 9 weights w * 2^k (BM__CONV_MUL), or,
   without a multiplier, shift terms.
   Shift terms: every weight of the multiplier-free formats times 2^k is a sum of 1 to 3 signed powers of two
   (fp130 +-2^e and binary +-1 one, 2bitsym 2 +- 1 and ternary 1 - 1, 2 - 1, -2 + 1 two, 4bitsym 2^a +- 1 two
   and for 11 and 13 8 + 1 + 2^e three), so a window is 1 or 2 planes of 9 terms +-(x << c), c = e + k + 5,
   and a list of the extra third terms with their inputs' offsets in the window (4bitsym only). A term is stored as the byte t = (neg ? c - 32 : c), read sign-extended as the
   uint32 T, and computed as (x << (T & 31)) ^ T: x << c has 5 low zero bits, so the XOR adds t for a positive
   term, and for a negative one it is -(x << c) - 32 + c = -(x << c) + t. One shift, one XOR and one add per
   term, no branch. The accumulator starts at -(the sum of t over the channel's terms), so it ends at 32 * acc *
   2^k, in uint32 arithmetic (wrapping, x sign-extended: conv1's inputs are signed). That is exact because the
   true value is small: |32 * acc * 2^k| <= 32 * 9 * 128 * 128 * 2^7 < 2^31 for any int8 window and weight;
   bm__s32 turns it back to int32; the requantizing kernels take these 32 times larger values as they are
   (BM__ZS), bm__win divides them exactly (bm__val5). */

/* extra terms: compiled in with the format that has them */
#define BM__XTERMS (!BM__CONV_MUL && BM__HAS_CONV(BM_FMT_4BITSYM))

typedef struct bm__cw {
#if BM__CONV_MUL
    int32_t w[9];                 /* weight [dy][dx] * 2^k */
#else
    int8_t t[27];                 /* planes of 9 terms [dy][dx], then the extra terms from t + 18 */
    const int8_t *end;            /* t + 9 * planes */
    uint32_t c0;                  /* the accumulator's start: -(sum of the terms' bytes) */
#if BM__XTERMS
    const int8_t *xend;           /* the end of the extra terms */
    uint32_t xo[9];               /* the offset in the window (dy s + dx) of each one's input */
#endif
#endif
} bm__cw;

#if BM__CONV_MUL
/* The conv sums that bm__conv_q and bm__conv_pool requantize are 2^BM__ZS times the values: an exact
   multiple, so the requant of y (CONTRACT §4, shift g) is that of 2^BM__ZS y with shift g + BM__ZS and offset
   ((1 << g) >> 1) << BM__ZS, and the bit length of their OR is BM__ZS more (shift terms: 32 times, below 2^30,
   and an offset of at most 2^28 keeps the sum inside int32). */
#define BM__ZS 0

/* The window at p (3 rows of 3 values, s bytes apart) times the weights: acc * 2^k before the ReLU. */
BM__INLINE int32_t bm__win(const int8_t *p, uint32_t s, const bm__cw *cw)
{
    return p[0] * cw->w[0] + p[1] * cw->w[1] + p[2] * cw->w[2] + p[s] * cw->w[3] + p[s + 1u] * cw->w[4] +
           p[s + 2u] * cw->w[5] + p[s + s] * cw->w[6] + p[s + s + 1u] * cw->w[7] + p[s + s + 2u] * cw->w[8];
}
#define bm__winz bm__win
#else
#define BM__ZS 5

/* v << (T & 31): RISC-V's sll reads only the low 5 bits of the amount, so there the mask costs no instruction
   (GCC keeps it when one masked amount serves several shifts). */
#if defined(__GNUC__) && defined(__riscv)
BM__INLINE uint32_t bm__sll(uint32_t v, uint32_t T)
{
    uint32_t r;
    __asm__("sll %0, %1, %2" : "=r"(r) : "r"(v), "r"(T));
    return r;
}
#else
#define bm__sll(v, T) ((v) << ((T) & 31u))
#endif

/* Input v times the term T (the term's byte sign-extended): +-(v << c) + t, wrapping. */
#define BM__TERM(v, T) (bm__sll((uint32_t)(v), (T)) ^ (T))

/* An accumulator 32 * a (wrapping, |32 a| < 2^31) as the int32 32 * a, written without converting an
   out-of-range unsigned value (CONTRACT §10.6); the compiler makes it a move. */
BM__INLINE int32_t bm__s32(uint32_t u)
{
    return u < 0x80000000u ? (int32_t)u : -(int32_t)~u - 1;
}

/* a of z = 32 * a, in sign-magnitude form (a right shift of a non-negative value only) */
BM__INLINE int32_t bm__val5(int32_t z)
{
    return z >= 0 ? z >> 5 : -((-z) >> 5);
}

/* The window at p (3 rows of 3 values, s bytes apart) through every plane: 32 * acc * 2^k, wrapping. Only
   bm__conv_y and an odd last output use it: a function, one row of a plane at a time (small code). */
BM__HOT static uint32_t bm__terms9(const int8_t *p, uint32_t s, const bm__cw *cw)
{
    const int8_t *t = cw->t, *q = p;
    uint32_t a = cw->c0, dy = 0;
    do {
        a += BM__TERM(q[0], (uint32_t)t[0]) + BM__TERM(q[1], (uint32_t)t[1]) + BM__TERM(q[2], (uint32_t)t[2]);
        q += s;
        t += 3;
        if (++dy == 3u) {                 /* the next plane */
            dy = 0;
            q = p;
        }
    } while (t != cw->end);
#if BM__XTERMS
    {
        const uint32_t *xo = cw->xo;
        for (t = cw->t + 18; t != cw->xend; t++)
            a += BM__TERM(p[*xo++], (uint32_t)*t);
    }
#endif
    return a;
}

/* 32 * acc * 2^k: the requantizing kernels take the values times 2^BM__ZS */
BM__INLINE int32_t bm__winz(const int8_t *p, uint32_t s, const bm__cw *cw)
{
    return bm__s32(bm__terms9(p, s, cw));
}

/* acc * 2^k before the ReLU, as bm__win of a core that multiplies */
BM__INLINE int32_t bm__win(const int8_t *p, uint32_t s, const bm__cw *cw)
{
    return bm__val5(bm__winz(p, s, cw));
}
#endif

/* cw for a row of format fmt (in BM_CFG_CONV_FORMATS) with shift k, on a map with rows s bytes apart. */
static void bm__cw_set(bm__cw *cw, int32_t fmt, const uint32_t *row, uint32_t k, uint32_t s)
{
#if BM__CONV_MUL
    (void)s;
    bm__fmts[fmt].decode(row, 9, k, cw->w);
#else
    const int8_t *t = cw->t;
    uint32_t sum = 0, planes;
#if BM__XTERMS
    int8_t *x = cw->t + 18;
    uint32_t dy, dx, off = 0, *xo = cw->xo;
    for (dx = 0; dx < 9u; dx++)
        x[dx] = 0;                        /* no extra term unless the decoder writes one */
#else
    (void)s;
#endif
    planes = bm__fmts[fmt].terms(row, k, cw->t);
    cw->end = t + (planes << 3) + planes;
    for (; t != cw->end; t++)
        sum += (uint32_t)*t;
#if BM__XTERMS
    t = x;                                /* the extra terms, moved to the front of their 9 bytes */
    for (dy = 0; dy < 3u; dy++, off += s - 3u)
        for (dx = 0; dx < 3u; dx++, off++, t++)
            if (*t != 0) {
                sum += (uint32_t)*t;
                *x++ = *t;
                *xo++ = off;
            }
    cw->xend = x;
#endif
    cw->c0 = 0u - sum;
#endif
}

#if BM_CFG_CNN
/* One channel of a cpg-1 conv, requantized with shift g in [0, 24] (CONTRACT §4 with a given s): for
   r < nr, c < nc, y = max(0, window (r, c) . w * 2^k) and out[r s + c] = min((y + ((1 << g) >> 1)) >> g, 127).
   x and out are maps with rows s bytes apart (x has nr + 2 rows of nc + 2 values, nc >= 1); out may equal x:
   the window (r, c) is the last one to read x[r s + c]. Returns the bitwise OR of every y, whose bit length is
   that of their maximum, which is all ShiftNorm's shift depends on. Two neighbouring outputs are computed
   together: each weight (or term) is loaded once for both, and of their 3x4 inputs each once (per plane). */

/* One value y requantized with shift g (half = (1 << g) >> 1): min((max(y, 0) + half) >> g, 127); a positive
   y is ORed into *top. */
BM__INLINE int8_t bm__requant1(int32_t y, int32_t half, uint32_t g, uint32_t *top)
{
    int32_t v = 0;
    if (y > 0) {
        *top |= (uint32_t)y;
        v = (y + half) >> g;
        if (v > 127)
            v = 127;
    }
    return (int8_t)v;
}

#if defined(__GNUC__)
#define BM__FRESH(ptr) __asm__("" : "+r"(ptr))
#else
#define BM__FRESH(ptr) ((void)0)
#endif
#if BM__CONV_MUL
/* a0 += row t[0..2] . w[0..2] and a1 += row t[1..3] . w[0..2] */
#define BM__ROW2(a0, a1, t, w)                                                                       \
    do {                                                                                             \
        int32_t wk_ = (w)[0];                                                                        \
        a0 += (t)[0] * wk_;                                                                          \
        a1 += (t)[1] * wk_;                                                                          \
        wk_ = (w)[1];                                                                                \
        a0 += (t)[1] * wk_;                                                                          \
        a1 += (t)[2] * wk_;                                                                          \
        wk_ = (w)[2];                                                                                \
        a0 += (t)[2] * wk_;                                                                          \
        a1 += (t)[3] * wk_;                                                                          \
    } while (0)
#else
/* a0 += the terms w[0..2] of row t[0..2], a1 += those of t[1..3] (wrapping). BM__FRESH on the sums after each
   term makes the compiler add it in before the next one: it would otherwise shift all 18 inputs first and spill
   them (RV32E has 16 registers). */
#define BM__TAP2(a0, a1, t, w, j)                                                                    \
    do {                                                                                             \
        uint32_t wk_ = (uint32_t)(w)[j];                                                             \
        a0 += BM__TERM((t)[j], wk_);                                                                 \
        a1 += BM__TERM((t)[(j) + 1], wk_);                                                           \
        BM__FRESH(a0);                                                                               \
        BM__FRESH(a1);                                                                               \
    } while (0)
#define BM__ROW2(a0, a1, t, w)                                                                       \
    do {                                                                                             \
        BM__TAP2(a0, a1, t, w, 0);                                                                   \
        BM__TAP2(a0, a1, t, w, 1);                                                                   \
        BM__TAP2(a0, a1, t, w, 2);                                                                   \
    } while (0)
#endif

BM__HOT static uint32_t bm__conv_q(const int8_t *x, int8_t *out, uint32_t s, uint32_t nr, uint32_t nc,
                                   const bm__cw *cw, uint32_t g)
{
    int32_t half = (((int32_t)1 << g) >> 1) << BM__ZS;
    uint32_t top = 0;
    g += BM__ZS;
    for (; nr > 0u; nr--, x += s, out += s) {
        const int8_t *p = x, *end = x + nc;
        int8_t *o = out;
#if BM__CONV_MUL
        for (end -= nc & 1u; p != end; p += 2, o += 2) {
            const int8_t *t = p;
            int32_t a0 = 0, a1 = 0;
            BM__ROW2(a0, a1, t, cw->w);
            t += s;
            BM__FRESH(t);
            BM__ROW2(a0, a1, t, cw->w + 3);
            t += s;
            BM__FRESH(t);
            BM__ROW2(a0, a1, t, cw->w + 6);
            o[0] = bm__requant1(a0, half, g, &top);
            o[1] = bm__requant1(a1, half, g, &top);
        }
#else
        for (end -= nc & 1u; p != end; p += 2, o += 2) {
            const int8_t *w = cw->t;
            uint32_t a0 = cw->c0, a1 = a0;
            do {                          /* every plane */
                const int8_t *t = p;
                BM__FRESH(t);             /* the inputs are read again for each plane, not held */
                BM__ROW2(a0, a1, t, w);
                t += s;
                BM__FRESH(t);
                BM__ROW2(a0, a1, t, w + 3);
                t += s;
                BM__FRESH(t);
                BM__ROW2(a0, a1, t, w + 6);
                w += 9;
            } while (w != cw->end);
#if BM__XTERMS
            {
                const uint32_t *xo = cw->xo;
                for (w = cw->t + 18; w != cw->xend; w++) {
                    const int8_t *t = p + *xo++;
                    uint32_t wk = (uint32_t)*w;
                    a0 += BM__TERM(t[0], wk);
                    a1 += BM__TERM(t[1], wk);
                }
            }
#endif
            o[0] = bm__requant1(bm__s32(a0), half, g, &top);
            o[1] = bm__requant1(bm__s32(a1), half, g, &top);
        }
#endif
        if (nc & 1u) {                    /* an odd last output */
            *o = bm__requant1(bm__winz(p, s, cw), half, g, &top);
        }
    }
    return top >> BM__ZS;
}

#if BM__CONV_MUL
/* a0 += row t[0..2] . w, a1 += t[1..3] . w, b0 += u[0..2] . w, b1 += u[1..3] . w: each weight loaded once */
#define BM__ROW4(a0, a1, b0, b1, t, u, w)                                                            \
    do {                                                                                             \
        int32_t wk_ = (w)[0];                                                                        \
        a0 += (t)[0] * wk_;                                                                          \
        a1 += (t)[1] * wk_;                                                                          \
        b0 += (u)[0] * wk_;                                                                          \
        b1 += (u)[1] * wk_;                                                                          \
        wk_ = (w)[1];                                                                                \
        a0 += (t)[1] * wk_;                                                                          \
        a1 += (t)[2] * wk_;                                                                          \
        b0 += (u)[1] * wk_;                                                                          \
        b1 += (u)[2] * wk_;                                                                          \
        wk_ = (w)[2];                                                                                \
        a0 += (t)[2] * wk_;                                                                          \
        a1 += (t)[3] * wk_;                                                                          \
        b0 += (u)[2] * wk_;                                                                          \
        b1 += (u)[3] * wk_;                                                                          \
    } while (0)
#else
/* the same with terms: a0, a1 from row t, b0, b1 from row u (wrapping), one term at a time (BM__TAP2) */
#define BM__TAP4(a0, a1, b0, b1, t, u, w, j)                                                         \
    do {                                                                                             \
        uint32_t wk_ = (uint32_t)(w)[j];                                                             \
        a0 += BM__TERM((t)[j], wk_);                                                                 \
        a1 += BM__TERM((t)[(j) + 1], wk_);                                                           \
        b0 += BM__TERM((u)[j], wk_);                                                                 \
        b1 += BM__TERM((u)[(j) + 1], wk_);                                                           \
        BM__FRESH(a0);                                                                               \
        BM__FRESH(a1);                                                                               \
        BM__FRESH(b0);                                                                               \
        BM__FRESH(b1);                                                                               \
    } while (0)
#define BM__ROW4(a0, a1, b0, b1, t, u, w)                                                            \
    do {                                                                                             \
        BM__TAP4(a0, a1, b0, b1, t, u, w, 0);                                                        \
        BM__TAP4(a0, a1, b0, b1, t, u, w, 1);                                                        \
        BM__TAP4(a0, a1, b0, b1, t, u, w, 2);                                                        \
    } while (0)
#endif

/* bm__conv_q followed by the 2x2 max-pool, for r < nr, c < nc pooled outputs: P = max(0, the 4 values of
   the windows (2r + i, 2c + j), i, j < 2) requantized into out[r s + c] (out may equal x: the block (r, c)
   is the last to read x[r s + c]), or, when o32 is not NULL, P itself into o32[r nc + c] (a compact map). Pool
   first, requant second: the same values (CONTRACT §6). Returns the OR of every P. */
BM__HOT static uint32_t bm__conv_pool(const int8_t *x, int8_t *out, uint32_t s, uint32_t nr, uint32_t nc,
                                      const bm__cw *cw, uint32_t g, int32_t *o32)
{
    int32_t half = (((int32_t)1 << g) >> 1) << BM__ZS;
    uint32_t top = 0;
    g += BM__ZS;
    for (; nr > 0u; nr--, x += s + s) {
        const int8_t *p = x;
        int8_t *o = out;                  /* NULL with o32 (a single conv layer has no m->chan) */
        uint32_t left;
        if (o32 == NULL)
            out += s;
        for (left = nc; left > 0u; left--, p += 2) {
            int32_t a0, a1, b0, b1;
#if BM__CONV_MUL
            const int8_t *t = p, *u = p + s;
            a0 = a1 = b0 = b1 = 0;
            BM__FRESH(u);
            BM__ROW4(a0, a1, b0, b1, t, u, cw->w);
            t = u;
            u += s;
            BM__FRESH(u);
            BM__ROW4(a0, a1, b0, b1, t, u, cw->w + 3);
            t = u;
            u += s;
            BM__FRESH(u);
            BM__ROW4(a0, a1, b0, b1, t, u, cw->w + 6);
#else
            const int8_t *w = cw->t;
            uint32_t c0 = cw->c0, c1 = c0, d0 = c0, d1 = c0;
            do {                          /* every plane */
                const int8_t *t = p, *u = p + s;
                BM__FRESH(t);             /* the inputs are read again for each plane, not held */
                BM__FRESH(u);
                BM__ROW4(c0, c1, d0, d1, t, u, w);
                t = u;
                u += s;
                BM__FRESH(u);
                BM__ROW4(c0, c1, d0, d1, t, u, w + 3);
                t = u;
                u += s;
                BM__FRESH(u);
                BM__ROW4(c0, c1, d0, d1, t, u, w + 6);
                w += 9;
            } while (w != cw->end);
#if BM__XTERMS
            {
                const uint32_t *xo = cw->xo;
                for (w = cw->t + 18; w != cw->xend; w++) {
                    const int8_t *t = p + *xo++, *u = t + s;
                    uint32_t wk = (uint32_t)*w;
                    c0 += BM__TERM(t[0], wk);
                    c1 += BM__TERM(t[1], wk);
                    d0 += BM__TERM(u[0], wk);
                    d1 += BM__TERM(u[1], wk);
                }
            }
#endif
            a0 = bm__s32(c0);             /* 2^BM__ZS times the values */
            a1 = bm__s32(c1);
            b0 = bm__s32(d0);
            b1 = bm__s32(d1);
#endif
            a0 = a1 > a0 ? a1 : a0;
            b0 = b1 > b0 ? b1 : b0;
            a0 = b0 > a0 ? b0 : a0;
            if (o32 != NULL) {
                a0 = a0 > 0 ? a0 : 0;
                top |= (uint32_t)a0;
                *o32++ = a0 >> BM__ZS;
            } else {
                *o = bm__requant1(a0, half, g, &top);
                o++;
            }
        }
    }
    return top >> BM__ZS;
}
#endif /* BM_CFG_CNN */

/* The same conv, not requantized: out[r nc + c] = y, or without relu the signed acc * 2^k (CONTRACT §3's
   final-layer value); out is a compact [nr][nc] map. */
BM__HOT static void bm__conv_y(const int8_t *x, uint32_t s, uint32_t nr, uint32_t nc, const bm__cw *cw,
                               int32_t relu, int32_t *out)
{
    for (; nr > 0u; nr--, x += s) {
        const int8_t *p = x, *end = x + nc;
        do {
            int32_t y = bm__win(p, s, cw);
            *out++ = relu && y < 0 ? 0 : y;
        } while (++p != end);
    }
}

/* One output channel of a conv with cpg > 1 input channels per group (x: the group's first channel, [cpg][h][w]):
   each window gathered across the channels, then its dot product with the row. Not a hot path: the
   contract's CNN has cpg 1. */
static void bm__conv_wide(const int8_t *x, int32_t cpg, int32_t h, int32_t w, const uint32_t *row, int32_t fmt,
                          uint32_t k, int32_t relu, int32_t *out)
{
    int8_t win[9 * BM_CFG_CONV_MAX_CPG];
    int32_t n_w = (cpg << 3) + cpg, oh, ow;
    uint32_t hw = bm__umul((uint32_t)h, (uint32_t)w);
#if BM__CONV_MUL
    int32_t wv[9 * BM_CFG_CONV_MAX_CPG];
    bm__fmts[fmt].decode(row, n_w, k, wv);
#else
    bm__dot_fn dot = bm__fmts[fmt].dot;
#endif
    for (oh = 2; oh < h; oh++, x += w)
        for (ow = 2; ow < w; ow++) {
            const int8_t *xc = x + (ow - 2);
            int8_t *wp = win;
            int32_t ci, acc;
            for (ci = 0; ci < cpg; ci++, xc += hw, wp += 9) {
                const int8_t *r0 = xc, *r1 = r0 + w, *r2 = r1 + w;
                wp[0] = r0[0]; wp[1] = r0[1]; wp[2] = r0[2];
                wp[3] = r1[0]; wp[4] = r1[1]; wp[5] = r1[2];
                wp[6] = r2[0]; wp[7] = r2[1]; wp[8] = r2[2];
            }
#if BM__CONV_MUL
            acc = 0;
            for (ci = 0; ci < n_w; ci++)
                acc += win[ci] * wv[ci];
            *out++ = relu && acc < 0 ? 0 : acc;
#else
            acc = dot(row, win, n_w);
            *out++ = bm__out_shift(acc, k, relu);
#endif
        }
}

bm_status bm_conv3x3(const int8_t *x, int32_t c_in, int32_t h, int32_t w, const uint32_t *words,
                     int32_t row_words, int32_t fmt, int32_t n_out, int32_t groups,
                     const uint8_t *out_shifts, int32_t relu, int32_t *out)
{
    /* One flat loop over output channels, and pointers that advance by sizes made with bm__umul:
       a pointer carried across nested variable-count loops would let the compiler rebuild its
       final value with a multiply (a __mulsi3 call on RV32EC). */
    int32_t cpg, opg, c, in_group;
    uint32_t cpg_hw, plane;
    bm_status st;
    if (!bm__fmt_in(fmt, BM_CFG_CONV_FORMATS))
        return BM_ERR_FORMAT;
    if (x == NULL || words == NULL || out == NULL || c_in < 1 || n_out < 1 || groups < 1 || h < 3 || w < 3)
        return BM_ERR_ARG;
    cpg = bm__div_exact(c_in, groups);
    opg = bm__div_exact(n_out, groups);
    if (cpg < 1 || opg < 1 || cpg > BM_CFG_CONV_MAX_CPG)
        return BM_ERR_ARG;
    st = bm__check_rows(fmt, (cpg << 3) + cpg, row_words, out_shifts, n_out);
    if (st != BM_OK)
        return st;
    cpg_hw = bm__umul((uint32_t)cpg, bm__umul((uint32_t)h, (uint32_t)w));
    plane = bm__umul((uint32_t)(h - 2), (uint32_t)(w - 2));
    in_group = 0;
    for (c = 0; c < n_out; c++) {
        uint32_t k = out_shifts != NULL ? out_shifts[c] : 0u;
        if (cpg == 1) {
            bm__cw cw;
            bm__cw_set(&cw, fmt, words, k, (uint32_t)w);
            bm__conv_y(x, (uint32_t)w, (uint32_t)(h - 2), (uint32_t)(w - 2), &cw, relu, out);
        } else
            bm__conv_wide(x, cpg, h, w, words, fmt, k, relu, out);
        out += plane;
        words += row_words;
        if (++in_group == opg) {                   /* next group: next cpg input channels */
            in_group = 0;
            x += cpg_hw;
        }
    }
    return BM_OK;
}

bm_status bm_maxpool2(const int32_t *y, int32_t c, int32_t h, int32_t w, int32_t *out)
{
    int32_t ho = h >> 1, wo = w >> 1, ch;
    uint32_t hw, plane;
    if (y == NULL || out == NULL || c < 0 || h < 0 || w < 0)
        return BM_ERR_ARG;
    hw = bm__umul((uint32_t)h, (uint32_t)w);
    plane = bm__umul((uint32_t)ho, (uint32_t)wo);
    /* In place (out == y) is safe: each output lies at or before the first value of its window,
       and every later window starts further on. */
    for (ch = 0; ch < c; ch++) {
        const int32_t *r0 = y;
        int32_t *o = out, oh;
        for (oh = 0; oh < ho; oh++) {
            const int32_t *r1 = r0 + w;
            int32_t ow;
            for (ow = 0; ow < wo; ow++) {
                int32_t m = r0[0];
                m = r0[1] > m ? r0[1] : m;
                m = r1[0] > m ? r1[0] : m;
                m = r1[1] > m ? r1[1] : m;
                *o++ = m;
                r0 += 2;
                r1 += 2;
            }
            r0 = r1 + (w & 1);       /* skip an odd last column, then the window's second row */
        }
        y += hw;
        out += plane;
    }
    return BM_OK;
}

/* max(0, y[0], ..., y[n-1]): ShiftNorm's M (CONTRACT §4). */
static int32_t bm__max0(const int32_t *y, uint32_t n)
{
    int32_t m = 0;
    for (; n > 0u; n--, y++)
        if (*y > m)
            m = *y;
    return m;
}

/* The smallest s >= 0 with (m >> s) < 2^bits, for m >= 0 (bits 7: ShiftNorm's s, (m >> s) <= 127), which
   is the bit length of m >> bits, found in five steps. */
static int32_t bm__shift_to(int32_t m, int32_t bits)
{
    uint32_t v = (uint32_t)m >> bits;
    int32_t s = 0;
    if (v >> 16) {
        v >>= 16;
        s += 16;
    }
    if (v >> 8) {
        v >>= 8;
        s += 8;
    }
    if (v >> 4) {
        v >>= 4;
        s += 4;
    }
    if (v >> 2) {
        v >>= 2;
        s += 2;
    }
    if (v >> 1) {
        v >>= 1;
        s += 1;
    }
    return s + (int32_t)v;
}

/* ShiftNorm's output for a known shift s in [0, 24]: min((max(y, 0) + ((1 << s) >> 1)) >> s, 127). */
static void bm__requant(const int32_t *y, uint32_t n, int32_t s, int8_t *out)
{
    int32_t half = (((int32_t)1) << s) >> 1;
    for (; n > 0u; n--) {
        int32_t v = *y++;
        v = ((v > 0 ? v : 0) + half) >> s;
        *out++ = (int8_t)(v < 127 ? v : 127);
    }
}

int32_t bm_shiftnorm(const int32_t *y, int32_t n, int8_t *out)
{
    int32_t s;
    if (y == NULL || out == NULL || n < 0)
        return BM_ERR_ARG;
    s = bm__shift_to(bm__max0(y, (uint32_t)n), 7);
    bm__requant(y, (uint32_t)n, s, out);
    return s;
}

int32_t bm_argmax(const int32_t *logits, int32_t n)
{
    int32_t best = 0, o;
    if (logits == NULL || n < 1)
        return BM_ERR_ARG;
    for (o = 1; o < n; o++)
        if (logits[o] > logits[best])
            best = o;
    return best;
}

/* ---- model driver ------------------------------------------------------------------------------------- */

static void bm__copy_i8(const int8_t *src, uint32_t n, int8_t *dst)
{
    for (; n > 0u; n--)
        *dst++ = *src++;
}

#if BM_CFG_CNN
/* ---- CNN streaming (CONTRACT §6, "Streaming") ---------------------------------------------------------
   The conv layers run one channel at a time through all of them, so only one channel's maps are held.
   m->act holds x0, which every channel reads. m->chan holds the channel's working map: conv1 writes its
   requantized output there and each further layer but the last overwrites it in place (bm__conv_q), a pool
   compacting it in place too; every map keeps rows N bytes apart (N x N: the input). The last layer writes
   its int32 values to m->acc, and they wait in m->feat (after them in the same buffer, engine/header.py),
   kept to 8 bits, for the layer's shift. m->feat holds
   the C*H*W cached values, C exponents, then two bytes per conv layer: guess (the shifts used) and meas (the
   shifts measured). Every run starts its guesses from m->start and takes the channels in m->start's order
   (the export's choice for speed), so its time depends on its image only. */

/* 1 when the last conv layer's int32 map of `words` values fits in m->acc without reaching m->feat, which the
   generated header places right after it in the same buffer (engine/header.py), and a feat that starts in acc
   ends there too. The addresses are compared as integers: the two may be separate objects. */
static int32_t bm__map_fits(const bm_model *m, uint32_t words)
{
    uintptr_t a = (uintptr_t)m->acc, end = a + 4u * (uintptr_t)m->acc_words, f = (uintptr_t)m->feat;
    if (words > m->acc_words || (f >= a && f < end && f + (uintptr_t)m->feat_bytes > end))
        return 0;
    return f >= a + 4u * (uintptr_t)words || a >= f + (uintptr_t)m->feat_bytes;
}

/* The streamed layers lay[0..n) must be conv1 (1 -> C channels on the N x N input; after a pw layer, `after`,
   a depthwise layer on its C x H x W map instead), then depthwise C -> C layers, each on the map the previous
   one gives, and must fit m's buffers (engine/header.py `layout`; `held`: a pw layer follows, and the run's
   map waits in act after x0). Returns the C*H*W features of the last one, or 0 when they do not. */
static uint32_t bm__cnn_features(const bm_model *m, const bm_layer *lay, uint32_t n, int32_t held, int32_t after)
{
    uint32_t ch = lay->n_out, h = lay->in_h, w = lay->in_w, plane = 0u, j;
    if (ch < 1u || (!after && bm__umul(h, w) != m->n_pixels) || m->feat == NULL ||
        (n > 1u && (m->chan == NULL || m->chan_bytes < m->n_pixels)))
        return 0u;
    for (j = 0; j < n; j++, lay++) {
        uint32_t in_c = j == 0u && !after ? 1u : ch;
        if (lay->op != (j == 0u && !after ? BM_OP_CONV : BM_OP_DWCONV) || lay->in_c != in_c || lay->groups != in_c ||
            lay->n_out != ch || lay->in_h != h || lay->in_w != w || h < 3u || w < 3u)
            return 0u;
        h -= 2u;
        w -= 2u;
        if (lay->pool) {
            h >>= 1;
            w >>= 1;
        }
        if (j + 1u == n && !bm__map_fits(m, bm__umul(h, w)))
            return 0u;                    /* the last layer's int32 map (computed pooled) */
        if (lay->out_h != h || lay->out_w != w || h < 1u || w < 1u)
            return 0u;
        plane = bm__umul(h, w);
    }
    plane = bm__umul(ch, plane);
    if (held)                             /* its bytes wait where its output goes: after x0 */
        return plane <= m->act_bytes - m->n_pixels && ch + (n << 1) <= m->feat_bytes ? plane : 0u;
    return plane <= m->act_bytes && plane + ch + (n << 1) <= m->feat_bytes ? plane : 0u;
}

/* guess[j] = to, and the next guessed layer's guess moves the other way: a layer scaled by 2^d feeds the
   next one values 2^d times smaller, whose shift tends to be d lower (a guess, never a result). */
static void bm__reguess(uint8_t *guess, uint32_t j, uint32_t nh, uint32_t to)
{
    if (j + 1u < nh) {
        int32_t g = (int32_t)guess[j + 1u] + (int32_t)guess[j] - (int32_t)to;
        guess[j + 1u] = (uint8_t)(g < 0 ? 0 : g > 24 ? 24 : g);
    }
    guess[j] = (uint8_t)to;
}

/* The conv layers lay[0..n) (checked by bm__cnn_features, giving feats) on x0 in m->act run in passes (bm__run_cnn
   at the end puts the steps together). A pass (bm__cnn_pass) takes every channel through all n layers
   (bm__cnn_channel), requantizing layer j < n-1 with a guess of its shift (bm__cnn_hidden) and keeping the last
   layer's values as bytes (bm__cnn_last), and measures every layer's true shift, exact for layer j when the
   guesses of the layers before it are. When every guess equals its measure the pass was exact and is the last;
   otherwise the first wrong guess is replaced by its measure and the pass repeats (bm__cnn_settle). Two things
   make a wrong guess cheap: the channels that most often reach their layer's shift go first (m->start's order),
   and a pass stops as soon as a channel's shift exceeds its layer's guess (at most 2n such stops a run, the first
   channel's conv1 shift, a lower bound of the layer's, included: then at most n whole passes follow). Then
   bm__cnn_close requantizes the last layer's bytes into m->act. The trace gets each pass's maps, so the last
   pass's stand. refimpl/stream.py is this driver in Python, step by step under the same names. */

/* One run's streaming state: where m->feat keeps what, and the pass bookkeeping. */
typedef struct bm__cnn {
    const bm_model *m;
    const bm_layer *first;        /* conv1; the other conv layers follow it */
    uint32_t n;                   /* conv layers */
    uint32_t nh;                  /* the layers with a guessed shift: all but the last */
    uint32_t ch;                  /* channels */
    uint32_t nn;                  /* the first layer's input width: the row stride of every map of the run */
    uint32_t feats;               /* C*H*W values of the last layer */
    uint32_t stops;               /* passes of this run stopped early */
    int32_t probe;                /* 1 until the run's first channel has its conv1 shift, the first guess */
    const int8_t *src;            /* the first layer's input: x0, or after a pw layer its C maps */
    uint32_t src_plane;           /* one channel's map in src (0 for x0: one map) */
    int8_t *out;                  /* where the features go: m->act, or after x0 when held */
    uint8_t *cache;               /* feats bytes y >> a of the last layer, channel-major (at out when held) */
    uint8_t *exps;                /* a for each channel */
    uint8_t *guess;               /* n shifts used */
    uint8_t *meas;                /* n shifts measured in the pass under way */
    const uint8_t *order;         /* the channels in the order a pass takes them, or NULL: 0, 1, ... */
    int8_t *trace;                /* the first layer's trace maps, or NULL */
} bm__cnn;

/* st for a run: m->feat's regions, and the guesses and channel order of start, the run's part of m->start
   (guesses 0 where it is NULL or out of range: ShiftNorm's s is at most 24, CONTRACT §4). held: a pw layer
   follows, so the features and their cached bytes go after x0 in m->act. src: after a pw layer, its map (else
   NULL: x0). */
static void bm__cnn_open(bm__cnn *st, const bm_model *m, const bm_layer *first, uint32_t n, uint32_t feats,
                         int8_t *trace, const uint8_t *start, int32_t held, const int8_t *src)
{
    uint32_t j;
    st->m = m;
    st->first = first;
    st->n = n;
    st->nh = n - 1u;
    st->ch = first->n_out;
    st->nn = first->in_w;
    st->feats = feats;
    st->stops = 0u;
    st->probe = 1;
    st->src = src != NULL ? src : m->act;
    st->src_plane = src != NULL ? bm__umul(first->in_h, first->in_w) : 0u;
    st->out = held ? m->act + m->n_pixels : m->act;
    st->cache = held ? (uint8_t *)(void *)st->out : m->feat;
    st->exps = held ? m->feat : st->cache + feats;
    st->guess = st->exps + st->ch;
    st->meas = st->guess + n;
    st->order = start != NULL && st->nh > 0u ? start + st->nh : NULL;
    st->trace = trace;
    for (j = 0; j < st->nh; j++) {
        uint32_t g = start != NULL ? start[j] : 0u;
        st->guess[j] = (uint8_t)(g <= 24u ? g : 0u);
    }
}

/* cw: channel c's weights in layer lay, on maps with rows N bytes apart. */
static void bm__cnn_weights(const bm__cnn *st, bm__cw *cw, const bm_layer *lay, uint32_t c)
{
    bm__cw_set(cw, lay->format, lay->words + bm__umul(c, lay->row_words),
               lay->out_shifts != NULL ? lay->out_shifts[c] : 0u, st->nn);
}

/* Layer lay (not the last) of channel c on map x: conv, ReLU, << k, its pool if any, then requant with shift g
   into m->chan (in place when x is m->chan). Returns the shift of the channel's own maximum. */
static uint32_t bm__cnn_hidden(const bm__cnn *st, const bm_layer *lay, const int8_t *x, uint32_t c, uint32_t g)
{
    uint32_t h = lay->in_h - 2u, w = lay->in_w - 2u, top;
    bm__cw cw;
    bm__cnn_weights(st, &cw, lay, c);
    if (lay->pool)                        /* a pool drops an odd last row and column: not computed */
        top = bm__conv_pool(x, st->m->chan, st->nn, h >> 1, w >> 1, &cw, g, NULL);
    else
        top = bm__conv_q(x, st->m->chan, st->nn, h, w, &cw, g);
    return (uint32_t)bm__shift_to((int32_t)top, 7);
}

/* The last layer of channel c on map x: its int32 values y (pooled, if it pools) in m->acc, then kept in the
   cache as bytes y >> a, a = exps[c] the smallest shift that brings the channel's maximum to 8 bits, until the
   layer's shift is known. Returns the shift of the channel's own maximum. */
static uint32_t bm__cnn_last(const bm__cnn *st, const bm_layer *lay, const int8_t *x, uint32_t c)
{
    uint32_t h = lay->in_h - 2u, w = lay->in_w - 2u, plane = bm__umul(lay->out_h, lay->out_w), q;
    const int32_t *y = st->m->acc;
    uint8_t *f = st->cache + bm__umul(c, plane);
    int32_t top, a;
    bm__cw cw;
    bm__cnn_weights(st, &cw, lay, c);
    if (lay->pool)
        top = (int32_t)bm__conv_pool(x, st->m->chan, st->nn, h >> 1, w >> 1, &cw, 0, st->m->acc);
    else {
        bm__conv_y(x, st->nn, h, w, &cw, 1, st->m->acc);
        top = bm__max0(st->m->acc, plane);
    }
    a = bm__shift_to(top, 8);
    st->exps[c] = (uint8_t)a;
    for (q = plane; q > 0u; q--)
        *f++ = (uint8_t)(*y++ >> a);
    return (uint32_t)bm__shift_to(top, 7);
}

/* Channel c's map of layer lay (in m->chan, rows N apart) into the layer's trace tl: ch maps, channel-major. */
static void bm__cnn_trace_map(const bm__cnn *st, const bm_layer *lay, int8_t *tl, uint32_t c)
{
    const int8_t *src = st->m->chan;
    uint32_t h = lay->out_h, w = lay->out_w, r, q;
    int8_t *o = tl + bm__umul(c, bm__umul(h, w));
    for (r = 0; r < h; r++, src += st->nn)
        for (q = 0; q < w; q++)
            *o++ = src[q];
}

/* Channel c through every conv layer, measuring each layer's shift. Returns the layer whose guess it proves
   wrong (too low, or the run's first probe differs), where the pass stops, or n. */
static uint32_t bm__cnn_channel(bm__cnn *st, uint32_t c)
{
    const bm_layer *lay = st->first;
    const int8_t *x = st->src + bm__umul(c, st->src_plane);
    int8_t *tl = st->trace;
    uint32_t j, s;
    for (j = 0; j < st->nh; j++, lay++) {
        s = bm__cnn_hidden(st, lay, x, c, st->guess[j]);
        x = st->m->chan;
        if (s > st->meas[j])
            st->meas[j] = (uint8_t)s;
        if (st->stops < st->n + st->n && (s > st->guess[j] || (st->probe && s != st->guess[j]))) {
            st->probe = 0;
            return j;
        }
        st->probe = 0;
        if (tl != NULL) {
            bm__cnn_trace_map(st, lay, tl, c);
            tl += bm__umul(st->ch, bm__umul(lay->out_h, lay->out_w));
        }
    }
    s = bm__cnn_last(st, lay, x, c);
    if (s > st->meas[j])
        st->meas[j] = (uint8_t)s;
    return st->n;
}

/* One pass: the measures start at 0, then every channel in st->order (a permutation of the channels, checked
   at export; an entry out of range is skipped). Returns where it stopped (bm__cnn_channel), or n. */
static uint32_t bm__cnn_pass(bm__cnn *st)
{
    uint32_t i, j, wrong = st->n;
    for (j = 0; j < st->n; j++)
        st->meas[j] = 0;
    for (i = 0; i < st->ch && wrong == st->n; i++) {
        uint32_t c = st->order != NULL ? st->order[i] : i;
        if (c < st->ch)
            wrong = bm__cnn_channel(st, c);
    }
    return wrong;
}

/* After a pass that stopped at layer wrong, or went through (wrong = n): 1 when it went through with every
   guess equal to its measure (exact: the run's last pass); else 0, with the guess that stopped it, or else the
   first wrong one, replaced by its measure. */
static int32_t bm__cnn_settle(bm__cnn *st, uint32_t wrong)
{
    if (wrong < st->n)
        st->stops++;
    else {                                /* a whole pass: exact up to its first wrong guess */
        for (wrong = 0; wrong < st->nh && st->meas[wrong] == st->guess[wrong]; wrong++)
            ;
        if (wrong >= st->nh)
            return 1;
    }
    bm__reguess(st->guess, wrong, st->nh, st->meas[wrong]);
    return 0;
}

/* A value kept as the byte v = y >> a, requantized with the layer's shift s: d = s - a and half = (1 << d) >> 1
   (CONTRACT §6: exact, as a < s whenever a > 0). */
static int8_t bm__from_byte(uint32_t v, int32_t d, int32_t half)
{
    int32_t r = ((int32_t)v + half) >> d;
    return (int8_t)(r < 127 ? r : 127);
}

/* After the exact pass: the last layer's shift s becomes its guess (for the trace), and ShiftNorm of the last layer with s from y >> a writes the features to m->act (x0 is dead now): a < s whenever
   a > 0, so (v + ((1 << (s-a)) >> 1)) >> (s-a) equals (y + ((1 << s) >> 1)) >> s. */
static void bm__cnn_close(bm__cnn *st)
{
    const bm_layer *last = st->first + st->nh;
    uint32_t plane = bm__umul(last->out_h, last->out_w), i;
    const uint8_t *v = st->cache;
    int8_t *o = st->out;                  /* over the cached bytes themselves when held: each after its read */
    st->guess[st->nh] = st->meas[st->nh];
    for (i = 0; i < st->ch; i++, v += plane, o += plane) {
        int32_t d = (int32_t)st->meas[st->nh] - (int32_t)st->exps[i], half = (((int32_t)1) << d) >> 1;
        uint32_t q;
        for (q = 0; q < plane; q++)
            o[q] = bm__from_byte(v[q], d, half);
    }
}

/* The trace of the conv layers, when there is one: the hidden layers' maps are in place, then the features and
   the n shifts; advances the trace pointers. */
static void bm__cnn_trace(const bm__cnn *st, int8_t **t_acts, int32_t **t_shifts)
{
    const bm_layer *lay = st->first;
    int8_t *t = *t_acts;
    uint32_t j;
    if (t == NULL)
        return;
    for (j = 0; j < st->nh; j++, lay++)
        t += bm__umul(st->ch, bm__umul(lay->out_h, lay->out_w));
    bm__copy_i8(st->out, st->feats, t);
    *t_acts = t + st->feats;
    for (j = 0; j < st->n; j++)
        *(*t_shifts)++ = st->guess[j];
}

/* The conv layers first[0..n) of m, checked by bm__cnn_features (feats), on x0 in m->act (or src, after a pw
   layer), from start: leaves their features in m->act (after x0 when held) and advances the trace pointers
   (*t_acts NULL: no trace). */
static void bm__run_cnn(const bm_model *m, const bm_layer *first, uint32_t n, uint32_t feats, const uint8_t *start,
                        int32_t held, const int8_t *src, int8_t **t_acts, int32_t **t_shifts)
{
    bm__cnn st;
    bm__cnn_open(&st, m, first, n, feats, *t_acts, start, held, src);
    while (!bm__cnn_settle(&st, bm__cnn_pass(&st)))
        ;
    bm__cnn_close(&st);
    bm__cnn_trace(&st, t_acts, t_shifts);
}
#endif /* BM_CFG_CNN */

/* An fc layer of bm_run on x (m->act, or a pw layer's gathered pixel). With BM__TAB_IN_CHAN its column tables
   go to m->chan, the conv layers' working map, dead while no conv layer streams (bm_run checks it holds them),
   instead of bm_fc's stack. */
static bm_status bm__run_fc(const bm_model *m, const int8_t *x, const bm_layer *lay, int32_t relu, int32_t *out)
{
#if BM__HAS_COLS && BM__TAB_IN_CHAN
    return bm__fc_in(x, lay->n_in, lay->words, lay->row_words, lay->format, lay->n_out, lay->out_shifts,
                     relu, out, (int16_t *)(void *)m->chan);
#else
    (void)m;
    return bm_fc(x, lay->n_in, lay->words, lay->row_words, lay->format, lay->n_out, lay->out_shifts, relu, out);
#endif
}

#if BM_CFG_CNN
/* A pw layer (CONTRACT §6, "With pw1") on the first run's map of len bytes (its C*H*W) after x0 in m->act, in
   place: at each pixel its C inputs are gathered into m->feat, the fc kernels give its C outputs in m->acc, kept as bytes
   y >> a over the inputs (dead once gathered) with a per pixel after the gathered inputs in m->feat; once the
   layer's maximum gives its shift s, the bytes are requantized with s - a. Advances the trace pointers. */
static bm_status bm__run_pw(const bm_model *m, const bm_layer *lay, uint32_t len, int8_t **t_acts,
                            int32_t **t_shifts)
{
    uint32_t ch = lay->in_c, plane = bm__umul(lay->in_h, lay->in_w), p, o;
    int8_t *x = m->act + m->n_pixels, *vec = (int8_t *)(void *)m->feat;
    uint8_t *v = (uint8_t *)(void *)x, *exps = m->feat + ch;
    int32_t top = 0, s;
    const bm_layer *prev = lay - 1;       /* the first run's last layer (bm_run: a pw layer is never first) */
    if (prev->n_out != ch || prev->out_h != lay->in_h || prev->out_w != lay->in_w || lay->n_out != ch ||
        lay->n_in != ch || lay->groups != 1u || lay->pool || lay->out_h != lay->in_h ||
        lay->out_w != lay->in_w || !bm__map_fits(m, ch) ||
        ch + plane > m->feat_bytes)
        return BM_ERR_ARG;                /* in place needs n_out = C; the outputs at a pixel fit before feat */
    if (!bm__fmt_in(lay->format, BM_CFG_FC_FORMATS))
        return BM_ERR_FORMAT;             /* the fc kernels run it */
    for (p = 0; p < plane; p++) {
        int32_t m_p, a;
        bm_status st;
        for (o = 0; o < ch; o++)
            vec[o] = x[bm__umul(o, plane) + p];
        st = bm__run_fc(m, vec, lay, 1, m->acc);
        if (st != BM_OK)
            return st;
        m_p = bm__max0(m->acc, ch);
        a = bm__shift_to(m_p, 8);
        exps[p] = (uint8_t)a;
        if (m_p > top)
            top = m_p;
        for (o = 0; o < ch; o++)
            v[bm__umul(o, plane) + p] = (uint8_t)(m->acc[o] >> a);
    }
    s = bm__shift_to(top, 7);
    for (p = 0; p < plane; p++) {
        int32_t d = s - (int32_t)exps[p], half = (((int32_t)1) << d) >> 1;
        for (o = 0; o < ch; o++) {
            uint32_t q = bm__umul(o, plane) + p;
            x[q] = bm__from_byte(v[q], d, half);
        }
    }
    if (*t_acts != NULL) {
        bm__copy_i8(x, len, *t_acts);
        *t_acts += len;
        *(*t_shifts)++ = s;
    }
    return BM_OK;
}
#endif

bm_status bm_run(const bm_model *m, const uint8_t *pixels, bm_trace *trace, int32_t *logits_out)
{
    const bm_layer *lay, *last;
    int8_t *t_acts = NULL;
    int32_t *t_shifts = NULL;
    uint32_t len;                             /* elements of the activation in m->act */
    bm_status st;
    if (m == NULL || pixels == NULL || logits_out == NULL || m->layers == NULL || m->acc == NULL ||
        m->act == NULL || m->n_layers < 1 || m->n_pixels > m->act_bytes)
        return BM_ERR_ARG;
    last = m->layers + (m->n_layers - 1);
    if (last->op != BM_OP_FC || last->n_out != m->num_classes)
        return BM_ERR_ARG;
#if BM__HAS_COLS && BM__TAB_IN_CHAN
    if (m->chan == NULL || m->chan_bytes < BM__TAB_BYTES || ((uintptr_t)m->chan & 1u) != 0u)
        return BM_ERR_ARG;                    /* no room for the fc tables in chan */
#endif
    if (trace != NULL) {
        t_acts = trace->acts;
        t_shifts = trace->shifts;
        if (t_acts == NULL || t_shifts == NULL)
            return BM_ERR_ARG;
    }
    len = m->n_pixels;
    st = bm_input(pixels, (int32_t)len, m->input_zero, m->act);
    if (st != BM_OK)
        return st;
    if (t_acts != NULL) {
        bm__copy_i8(m->act, len, t_acts);
        t_acts += len;
    }
    lay = m->layers;
    if (lay->op != BM_OP_FC) {                /* a CNN: its conv layers stream channel by channel */
#if BM_CFG_CNN
        const uint8_t *start = m->start;
        const int8_t *src = NULL;             /* after the pw layer: its map */
        uint32_t runs = 0;
        while (lay != last && lay->op != BM_OP_FC) {
            const bm_layer *end = lay;
            uint32_t n = 0;
            int32_t held;
            if (lay->op == BM_OP_PWCONV) {    /* one, between two runs */
                if (runs != 1u || src != NULL)
                    return BM_ERR_ARG;
                st = bm__run_pw(m, lay, len, &t_acts, &t_shifts);
                if (st != BM_OK)
                    return st;
                src = m->act + m->n_pixels;
                lay++;
                continue;
            }
            for (; end != last && end->op != BM_OP_FC && end->op != BM_OP_PWCONV; end++)
                n++;
            held = end != last && end->op == BM_OP_PWCONV;
            if (runs != (src != NULL ? 1u : 0u) || (src != NULL && (lay->in_c != lay[-1].n_out ||
                                                   lay->in_h != lay[-1].out_h || lay->in_w != lay[-1].out_w)))
                return BM_ERR_ARG;                /* after the pw layer: a run on its map */
            len = bm__cnn_features(m, lay, n, held, src != NULL);
            if (len == 0u)
                return BM_ERR_ARG;
            for (end = lay; end != lay + n; end++) {
                if (!bm__fmt_in(end->format, BM_CFG_CONV_FORMATS))
                    return BM_ERR_FORMAT;
                st = bm__check_rows(end->format, 9, end->row_words, end->out_shifts, end->n_out);
                if (st != BM_OK)
                    return st;
            }
            bm__run_cnn(m, lay, n, len, start, held, src, &t_acts, &t_shifts);
            if (start != NULL && n > 1u)
                start += (n - 1u) + lay->n_out;   /* the next run's part */
            runs++;
            lay = end;
        }
        if (src != NULL && runs != 2u)
            return BM_ERR_ARG;                /* a pw layer must have a run after it */
#else
        return BM_ERR_ARG;                    /* built with BM_CFG_CNN 0 */
#endif
    }
    for (; lay != last; lay++) {
        int32_t s;
        if (lay->op != BM_OP_FC || lay->n_in != len || lay->n_out > m->acc_words || lay->n_out > m->act_bytes)
            return BM_ERR_ARG;
        st = bm__run_fc(m, m->act, lay, 1, m->acc);
        if (st != BM_OK)
            return st;
        s = bm_shiftnorm(m->acc, lay->n_out, m->act);   /* the input is no longer needed */
        len = lay->n_out;
        if (t_acts != NULL) {
            bm__copy_i8(m->act, len, t_acts);
            t_acts += len;
            *t_shifts++ = s;
        }
    }
    if (last->n_in != len)
        return BM_ERR_ARG;
    st = bm__run_fc(m, m->act, last, 0, logits_out);
    if (st == BM_OK && trace != NULL && trace->logits != NULL) {
        int32_t o, *dst = trace->logits;
        for (o = 0; o < last->n_out; o++)
            *dst++ = logits_out[o];
    }
    return st;
}
