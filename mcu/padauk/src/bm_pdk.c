/* bitmcu SDCC engine for Padauk pdk13/pdk14: see bm_pdk.h. C99 for SDCC 4.2 (-mpdk13, -mpdk14).
 *
 * SDCC keeps the locals of a function that calls another in static RAM for good, and overlays only the
 * locals of leaf functions; so the state of the running layer lives in a few globals and the work per
 * output row is one leaf, bmp_dot. Indexing by a variable times a constant would call SDCC's multiply
 * routine: ROM is walked with pointers instead.
 */
#include "bm_pdk_model.h"

bmp_acc_t bmp_acc[BMP_ACC_N];      /* a layer's accumulators, the logits after the last one */
int8_t bmp_act[BMP_ACT_N];         /* a hidden layer's requantized outputs (CONTRACT §4) */
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
static uint8_t bmp_first;          /* 1: the layer reads the image, 0: bmp_act */
static uint8_t bmp_last;           /* 1: the final layer (logits, no ReLU or requant) */
static bmp_idx_t bmp_o;            /* the output row being computed */

/* Input i of the layer: x0 = (p >> 1) - Z on the image (CONTRACT §1), else the int8 activation. */
#define BMP_IN(i) (bmp_first ? (int8_t)((bmp_px[i] >> 1) - BMP_INPUT_ZERO) : bmp_act[i])

/* Output row bmp_o of the layer: sum_i x[i] * w[i] over the row at bmp_w with adds and subtracts only
   (exact: the CONTRACT §3 bound fits bmp_acc_t), then for a hidden layer the ReLU, and the shift k[o]
   (§3) into bmp_acc; leaves bmp_w at the next row. */
static void bmp_row(void)
{
    bmp_acc_t acc = 0, t;
    bmp_idx_t i;
    uint8_t byte = 0, left = 0, f;
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
        if (!left) {
            byte = *bmp_w++;
            left = bmp_fmt <= BMP_FMT_BINARYBALANCED ? 8 : bmp_fmt == BMP_FMT_2BITSYM ? 4 : 2;
        }
        f = byte;
        left--;
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
#if BMP_USES_2BITSYM
        if (bmp_fmt == BMP_FMT_2BITSYM) {
            byte >>= 2;                    /* bit1 = sign, bit0 = m: +-(2m + 1) */
            if (f & 1)
                t = t + t + t;
            if (f & 2)
                acc -= t;
            else
                acc += t;
            continue;
        }
#endif
#if BMP_USES_4BITSYM
        {
            bmp_acc_t u = t;
            byte >>= 4;                    /* bit3 = sign, bits 0..2 = m: +-(2m + 1) = t + 2t m0 + 4t m1 + 8t m2 */
            u = u + u;
            if (f & 1)
                t += u;
            u = u + u;
            if (f & 2)
                t += u;
            u = u + u;
            if (f & 4)
                t += u;
            if (f & 8)
                acc -= t;
            else
                acc += t;
        }
#endif
#endif
    }
    if (!bmp_last && acc < 0)             /* ReLU, before the shift */
        acc = 0;
#if BMP_ANY_SHIFTS
    f = bmp_k ? bmp_k[bmp_o] : 0;
    /* sign-magnitude left shift (CONTRACT §3); the bound keeps the result in bmp_acc_t */
    bmp_acc[bmp_o] = acc >= 0 ? (bmp_acc_t)((bmp_uacc_t)acc << f) : -(bmp_acc_t)((bmp_uacc_t)-acc << f);
#else
    bmp_acc[bmp_o] = acc;
#endif
}

/* The last layer's class: argmax of the logits, ties to the lowest index (CONTRACT §5). */
static void bmp_argmax(void)
{
    bmp_idx_t o;
    uint8_t k = 0;
    for (o = 1; o < bmp_n_out; o++)
        if (bmp_acc[o] > bmp_acc[k])
            k = o;
    bmp_class = k;
}

/* A hidden layer's ShiftNorm (CONTRACT §4): bmp_acc (non-negative) to int8 in bmp_act. Shifts by one bit
   at a time: SDCC spills a variable 16-bit shift into many bytes of RAM. */
static void bmp_requant(void)
{
    bmp_idx_t o;
    bmp_uacc_t v = 0, half = 0;
    uint8_t s = 0, k;
    for (o = 0; o < bmp_n_out; o++)        /* M */
        if ((bmp_uacc_t)bmp_acc[o] > v)
            v = (bmp_uacc_t)bmp_acc[o];
    for (; v > 127; v >>= 1) {             /* s: the smallest with (M >> s) <= 127; half = (1 << s) >> 1 */
        half = half ? half + half : 1;
        s++;
    }
    for (o = 0; o < bmp_n_out; o++) {
        v = (bmp_uacc_t)bmp_acc[o] + half;
        for (k = s; k; k--)
            v >>= 1;
        bmp_act[o] = (int8_t)(v > 127 ? 127 : v);
    }
    bmp_first = 0;
}

/* One layer (bmp_w, bmp_k, bmp_n_in, bmp_n_out, bmp_fmt, bmp_last): every call below is to a leaf. */
static void bmp_layer(void)
{
    for (bmp_o = 0; bmp_o < bmp_n_out; bmp_o++)
        bmp_row();
    if (bmp_last)
        bmp_argmax();
    else
        bmp_requant();
}

#define BMP_LAYER(w, k, n_in, n_out, fmt, last) \
    bmp_w = (w); BMP_SET_K(k) bmp_n_in = (n_in); bmp_n_out = (n_out); BMP_SET_FMT(fmt) bmp_last = (last); \
    bmp_layer();

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
        bmp_first = 1;
        BMP_LAYERS
        bmp_done();
    }
    for (;;)
        ;
}
