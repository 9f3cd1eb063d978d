/* segment.h: optional 7-segment display of the predicted digit (serial mode).

   fw_config.h gives FW_SEG_COUNT (0, 7 or 8) pins for segments a..g and dp, each coded as
   (port letter - 'A') << 3 | pin (mcu.segment_pins), and FW_SEG_ACTIVE_LOW for common-anode
   displays. The dp segment lights while an inference runs. With no pins every call is empty.
*/
#ifndef BITMCU_SEGMENT_H
#define BITMCU_SEGMENT_H

#include "ch32.h"
#include "fw_config.h"

#if FW_SEG_COUNT
static const uint8_t seg_pins[FW_SEG_COUNT] = FW_SEG_PINS;
/* segments a..g (bit 0 = a) of the digits 0..9 */
static const uint8_t seg_digits[10] = {0x3F, 0x06, 0x5B, 0x4F, 0x66, 0x6D, 0x7D, 0x07, 0x7F, 0x6F};

/* Drive the display: bit i of lit = segment i on. */
static void seg_write(uint32_t lit)
{
    uint32_t i;
    for (i = 0; i < FW_SEG_COUNT; i++) {
        uint32_t base = GPIO_BASE(seg_pins[i] >> 3), bit = 1u << (seg_pins[i] & 7u);
        uint32_t on = ((lit >> i) & 1u) ^ (FW_SEG_ACTIVE_LOW ? 1u : 0u);
        GPIO_BSHR(base) = on ? bit : bit << 16;
    }
}

static void seg_init(void)
{
    uint32_t i;
    for (i = 0; i < FW_SEG_COUNT; i++) {
        uint32_t base = GPIO_BASE(seg_pins[i] >> 3), shift = (seg_pins[i] & 7u) << 2;
        GPIO_CFGLR(base) = (GPIO_CFGLR(base) & ~(0xFu << shift)) | (GPIO_CFG_OUT_PP << shift);
    }
    seg_write(0);
}

/* cls 0..9: its digit; anything else: blank. */
static void seg_show(int32_t cls)
{
    seg_write(cls >= 0 && cls <= 9 ? seg_digits[cls] : 0u);
}

static void seg_busy(void)
{
    seg_write(1u << 7);
}
#else
static inline void seg_init(void) {}
static inline void seg_show(int32_t cls) { (void)cls; }
static inline void seg_busy(void) {}
#endif

#endif /* BITMCU_SEGMENT_H */
