/* system.c: clock, SysTick and USART1 setup, text output, byte input with timeout, halt, faults. */
#include "ch32.h"
#include "fw_config.h"

void system_init(void)
{
    FLASH_ACTLR = FW_FLASH_LATENCY;                   /* before raising the clock */
    RCC_CFGR0 = 0;                                    /* HCLK = SYSCLK, PLL source HSI (x2) */
    RCC_CTLR |= RCC_HSION | RCC_PLLON;
    while (!(RCC_CTLR & RCC_PLLRDY)) {
    }
    RCC_CFGR0 = (RCC_CFGR0 & ~3u) | RCC_SW_PLL;
    while ((RCC_CFGR0 & (3u << 2)) != RCC_SWS_PLL) {
    }
    STK_CTLR = STK_STE | STK_STCLK_HCLK;

    RCC_APB2PCENR |= RCC_IOPAEN | RCC_IOPCEN | RCC_IOPDEN | RCC_USART1EN;
    /* PD5: TX (alternate push-pull); PD6: RX, pulled up so an unconnected line reads idle */
    GPIO_CFGLR(GPIOD) = (GPIO_CFGLR(GPIOD) & ~(0xFFu << 20)) | (GPIO_CFG_AF_PP << 20) | (GPIO_CFG_IN_PULL << 24);
    GPIO_OUTDR(GPIOD) |= 1u << 6;
    USART1_BRR = (HCLK_HZ + UART_BAUD / 2u) / UART_BAUD;  /* constant: 417 */
    USART1_CTLR1 = USART_UE | USART_TE | USART_RE;
}

void uart_putc(uint8_t c)
{
    while (!(USART1_STATR & USART_TXE)) {
    }
    USART1_DATAR = c;
}

void uart_puts(const char *s)
{
    while (*s)
        uart_putc((uint8_t)*s++);
}

static const uint32_t pow10[] = {1000000000u, 100000000u, 10000000u, 1000000u, 100000u,
                                 10000u, 1000u, 100u, 10u, 1u};

void uart_put_field(const char *label, uint32_t n)
{
    uart_puts(label);
    uart_putu(n);
}

void uart_putu(uint32_t n)
{
    const uint32_t *p = pow10;
    int started = 0;
    for (; p != pow10 + sizeof pow10 / sizeof pow10[0]; p++) {
        uint8_t d = '0';
        while (n >= *p) {
            n -= *p;
            d++;
        }
        if (d != '0' || started || *p == 1u) {
            uart_putc(d);
            started = 1;
        }
    }
}

/* SysTick when the last byte arrived: a timeout is the gap since then, so an emulator that advances
   its clock by timeout_cycles at fw_getc's entry sees the firmware time out at once. */
static uint32_t last_rx;

__attribute__((noinline)) int32_t fw_getc(uint32_t timeout_cycles)
{
    for (;;) {
        if (USART1_STATR & USART_RXNE) {
            last_rx = cycles_now();
            return (int32_t)(USART1_DATAR & 0xFFu);
        }
        if (timeout_cycles != 0u && cycles_now() - last_rx >= timeout_cycles)
            return -1;
    }
}

__attribute__((noinline)) void fw_halt(void)
{
    for (;;) {
    }
}

static void put_hex(const char *label, uint32_t v)
{
    int i;
    uart_puts(label);
    for (i = 28; i >= 0; i -= 4)
        uart_putc((uint8_t)"0123456789abcdef"[(v >> i) & 15u]);
}

/* Every exception lands here (start.S): report where, for addr2line on firmware.elf, then halt. */
void fw_fault(void)
{
    uint32_t cause, epc;
    __asm__ volatile("csrr %0, mcause" : "=r"(cause));
    __asm__ volatile("csrr %0, mepc" : "=r"(epc));
    put_hex("\r\nfault mcause 0x", cause);
    put_hex(" mepc 0x", epc);
    uart_puts("\r\n");
    fw_halt();
}
