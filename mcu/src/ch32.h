/* ch32.h: the few CH32V003 / CH32V002 registers the bitmcu firmware touches, and its runtime API.

   Addresses and bits from WCH's CH32V003 reference manual. Only standard
   CSRs (mstatus, mtvec, mepc, mcause) are used, no QingKe-specific ones, so the unicorn
   emulator (mcu/emulator.py) runs the same binary.
*/
#ifndef BITMCU_CH32_H
#define BITMCU_CH32_H

#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(addr))

#define HCLK_HZ 48000000u
#define UART_BAUD 115200u

/* RCC */
#define RCC_CTLR REG32(0x40021000u)
#define RCC_CFGR0 REG32(0x40021004u)
#define RCC_APB2PCENR REG32(0x40021018u)
#define RCC_HSION (1u << 0)
#define RCC_HSIRDY (1u << 1)
#define RCC_PLLON (1u << 24)
#define RCC_PLLRDY (1u << 25)
#define RCC_SW_PLL 2u
#define RCC_SWS_PLL (2u << 2)
#define RCC_IOPAEN (1u << 2)
#define RCC_IOPCEN (1u << 4)
#define RCC_IOPDEN (1u << 5)
#define RCC_USART1EN (1u << 14)

/* FLASH access control: wait states at 48 MHz (1 on the V003, 2 on the V002) */
#define FLASH_ACTLR REG32(0x40022000u)

/* GPIO ports A, C, D: base = GPIO_BASE(letter - 'A') */
#define GPIO_BASE(port) (0x40010800u + ((uint32_t)(port) << 10))
#define GPIO_CFGLR(base) REG32((base) + 0x00u)
#define GPIO_OUTDR(base) REG32((base) + 0x0Cu)
#define GPIO_BSHR(base) REG32((base) + 0x10u)
#define GPIOD GPIO_BASE(3)
#define GPIO_CFG_OUT_PP 0x1u   /* push-pull output, 10 MHz */
#define GPIO_CFG_AF_PP 0x9u    /* alternate function push-pull output, 10 MHz */
#define GPIO_CFG_IN_PULL 0x8u  /* input with pull-up/down (OUTDR selects up) */

/* USART1: TX on PD5, RX on PD6 */
#define USART1_STATR REG32(0x40013800u)
#define USART1_DATAR REG32(0x40013804u)
#define USART1_BRR REG32(0x40013808u)
#define USART1_CTLR1 REG32(0x4001380Cu)
#define USART_TXE (1u << 7)
#define USART_TC (1u << 6)
#define USART_RXNE (1u << 5)
#define USART_UE (1u << 13)
#define USART_TE (1u << 3)
#define USART_RE (1u << 2)

/* SysTick: 32-bit up-counter */
#define STK_CTLR REG32(0xE000F000u)
#define STK_CNT REG32(0xE000F008u)
#define STK_STE (1u << 0)
#define STK_STCLK_HCLK (1u << 2)

/* ---- runtime (system.c) ---------------------------------------------------------------------- */

/* 48 MHz from HSI x2, flash wait states, SysTick at HCLK, USART1 115200 8N1; called before main. */
void system_init(void);

/* SysTick count: HCLK cycles since system_init (wraps every 89 s). */
static inline uint32_t cycles_now(void)
{
    return STK_CNT;
}

void uart_putc(uint8_t c);
void uart_puts(const char *s);
/* n in decimal, by subtracting powers of ten (no division on the V003). */
void uart_putu(uint32_t n);
/* label, then n in decimal */
void uart_put_field(const char *label, uint32_t n);

/* The one place the firmware waits for a byte: the received byte, or -1 once SysTick has advanced
   by timeout_cycles since the last byte was received (0 = wait forever); callers pass a timeout only
   after a byte of the same frame. Global and never inlined: the emulator watches its entry. */
int32_t fw_getc(uint32_t timeout_cycles);

/* End of the demo: loops forever on hardware; the emulator stops when the PC gets here. */
void fw_halt(void) __attribute__((noreturn));

#endif /* BITMCU_CH32_H */
