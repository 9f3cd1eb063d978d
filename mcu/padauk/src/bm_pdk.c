/* bitmcu SDCC engine for Padauk pdk13/pdk14: see bm_pdk.h. C99 for SDCC 4.2 (-mpdk13, -mpdk14). */
#include "bm_pdk_model.h"

int8_t bmp_buf[BMP_BUF_BYTES];     /* activations, accumulators, logits at BMP_LOGITS_OFF */
volatile uint8_t bmp_class;        /* argmax of the logits of the image just run */
volatile uint8_t bmp_image;        /* index of that image */

/* The state of the running layer, as globals: SDCC keeps a non-leaf function's locals in static RAM
   for good, so the work is one leaf (bmp_dot, whose locals the linker overlays) fed through these. */
static const uint8_t *bmp_pixels;  /* the image of this run (ROM) */
static const uint8_t *bmp_w;       /* the next weight row (ROM) */
static bmp_idx_t bmp_n_in;
static uint8_t bmp_fmt;
static uint8_t bmp_first;          /* 1: the layer reads the image (CONTRACT §1), 0: int8 bmp_buf[0..n_in) */

/* Input value i of the layer: x0 = (p >> 1) - Z on the image (CONTRACT §1), else the int8 activation. */
#define BMP_IN(i) (bmp_first ? (int8_t)((int16_t)(bmp_pixels[i] >> 1) - BMP_INPUT_ZERO) : bmp_buf[i])

/* sum_i x[i] * w[i] over the row at bmp_w, with adds only (CONTRACT §3 bound: exact in bmp_acc_t);
   leaves bmp_w at the end of the row's bytes. */
static bmp_acc_t bmp_dot(void)
{
    const uint8_t *w = bmp_w;
    bmp_acc_t acc = 0, t;
    bmp_idx_t i;
    uint8_t byte = 0, left = 0, f;
    for (i = 0; i < bmp_n_in; i++) {
#if BMP_USES_TERNARY
        if (bmp_fmt == BMP_FMT_TERNARY) {
            /* a byte holds 5 trits, earliest weight least significant; the sum's order does not matter,
               so take the digits from the top (no divide): digit d of weight i + 4 - k, 0/1/2 = 0/+1/-1 */
            uint8_t k, p = 81, v = *w++;
            bmp_idx_t j = i + 4;
            for (k = 0; k < 5; k++) {
                f = 0;
                if (v >= (uint8_t)(p + p)) {
                    f = 2;
                    v -= (uint8_t)(p + p);
                } else if (v >= p) {
                    f = 1;
                    v -= p;
                }
                if (f && j < bmp_n_in) {
                    t = BMP_IN(j);
                    if (f == 1)
                        acc += t;
                    else
                        acc -= t;
                }
                j--;
                p = p == 81 ? 27 : p == 27 ? 9 : p == 9 ? 3 : 1;
            }
            i += 4;
            continue;
        }
#endif
        t = BMP_IN(i);
#if BMP_USES_BINARY || BMP_USES_BINARYBALANCED
        if (bmp_fmt <= BMP_FMT_BINARYBALANCED) {
            if (!left) {
                byte = *w++;
                left = 8;
            }
            if (byte & 1)
                acc += t;
            else
                acc -= t;
            byte >>= 1;
            left--;
            continue;
        }
#endif
#if BMP_USES_2BITSYM
        if (bmp_fmt == BMP_FMT_2BITSYM) {
            if (!left) {
                byte = *w++;
                left = 4;
            }
            f = byte;                      /* bit1 = sign, bit0 = m: value +-(2m + 1) */
            byte >>= 2;
            left--;
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
        if (bmp_fmt == BMP_FMT_4BITSYM) {
            bmp_acc_t u = t;
            if (!left) {
                byte = *w++;
                left = 2;
            }
            f = byte;                      /* bit3 = sign, bits 0..2 = m: value +-(2m + 1) */
            byte >>= 4;
            left--;
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
            continue;
        }
#endif
    }
    bmp_w = w;
    return acc;
}

/* Classify one image: logits at bmp_buf + BMP_LOGITS_OFF, the class (ties: lowest index) in bmp_class. */
static void bmp_run(void)
{
    static const bmp_layer *lay;
    static bmp_uacc_t *y, max, v;
    static bmp_acc_t acc;
    static bmp_idx_t o;
    static uint8_t l, k, s;
    bmp_first = 1;
    for (l = 0; l < BMP_N_LAYERS; l++) {
        lay = &bmp_layers[l];
        bmp_w = lay->weights;
        bmp_n_in = lay->n_in;
        bmp_fmt = lay->format;
        y = (bmp_uacc_t *)(bmp_buf + lay->out_off);
        max = 0;
        k = 0;
        for (o = 0; o < lay->n_out; o++) {
            acc = bmp_dot();
            if (lay->shifts)
                k = lay->shifts[o];
            if (lay->last)                 /* sign-magnitude left shift (CONTRACT §3) */
                ((bmp_acc_t *)y)[o] = acc >= 0 ? (bmp_acc_t)((bmp_uacc_t)acc << k)
                                               : -(bmp_acc_t)((bmp_uacc_t)-acc << k);
            else {
                v = acc > 0 ? (bmp_uacc_t)acc << k : 0;   /* ReLU, then << k */
                y[o] = v;
                if (v > max)
                    max = v;
            }
        }
        if (lay->last)
            break;
        /* ShiftNorm (CONTRACT §4) to int8 at bmp_buf[0..n_out), in place, ascending */
        s = 0;
        while ((max >> s) > 127)
            s++;
        max = s ? (bmp_uacc_t)1 << (s - 1) : 0;          /* (1 << s) >> 1 */
        for (o = 0; o < lay->n_out; o++) {
            v = (bmp_uacc_t)(y[o] + max) >> s;
            bmp_buf[o] = (int8_t)(v > 127 ? 127 : v);
        }
        bmp_first = 0;
    }
    y = (bmp_uacc_t *)(bmp_buf + BMP_LOGITS_OFF);
    k = 0;
    for (l = 1; l < BMP_NUM_CLASSES; l++)
        if (((bmp_acc_t *)y)[l] > ((bmp_acc_t *)y)[k])
            k = l;
    bmp_class = k;
}

/* The simulator stops here after each image (a breakpoint on its address) and reads bmp_buf. */
void bmp_done(void)
{
    __asm
        nop
    __endasm;
}

void main(void)
{
    for (bmp_image = 0; bmp_image < BMP_N_IMAGES; bmp_image++) {
        bmp_pixels = bmp_images[bmp_image];
        bmp_run();
        bmp_done();
    }
    for (;;)
        ;
}
