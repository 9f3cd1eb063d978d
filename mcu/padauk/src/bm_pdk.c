/* bitmcu SDCC engine for Padauk pdk13/pdk14: see bm_pdk.h. C99 for SDCC 4.2 (-mpdk13, -mpdk14).
 *
 * RAM is what limits these parts, so a hidden layer keeps no accumulators: it runs twice over its rows, once
 * to measure ShiftNorm's shift s (CONTRACT §4 needs the layer's maximum before the first output) and once to
 * requantize each output as soon as its row is summed. That doubles the hidden layers' time and leaves two
 * int8 regions in RAM. SDCC keeps the locals of a function that calls another in static RAM for good and
 * overlays only those of leaf functions; so all the state lives in a few globals and the work is one leaf,
 * bmp_pass, called twice per hidden layer. Indexing by a variable times a constant would call SDCC's multiply
 * routine: ROM is walked with pointers instead.
 */
#include "bm_pdk_model.h"

/* Region A at offset 0 (the logits at the end, and the hidden layers an even number of layers before the
   last), region B after it (the others): a layer never writes the region it reads. */
union bmp_ram_u bmp_ram;
volatile uint8_t bmp_class;

static const uint8_t *bmp_px;      /* the image being run (ROM) */
static const uint8_t *bmp_w;       /* the next weight byte (ROM) */
#if BMP_ANY_SHIFTS
static const uint8_t *bmp_k;       /* the layer's per-output shifts k[o] (ROM), or 0: all zero */
#define BMP_SET_K(k) bmp_k = (k);
#else
#define BMP_SET_K(k)
#endif
static bmp_idx_t bmp_n_in;
static bmp_idx_t bmp_n_out;
#if BMP_ONE_FORMAT >= 0            /* a model of one format: a constant, so the other tests fold away */
#define bmp_fmt BMP_ONE_FORMAT
#define BMP_SET_FMT(fmt)
#else
static uint8_t bmp_fmt;            /* BMP_FMT_* */
#define BMP_SET_FMT(fmt) bmp_fmt = (fmt);
#endif
static bmp_idx_t bmp_in;           /* where the layer reads: a region's offset, or BMP_FROM_IMAGE */
static bmp_idx_t bmp_out;          /* where it writes: a region's offset, or BMP_TO_LOGITS (the last layer) */
static uint8_t bmp_s;              /* ShiftNorm's shift; BMP_MEASURE: this pass measures it */
static bmp_uacc_t bmp_m;           /* the measuring pass: the OR of the layer's outputs (bitlen(OR) = bitlen(max)) */

#define BMP_MEASURE 255

/* Input i of the layer: x0 = (p >> 1) - Z on the image (CONTRACT §1), else the int8 activation. */
#define BMP_IN(i) (bmp_in == BMP_FROM_IMAGE ? (int8_t)((bmp_px[i] >> 1) - BMP_INPUT_ZERO) : bmp_ram.b[bmp_in + (i)])

/* The pass's variables are globals: SDCC gives each new value of a local its own RAM (t += t three times is
   three copies of t), and operates on a global in place. */
static bmp_acc_t acc, t;           /* a row's sum; the input term being added */
static bmp_uacc_t y;               /* a hidden output being requantized */
static bmp_idx_t i, o;             /* input, row */
static uint8_t byte, f;            /* the weight byte being read (shifted as its fields are used); a field */

/* One pass over the layer's rows from bmp_w: each row's sum of x[i] * w[i] with adds and subtracts only
   (exact: the header sizes bmp_acc_t by the largest partial sum any input gives, header.row_bound). The last
   layer stores the logits acc * 2^k[o] (CONTRACT §3, §5) and their argmax. A hidden layer takes
   y = max(acc, 0) << k[o]; the measuring pass ORs y into bmp_m and ends with the shift, the other stores
   min(round(y / 2^s), 127) (§4). */
static void bmp_pass(void)
{
    for (o = 0; o < bmp_n_out; o++) {
        acc = 0;
        for (i = 0; i < bmp_n_in; i++) {
#if BMP_USES_TERNARY
            if (bmp_fmt == BMP_FMT_TERNARY) {
                /* 5 trits a byte, the earliest weight the least significant digit (CONTRACT §9): the sum's
                   order does not matter, so peel the digits from the top by subtraction (no divide), digit
                   d = 0/1/2 meaning weight 0/+1/-1 of input i + 4 - (the digits peeled before it) */
                uint8_t p = 81, v = *bmp_w++;
                bmp_idx_t j = i + 4;
                for (;;) {
                    f = 0;
                    if (v >= (uint8_t)(p + p)) {
                        f = 2;
                        v -= (uint8_t)(p + p);
                    } else if (v >= p) {
                        f = 1;
                        v -= p;
                    }
                    if (f) {                   /* padding trits are 0, so j < n_in here */
                        t = BMP_IN(j);
                        if (f == 1)
                            acc += t;
                        else
                            acc -= t;
                    }
                    if (p == 1)
                        break;
                    p = p == 81 ? 27 : p == 27 ? 9 : p == 9 ? 3 : 1;
                    j--;
                }
                i += 4;
                continue;
            }
#endif
#if BMP_USES_BINARY || BMP_USES_BINARYBALANCED || BMP_USES_2BITSYM || BMP_USES_4BITSYM
            t = BMP_IN(i);
            /* a new weight byte every 8 / 4 / 2 inputs (1 / 2 / 4-bit fields, CONTRACT §9) */
            if (!((uint8_t)i & (bmp_fmt <= BMP_FMT_BINARYBALANCED ? 7 : bmp_fmt == BMP_FMT_2BITSYM ? 3 : 1)))
                byte = *bmp_w++;
            f = byte;
#if BMP_USES_BINARY || BMP_USES_BINARYBALANCED
            if (bmp_fmt <= BMP_FMT_BINARYBALANCED) {
                byte >>= 1;                    /* 1 -> +1, 0 -> -1 */
                if (f & 1)
                    acc += t;
                else
                    acc -= t;
                continue;
            }
#endif
#if BMP_USES_2BITSYM || BMP_USES_4BITSYM
            /* +-(2m + 1) t = +-(t + 2t m0 + 4t m1 + 8t m2): the sign first, then doubling t in place, so no
               temporary takes RAM */
            if (f & (bmp_fmt == BMP_FMT_2BITSYM ? 2 : 8))
                t = -t;
            acc += t;
            t += t;
            if (f & 1)
                acc += t;
#if BMP_USES_2BITSYM
            if (bmp_fmt == BMP_FMT_2BITSYM) {
                byte >>= 2;                    /* bit1 = sign, bit0 = m */
                continue;
            }
#endif
#if BMP_USES_4BITSYM
            byte >>= 4;                        /* bit3 = sign, bits 0..2 = m */
            t += t;
            if (f & 2)
                acc += t;
            t += t;
            if (f & 4)
                acc += t;
#endif
#endif
#endif
        }
        /* acc itself becomes the output, so no temporary takes RAM */
        if (bmp_out != BMP_TO_LOGITS && acc < 0)       /* a hidden layer's ReLU, before the shift */
            acc = 0;
#if BMP_ANY_SHIFTS
        /* acc * 2^k[o] (CONTRACT §3) by doubling: defined for a negative logit too, and the bound keeps it in
           bmp_acc_t; a variable shift of a 32-bit value takes SDCC dozens of bytes of RAM */
        if (bmp_k)
            for (f = bmp_k[o]; f; f--)
                acc += acc;
#endif
        if (bmp_out == BMP_TO_LOGITS) {
            bmp_ram.l[o] = acc;
            if (acc > bmp_ram.l[bmp_class])          /* argmax, ties to the lowest index (CONTRACT §5) */
                bmp_class = o;
            continue;
        }
        if (bmp_s == BMP_MEASURE) {
            bmp_m |= (bmp_uacc_t)acc;
            continue;
        }
        /* round(y / 2^s) half up = ((y >> (s - 1)) + 1) >> 1 for s >= 1 (y >= 0): no offset to add, so no
           overflow. Shifts by one bit at a time: SDCC spills a variable 16-bit shift into many bytes of RAM
           (and crashes on `for (f = s; --f;)`). */
        y = (bmp_uacc_t)acc;
        if (bmp_s) {
            for (f = bmp_s; f != 1; f--)
                y >>= 1;
            y = (y + 1) >> 1;
        }
        if (y & (bmp_uacc_t)~127)                  /* y > 127, without a copy of y */
            y = 127;
        bmp_ram.b[bmp_out + o] = (int8_t)y;
    }
    if (bmp_s == BMP_MEASURE) {        /* s: the smallest s >= 0 with (M >> s) <= 127 (CONTRACT §4) */
        bmp_s = 0;
        while (bmp_m & (bmp_uacc_t)~127) {
            bmp_m >>= 1;
            bmp_s++;
        }
    }
}

/* A layer: weights w, shifts k (0: none), sizes, format, the offsets it reads and writes. A hidden layer is
   a measuring pass (which ends with the shift) and the pass that writes; the last layer one pass, the argmax in it. */
#define BMP_HIDDEN(w, k, n_in, n_out, fmt, in, out) \
    BMP_SET_K(k) bmp_n_in = (n_in); bmp_n_out = (n_out); BMP_SET_FMT(fmt) bmp_in = (in); bmp_out = (out); \
    bmp_s = BMP_MEASURE; bmp_m = 0; bmp_w = (w); bmp_pass(); bmp_w = (w); bmp_pass();
#define BMP_LAST(w, k, n_in, n_out, fmt, in) \
    BMP_SET_K(k) bmp_n_in = (n_in); bmp_n_out = (n_out); BMP_SET_FMT(fmt) bmp_in = (in); \
    bmp_out = BMP_TO_LOGITS; bmp_class = 0; bmp_w = (w); bmp_pass();

/* The simulator stops here after each image (a breakpoint on its address) and reads the RAM. */
void bmp_done(void)
{
    __asm
        nop
    __endasm;
}

/* Every image in turn; the layers are expanded here, not in a function of their own, to keep a return
   address off the stack. */
void main(void)
{
    for (bmp_px = bmp_images; bmp_px != bmp_images + BMP_N_IMAGES * BMP_N_PIXELS; bmp_px += BMP_N_PIXELS) {
        BMP_LAYERS
        bmp_done();
    }
    for (;;)
        ;
}
