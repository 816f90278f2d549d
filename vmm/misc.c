/* misc.c: the small port-I/O odds and ends of a PC: the stop flag, the i8042's reset pulse,
 * the poweroff and debug-exit ports, POST codes, and quiet answers to the legacy probes a
 * booting Linux makes (COM2-4, LPT, VGA, IDE), so that they neither find a device nor fill
 * the log with unclaimed accesses.
 *
 * Ports owned by KVM's in-kernel devices are not claimed here: the PIT (0x40-0x43) and the
 * speaker / NMI status port 0x61 (KVM_CREATE_PIT2), the PICs (0x20-0x21, 0xa0-0xa1) and the
 * ELCR (0x4d0-0x4d1). Port 0xcf9 (reset control) lies inside the PCI configuration ports
 * that pci.c owns and is not emulated: Linux without ACPI reboots through the i8042 first.
 */
#include <errno.h>
#include <string.h>

#include "vmm-int.h"

void vmm_stop_request(struct vmm_stop *s, enum vmm_stop_reason reason, int code)
{
    bool first = false;

    if (!s || reason == VMM_STOP_NONE)
        return;
    pthread_mutex_lock(&s->lock);
    if (s->reason == VMM_STOP_NONE) {
        s->reason = reason;
        s->code = code;
        first = true;
    }
    pthread_mutex_unlock(&s->lock);
    /* Outside the lock: the callback may well look at the flag. */
    if (first && s->notify)
        s->notify(s->notify_opaque);
}

/* The little-endian value of an access (len is 1, 2, 4 or 8). */
static uint64_t misc_value(const uint8_t *data, unsigned len)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < len && i < 8; i++)
        v |= (uint64_t)data[i] << (8 * i);
    return v;
}

/* i8042 status: output buffer full (OBF), system flag, last write was a command, keyboard
 * not inhibited. OBF stays set and the data port reads 0 forever: Linux's i8042_flush()
 * gives up after its buffer size and reports "no controller found" at once, instead of
 * timing out on a self-test no one answers. The input buffer (IBF, bit 1) is always empty
 * so the reboot path's kb_wait() never waits. */
#define MISC_I8042_STATUS 0x1d
#define MISC_I8042_CMD_RESET 0xfe /* pulse output line 0: the CPU's reset */

static void misc_i8042_data(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                            bool is_write)
{
    if (!is_write)
        memset(data, 0, len);
}

static void misc_i8042_cmd(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                           bool is_write)
{
    struct vmm_stop *stop = opaque;

    if (!is_write) {
        memset(data, 0, len);
        data[0] = MISC_I8042_STATUS;
        return;
    }
    if (data[0] == MISC_I8042_CMD_RESET) {
        p2v_log(P2V_LOG_DEBUG, "i8042: reset pulse requested");
        vmm_stop_request(stop, VMM_STOP_RESET, 0);
    }
}

#define MISC_POWEROFF_BIT 0x2000 /* SLP_EN in an ACPI PM1a control register */

static void misc_poweroff(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                          bool is_write)
{
    struct vmm_stop *stop = opaque;

    if (!is_write) {
        memset(data, 0, len);
        return;
    }
    if (off == 0 && len == 2 && (misc_value(data, len) & MISC_POWEROFF_BIT)) {
        p2v_log(P2V_LOG_DEBUG, "poweroff port written");
        vmm_stop_request(stop, VMM_STOP_POWEROFF, 0);
    }
}

static void misc_debug_exit(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                            bool is_write)
{
    struct vmm_stop *stop = opaque;
    uint64_t v;

    if (!is_write) {
        memset(data, 0xff, len);
        return;
    }
    if (off != 0 || (len != 1 && len != 2 && len != 4))
        return;
    v = misc_value(data, len);
    p2v_log(P2V_LOG_DEBUG, "debug-exit port written with %llu", (unsigned long long)v);
    vmm_stop_request(stop, VMM_STOP_POWEROFF, (int)(uint32_t)v);
}

/* POST codes (0x80), the DMA page register Linux touches (0x87), the delay port (0xed):
 * writes are ignored, reads return 0. */
static void misc_sink(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                      bool is_write)
{
    if (!is_write)
        memset(data, 0, len);
}

/* Absent legacy devices: a floating ISA bus reads all ones. */
static void misc_float(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                       bool is_write)
{
    if (!is_write)
        memset(data, 0xff, len);
}

int vmm_misc_attach(struct vmm_bus *pio, struct vmm_stop *stop, struct p2v_err *err)
{
    static const struct {
        uint16_t base, len;
        vmm_io_fn *fn;
        const char *name;
    } ports[] = {
        { 0x60, 1, misc_i8042_data, "i8042 data" },
        { 0x64, 1, misc_i8042_cmd, "i8042 command" },
        { VMM_PORT_POWEROFF, 2, misc_poweroff, "poweroff" },
        { VMM_PORT_DEBUG_EXIT, 4, misc_debug_exit, "debug exit" },
        { 0x80, 1, misc_sink, "post code" },
        { 0x87, 1, misc_sink, "dma page" },
        { 0xed, 1, misc_sink, "delay port" },
        { 0x2f8, 8, misc_float, "com2 (absent)" },
        { 0x3e8, 8, misc_float, "com3 (absent)" },
        { 0x2e8, 8, misc_float, "com4 (absent)" },
        { 0x378, 8, misc_float, "lpt1 (absent)" },
        { 0x3c0, 0x20, misc_float, "vga (absent)" },
        { 0x1f0, 8, misc_float, "ide0 (absent)" },
        { 0x3f6, 1, misc_float, "ide0 control (absent)" },
        { 0x170, 8, misc_float, "ide1 (absent)" },
        { 0x376, 1, misc_float, "ide1 control (absent)" },
    };

    if (!stop)
        return p2v_err_set(err, EINVAL, "misc devices need a stop flag");
    for (size_t i = 0; i < P2V_ARRAY_SIZE(ports); i++) {
        if (vmm_bus_register(pio, ports[i].base, ports[i].len, ports[i].fn, stop,
                             ports[i].name, err) < 0)
            return -1;
    }
    return 0;
}
