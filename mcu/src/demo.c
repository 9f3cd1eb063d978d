/* demo.c: run the embedded test images through the model and print one line per image, then a
   summary line (the format is fixed by the firmware <-> emulator interface; README.md, Firmware). */
#include "ch32.h"
#include "fw_config.h"
#include "model.h"
#include "fw_images.h"   /* generated: fw_images[FW_DEMO_IMAGES][BM_IMAGE_PIXELS], fw_labels[] */

int main(void)
{
    static int32_t logits[BM_NUM_CLASSES];
    uint32_t i, correct = 0, lo = 0xFFFFFFFFu, hi = 0;
    uart_puts("bitmcu demo target=" FW_TARGET_NAME " images=" FW_DEMO_IMAGES_STR " kernels=" FW_KERNELS_NAME "\r\n");
    for (i = 0; i < FW_DEMO_IMAGES; i++) {
        uint32_t t0, cycles;
        int32_t pred;
        bm_status st;
        t0 = cycles_now();
        st = bm_run(BM_MODEL, fw_images[i], NULL, logits);
        cycles = cycles_now() - t0;
        if (st != BM_OK) {
            uart_puts("bm_run failed\r\n");
            fw_halt();
        }
        pred = bm_argmax(logits, BM_NUM_CLASSES);
        correct += (uint32_t)pred == fw_labels[i];
        lo = cycles < lo ? cycles : lo;
        hi = cycles > hi ? cycles : hi;
        uart_put_field("img ", i);
        uart_put_field(" pred ", (uint32_t)pred);
        uart_put_field(" label ", fw_labels[i]);
        uart_put_field(" cycles ", cycles);
        uart_puts("\r\n");
    }
    uart_put_field("done correct ", correct);
    uart_put_field(" of " FW_DEMO_IMAGES_STR " cycles_min ", lo);
    uart_put_field(" cycles_max ", hi);
    uart_puts("\r\n");
    fw_halt();
}
