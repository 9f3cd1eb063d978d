/* bitmcu.c: kernels and model driver of bitmcu.h; the arithmetic is engine/CONTRACT.md's.

   Each format has a row dot product bm__dot_<fmt>(row, x, n) = sum_{j < n} w_j * x[j] that decodes
   the packed row (CONTRACT §9) one word at a time, first code in the least significant bits.
   The multiplier-free formats use add, subtract and shift only: no '*', '/' or '%' on a variable,
   and index arithmetic walks running pointers, so that RV32EC code has no mul/div and calls no
   __mulsi3/__divsi3. Sizes are formed once per call with bm__umul (shift and add).
   A conv gathers each 3x3 window into a small buffer and calls the row dot product; for the
   multiply formats (4bit, 8bit, nf4) it instead decodes each output channel's row once and
   multiplies in place.
   Right shifts are applied to unsigned or non-negative values only, left shifts to non-negative
   values only, and no unsigned value is converted to a signed type out of range (CONTRACT §10).
*/
#include "bitmcu.h"

#define BM__HAS(id) (((BM_CFG_FORMATS) >> (id)) & 1u)

typedef int32_t (*bm__dot_fn)(const uint32_t *row, const int8_t *x, int32_t n);

/* a * b for small non-negative sizes, by shift and add (no multiply instruction or libcall). */
static uint32_t bm__umul(uint32_t a, uint32_t b)
{
    uint32_t r = 0;
    while (b != 0u) {
        if (b & 1u)
            r += a;
        a <<= 1;
        b >>= 1;
    }
    return r;
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

/* ---- row dot products, one per format -------------------------------------------------------- */

#if BM__HAS(BM_FMT_BINARY) || BM__HAS(BM_FMT_BINARYBALANCED)
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

#if BM__HAS(BM_FMT_TERNARY)
/* t / 3 for t <= 255: (t * 171) >> 9 written as shifts and adds. */
static uint32_t bm__div3(uint32_t t)
{
    return ((t << 7) + (t << 5) + (t << 3) + (t << 1) + t) >> 9;
}

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

#if BM__HAS(BM_FMT_2BITSYM)
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

#if BM__HAS(BM_FMT_4BITSYM)
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

#if BM__HAS(BM_FMT_FP130)
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

/* Two's complement fields of 4bit ([-8, 7]) and 8bit ([-128, 127]), written as a subtraction rather
   than a cast (CONTRACT §10.6). Shared by the dot kernels and bm__decode_mul. */
static inline int32_t bm__code_4bit(uint32_t f)
{
    return f >= 8u ? (int32_t)f - 16 : (int32_t)f;
}

static inline int32_t bm__code_8bit(uint32_t f)
{
    return f >= 128u ? (int32_t)f - 256 : (int32_t)f;
}

#if BM__HAS(BM_FMT_4BIT)
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

#if BM__HAS(BM_FMT_8BIT)
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

#if BM__HAS(BM_FMT_NF4)
static const int8_t bm__nf4[16] = {-127, -88, -67, -50, -36, -23, -12, 0,
                                   10, 20, 31, 43, 56, 71, 92, 127};

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

#define BM__HAS_MUL (BM__HAS(BM_FMT_4BIT) || BM__HAS(BM_FMT_8BIT) || BM__HAS(BM_FMT_NF4))

#if BM__HAS_MUL
/* 1 when fmt is a compiled-in multiply format (4bit, 8bit, nf4). */
static int32_t bm__is_mul(int32_t fmt)
{
    return (fmt == BM_FMT_4BIT && BM__HAS(BM_FMT_4BIT)) || (fmt == BM_FMT_8BIT && BM__HAS(BM_FMT_8BIT)) ||
           (fmt == BM_FMT_NF4 && BM__HAS(BM_FMT_NF4));
}

/* w[j] = weight j of a packed row of multiply format fmt, j < n: a conv decodes each row once. */
static void bm__decode_mul(int32_t fmt, const uint32_t *row, int32_t n, int16_t *w)
{
    uint32_t word = 0;
    int32_t left = 0;
    for (; n > 0; n--) {
        int32_t c;
        if (left == 0) {
            word = *row++;
            left = fmt == BM_FMT_8BIT ? 4 : 8;
        }
        left--;
        if (fmt == BM_FMT_8BIT) {
            c = bm__code_8bit(word & 255u);
            word >>= 8;
        } else {
#if BM__HAS(BM_FMT_NF4)
            if (fmt == BM_FMT_NF4)
                c = bm__nf4[word & 15u];
            else
#endif
                c = bm__code_4bit(word & 15u);
            word >>= 4;
        }
        *w++ = (int16_t)c;
    }
}
#endif

/* The dot product of format fmt, or NULL when fmt is unknown or not compiled in. */
static bm__dot_fn bm__dot_for(int32_t fmt)
{
    switch (fmt) {
#if BM__HAS(BM_FMT_BINARY)
    case BM_FMT_BINARY:
        return bm__dot_binary;
#endif
#if BM__HAS(BM_FMT_BINARYBALANCED)
    case BM_FMT_BINARYBALANCED:
        return bm__dot_binary;
#endif
#if BM__HAS(BM_FMT_TERNARY)
    case BM_FMT_TERNARY:
        return bm__dot_ternary;
#endif
#if BM__HAS(BM_FMT_2BITSYM)
    case BM_FMT_2BITSYM:
        return bm__dot_2bitsym;
#endif
#if BM__HAS(BM_FMT_4BITSYM)
    case BM_FMT_4BITSYM:
        return bm__dot_4bitsym;
#endif
#if BM__HAS(BM_FMT_4BIT)
    case BM_FMT_4BIT:
        return bm__dot_4bit;
#endif
#if BM__HAS(BM_FMT_8BIT)
    case BM_FMT_8BIT:
        return bm__dot_8bit;
#endif
#if BM__HAS(BM_FMT_FP130)
    case BM_FMT_FP130:
        return bm__dot_fp130;
#endif
#if BM__HAS(BM_FMT_NF4)
    case BM_FMT_NF4:
        return bm__dot_nf4;
#endif
    default:
        return NULL;
    }
}

/* Codes per packed word of a known format. */
static uint32_t bm__codes_per_word(int32_t fmt)
{
    switch (fmt) {
    case BM_FMT_BINARY:
    case BM_FMT_BINARYBALANCED:
        return 32u;
    case BM_FMT_TERNARY:
        return 20u;
    case BM_FMT_2BITSYM:
        return 16u;
    case BM_FMT_8BIT:
        return 4u;
    default:
        return 8u;
    }
}

/* BM_OK when n codes fit in row_words words and every shift is in [0, 7]. */
static bm_status bm__check_rows(int32_t fmt, int32_t n, int32_t row_words, const uint8_t *k, int32_t n_out)
{
    if (row_words < 1 || (uint32_t)n > bm__umul((uint32_t)row_words, bm__codes_per_word(fmt)))
        return BM_ERR_ARG;
    if (k != NULL)
        for (; n_out > 0; n_out--)
            if (*k++ > 7u)
                return BM_ERR_ARG;
    return BM_OK;
}

/* CONTRACT §3: hidden max(acc, 0) << k; final acc * 2^k in sign-magnitude form. */
static int32_t bm__out_shift(int32_t acc, uint32_t k, int32_t relu)
{
    if (relu)
        return acc > 0 ? acc << k : 0;
    return acc >= 0 ? acc << k : -((-acc) << k);
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

bm_status bm_fc(const int8_t *x, int32_t n_in, const uint32_t *words, int32_t row_words, int32_t fmt,
                int32_t n_out, const uint8_t *out_shifts, int32_t relu, int32_t *out)
{
    bm__dot_fn dot = bm__dot_for(fmt);
    bm_status st;
    if (dot == NULL)
        return BM_ERR_FORMAT;
    if (x == NULL || words == NULL || out == NULL || n_in < 1 || n_out < 1)
        return BM_ERR_ARG;
    st = bm__check_rows(fmt, n_in, row_words, out_shifts, n_out);
    if (st != BM_OK)
        return st;
    for (; n_out > 0; n_out--) {
        uint32_t k = out_shifts != NULL ? *out_shifts++ : 0u;
        *out++ = bm__out_shift(dot(words, x, n_in), k, relu);
        words += row_words;
    }
    return BM_OK;
}

bm_status bm_conv3x3(const int8_t *x, int32_t c_in, int32_t h, int32_t w, const uint32_t *words,
                     int32_t row_words, int32_t fmt, int32_t n_out, int32_t groups,
                     const uint8_t *out_shifts, int32_t relu, int32_t *out)
{
    /* One flat loop over output channels, and pointers that advance by sizes made with bm__umul:
       a pointer carried across nested variable-count loops would let the compiler rebuild its
       final value with a multiply (a __mulsi3 call on RV32EC). */
    int8_t win[9 * BM_CFG_CONV_MAX_CPG];    /* the receptive field of one output, [ci][dy][dx] */
#if BM__HAS_MUL
    int16_t wv[9 * BM_CFG_CONV_MAX_CPG];    /* multiply formats: the row's weights, decoded once */
    int32_t mul = bm__is_mul(fmt);
#endif
    bm__dot_fn dot = bm__dot_for(fmt);
    int32_t cpg, opg, n_w, c, in_group, ho, wo;
    uint32_t hw, cpg_hw, plane;
    bm_status st;
    if (dot == NULL)
        return BM_ERR_FORMAT;
    if (x == NULL || words == NULL || out == NULL || c_in < 1 || n_out < 1 || groups < 1 || h < 3 || w < 3)
        return BM_ERR_ARG;
    cpg = bm__div_exact(c_in, groups);
    opg = bm__div_exact(n_out, groups);
    if (cpg < 1 || opg < 1 || cpg > BM_CFG_CONV_MAX_CPG)
        return BM_ERR_ARG;
    n_w = (cpg << 3) + cpg;
    st = bm__check_rows(fmt, n_w, row_words, out_shifts, n_out);
    if (st != BM_OK)
        return st;
    ho = h - 2;
    wo = w - 2;
    hw = bm__umul((uint32_t)h, (uint32_t)w);
    cpg_hw = bm__umul((uint32_t)cpg, hw);
    plane = bm__umul((uint32_t)ho, (uint32_t)wo);
    in_group = 0;
    for (c = 0; c < n_out; c++) {
        const int8_t *xr = x;                      /* input row of the window's top left */
        int32_t *o = out;
        uint32_t k = out_shifts != NULL ? out_shifts[c] : 0u;
        int32_t oh;
#if BM__HAS_MUL
        if (mul)
            bm__decode_mul(fmt, words, n_w, wv);
#endif
        for (oh = 0; oh < ho; oh++) {
            int32_t ow;
            for (ow = 0; ow < wo; ow++) {
                const int8_t *xc = xr + ow;
                int32_t ci, acc;
#if BM__HAS_MUL
                if (mul) {                         /* multiply formats: MAC on the decoded row */
                    const int16_t *wq = wv;
                    acc = 0;
                    for (ci = 0; ci < cpg; ci++) {
                        const int8_t *r0 = xc, *r1 = r0 + w, *r2 = r1 + w;
                        acc += r0[0] * wq[0] + r0[1] * wq[1] + r0[2] * wq[2] +
                               r1[0] * wq[3] + r1[1] * wq[4] + r1[2] * wq[5] +
                               r2[0] * wq[6] + r2[1] * wq[7] + r2[2] * wq[8];
                        wq += 9;
                        xc += hw;
                    }
                } else
#endif
                {                                  /* gather the window, then the row dot */
                    int8_t *wp = win;
                    for (ci = 0; ci < cpg; ci++) {
                        const int8_t *r0 = xc, *r1 = r0 + w, *r2 = r1 + w;
                        wp[0] = r0[0]; wp[1] = r0[1]; wp[2] = r0[2];
                        wp[3] = r1[0]; wp[4] = r1[1]; wp[5] = r1[2];
                        wp[6] = r2[0]; wp[7] = r2[1]; wp[8] = r2[2];
                        wp += 9;
                        xc += hw;
                    }
                    acc = dot(words, win, n_w);
                }
                *o++ = bm__out_shift(acc, k, relu);
            }
            xr += w;
        }
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

int32_t bm_shiftnorm(const int32_t *y, int32_t n, int8_t *out)
{
    const int32_t *p = y;
    int32_t m = 0, s = 0, half, i;
    if (y == NULL || out == NULL || n < 0)
        return BM_ERR_ARG;
    for (i = 0; i < n; i++, p++)
        if (*p > m)
            m = *p;
    while ((m >> s) > 127)
        s++;
    half = (((int32_t)1) << s) >> 1;
    for (i = 0; i < n; i++) {
        int32_t v = *y++;
        v = ((v > 0 ? v : 0) + half) >> s;
        *out++ = (int8_t)(v < 127 ? v : 127);
    }
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
    for (lay = m->layers; lay != last; lay++) {
        uint32_t acc_len, out_len, in_len;
        int32_t s;
        if (lay->op == BM_OP_FC) {
            in_len = lay->n_in;
            acc_len = out_len = lay->n_out;
        } else if (lay->op == BM_OP_CONV || lay->op == BM_OP_DWCONV) {
            uint32_t ho = (uint32_t)lay->in_h - 2u, wo = (uint32_t)lay->in_w - 2u;
            if (lay->in_h < 3 || lay->in_w < 3)
                return BM_ERR_ARG;
            in_len = bm__umul(bm__umul(lay->in_c, lay->in_h), lay->in_w);
            acc_len = bm__umul(bm__umul(lay->n_out, ho), wo);
            if (lay->pool) {
                ho >>= 1;
                wo >>= 1;
            }
            if (lay->out_h != ho || lay->out_w != wo)
                return BM_ERR_ARG;
            out_len = bm__umul(bm__umul(lay->n_out, ho), wo);
        } else {
            return BM_ERR_ARG;
        }
        if (in_len != len || acc_len > m->acc_words || out_len > m->act_bytes)
            return BM_ERR_ARG;
        if (lay->op == BM_OP_FC) {
            st = bm_fc(m->act, lay->n_in, lay->words, lay->row_words, lay->format, lay->n_out,
                       lay->out_shifts, 1, m->acc);
        } else {
            st = bm_conv3x3(m->act, lay->in_c, lay->in_h, lay->in_w, lay->words, lay->row_words,
                            lay->format, lay->n_out, lay->groups, lay->out_shifts, 1, m->acc);
            if (st == BM_OK && lay->pool)
                st = bm_maxpool2(m->acc, lay->n_out, lay->in_h - 2, lay->in_w - 2, m->acc);
        }
        if (st != BM_OK)
            return st;
        s = bm_shiftnorm(m->acc, (int32_t)out_len, m->act);   /* the input map is no longer needed */
        len = out_len;
        if (t_acts != NULL) {
            bm__copy_i8(m->act, len, t_acts);
            t_acts += len;
            *t_shifts++ = s;
        }
    }
    if (last->n_in != len)
        return BM_ERR_ARG;
    st = bm_fc(m->act, last->n_in, last->words, last->row_words, last->format, last->n_out,
               last->out_shifts, 0, logits_out);
    if (st == BM_OK && trace != NULL && trace->logits != NULL) {
        int32_t o, *dst = trace->logits;
        for (o = 0; o < last->n_out; o++)
            *dst++ = logits_out[o];
    }
    return st;
}
