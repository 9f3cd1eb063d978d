/* serial.c: classify images received over USART1 in the framed protocol of mcu/protocol.py.

   frame = 0xB5 0x4D, type u8, length u16 LE, payload, checksum u8 (type + length bytes + payload +
   checksum = 0 mod 256). Host -> board: IMAGE 0x01 (N*N pixels), PING 0x02 (empty). Board -> host:
   RESULT 0x81 (class u8, cycles u32 LE, logits int32 LE), PONG 0x82 (image size, classes, target),
   ERROR 0xEE (code u8). The header is judged as soon as it is read: a type the board does not take ->
   ERROR 3, a length that type cannot have -> ERROR 2, and then the bytes after the magic are scanned
   again for the next magic, so a stray magic pair or a wrong length costs no following frame (the
   length is never trusted to skip bytes). The rest is read whole: a byte missing for FW_BYTE_TIMEOUT
   cycles -> ERROR 4 (truncated), a wrong checksum -> ERROR 1. Bytes that do not start the magic are
   skipped. Nothing is sent before the first frame arrives.
*/
#include "ch32.h"
#include "fw_config.h"
#include "model.h"
#include "segment.h"

#define MAGIC0 0xB5u
#define MAGIC1 0x4Du
#define T_IMAGE 0x01u
#define T_PING 0x02u
#define T_RESULT 0x81u
#define T_PONG 0x82u
#define T_ERROR 0xEEu
#define E_CHECKSUM 1u
#define E_LENGTH 2u
#define E_TYPE 3u
#define E_TRUNCATED 4u
#define FW_BYTE_TIMEOUT (HCLK_HZ / 20u)    /* 50 ms between two bytes of one frame */

#if BM_CHAN_BYTES >= BM_IMAGE_PIXELS
/* a CNN: the image waits in the conv layers' working map (model.h), free until bm_run has copied it */
#define pixels ((uint8_t *)bm_chan_buf)
#else
static uint8_t pixels[BM_IMAGE_PIXELS];
#endif
static uint8_t back[3];             /* bytes of a rejected header, to be scanned again (last first) */
static uint32_t n_back;
static int32_t logits[BM_NUM_CLASSES];
static uint8_t tx_sum;

static void tx(uint8_t b)
{
    tx_sum = (uint8_t)(tx_sum + b);
    uart_putc(b);
}

static void tx_u32(uint32_t v)
{
    tx((uint8_t)v);
    tx((uint8_t)(v >> 8));
    tx((uint8_t)(v >> 16));
    tx((uint8_t)(v >> 24));
}

static void frame_begin(uint8_t type, uint16_t len)
{
    uart_putc(MAGIC0);
    uart_putc(MAGIC1);
    tx_sum = 0;
    tx(type);
    tx((uint8_t)len);
    tx((uint8_t)(len >> 8));
}

static void frame_end(void)
{
    uart_putc((uint8_t)-tx_sum);
}

static void send_error(uint8_t code)
{
    frame_begin(T_ERROR, 1);
    tx(code);
    frame_end();
}

/* The next byte: one pushed back by a rejected header, else the line's (-1 after `timeout` cycles). */
static int32_t rx(uint32_t timeout)
{
    if (n_back > 0u)
        return back[--n_back];
    return fw_getc(timeout);
}

/* A rejected header's bytes after the magic (type, then the length bytes read) go back to be scanned. */
static void unread(const uint8_t *bytes, uint32_t n)
{
    while (n > 0u)
        back[n_back++] = bytes[--n];
}

/* Wait for the two magic bytes; a repeated first byte may still start the magic. */
static void hunt(void)
{
    int32_t c = rx(0);
    for (;;) {
        if (c != (int32_t)MAGIC0) {
            c = rx(0);
            continue;
        }
        c = rx(FW_BYTE_TIMEOUT);
        if (c == (int32_t)MAGIC1)
            return;
        if (c < 0)
            c = rx(0);
    }
}

static void classify(void)
{
    uint32_t t0, cycles;
    int32_t cls, i;
    bm_status st;
    seg_busy();
    t0 = cycles_now();
    st = bm_run(BM_MODEL, pixels, NULL, logits);
    cycles = cycles_now() - t0;
    cls = st == BM_OK ? bm_argmax(logits, BM_NUM_CLASSES) : 0xFF;
    seg_show(cls);
    frame_begin(T_RESULT, 5 + 4 * BM_NUM_CLASSES);
    tx((uint8_t)cls);
    tx_u32(cycles);
    for (i = 0; i < BM_NUM_CLASSES; i++)
        tx_u32((uint32_t)logits[i]);
    frame_end();
}

int main(void)
{
    seg_init();
    for (;;) {
        uint32_t len = 0, n;
        uint8_t sum, head[3] = {0u, 0u, 0u}, *dst = pixels;
        int32_t c = 0;
        hunt();
        /* type, length low, length high: judged before any payload byte is read */
        c = rx(FW_BYTE_TIMEOUT);
        head[0] = (uint8_t)c;
        if (c >= 0 && head[0] != T_IMAGE && head[0] != T_PING) {
            send_error(E_TYPE);
            unread(head, 1);
            continue;
        }
        for (n = 1; c >= 0 && n < 3; n++) {
            c = rx(FW_BYTE_TIMEOUT);
            head[n] = (uint8_t)c;
        }
        len = (uint32_t)head[1] | (uint32_t)head[2] << 8;
        if (c >= 0 && len != (head[0] == T_IMAGE ? BM_IMAGE_PIXELS : 0u)) {
            send_error(E_LENGTH);
            unread(head, 3);
            continue;
        }
        sum = (uint8_t)(head[0] + head[1] + head[2]);
        for (n = 0; c >= 0 && n <= len; n++) {      /* n == len: the checksum */
            c = rx(FW_BYTE_TIMEOUT);
            sum = (uint8_t)(sum + c);
            if (n < len)
                *dst++ = (uint8_t)c;                /* len is BM_IMAGE_PIXELS or 0 here */
        }
        if (c < 0)
            send_error(E_TRUNCATED);
        else if (sum != 0u)
            send_error(E_CHECKSUM);
        else if (head[0] == T_PING) {
            frame_begin(T_PONG, 3);
            tx(BM_IMAGE_SIZE);
            tx(BM_NUM_CLASSES);
            tx(FW_TARGET_ID);
            frame_end();
        } else {
            classify();
        }
    }
}
