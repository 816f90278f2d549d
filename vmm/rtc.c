/* rtc.c: an MC146818-style CMOS at ports 0x70 (index) and 0x71 (data).
 *
 * The clock registers are computed from the host's UTC clock at each read, in BCD and 24-hour
 * mode (status B 0x02), never "update in progress"; the guest's writes to them, and to the
 * status registers, are accepted and ignored. The memory size registers tell the guest's
 * RAM; every other index is plain CMOS RAM.
 *
 * vmm-int.h gives the RTC no object and no release function, so its state is this file's
 * single instance: one RTC per process (p2v-vmm runs one VM); a later vmm_rtc_attach()
 * resets it.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "vmm-int.h"

#define RTC_INDEX_MASK 0x7f /* bit 7 of the index port masks NMIs: ignored */
#define RTC_RAM_SIZE 128

enum {
    RTC_SECONDS = 0x00,
    RTC_MINUTES = 0x02,
    RTC_HOURS = 0x04,
    RTC_WEEKDAY = 0x06,
    RTC_DAY = 0x07,
    RTC_MONTH = 0x08,
    RTC_YEAR = 0x09,
    RTC_STATUS_A = 0x0a,
    RTC_STATUS_B = 0x0b,
    RTC_STATUS_C = 0x0c,
    RTC_STATUS_D = 0x0d,
    RTC_SHUTDOWN = 0x0f,
    RTC_FLOPPY = 0x10,
    RTC_EQUIPMENT = 0x14,
    RTC_BASE_LO = 0x15,
    RTC_BASE_HI = 0x16,
    RTC_EXT_LO = 0x17,
    RTC_EXT_HI = 0x18,
    RTC_EXT2_LO = 0x30,
    RTC_EXT2_HI = 0x31,
    RTC_CENTURY = 0x32,
    RTC_HIGH_LO = 0x34,
    RTC_HIGH_HI = 0x35,
};

#define RTC_STATUS_A_VALUE 0x26 /* 32.768 kHz time base, 1024 Hz rate, UIP clear */
#define RTC_STATUS_B_VALUE 0x02 /* 24-hour, BCD, no interrupts */
#define RTC_STATUS_D_VALUE 0x80 /* valid RAM and time */
#define RTC_EQUIPMENT_VALUE 0x02 /* maths coprocessor, no floppy */
#define RTC_BASE_KIB 640

static struct {
    pthread_mutex_t lock;
    uint8_t index;
    uint8_t ram[RTC_RAM_SIZE];
} rtc = { .lock = PTHREAD_MUTEX_INITIALIZER };

static uint8_t rtc_bcd(int v)
{
    v %= 100;
    return (uint8_t)(((v / 10) << 4) | (v % 10));
}

/* The clock register @idx now. */
static uint8_t rtc_clock_read(uint8_t idx)
{
    time_t now = time(NULL);
    struct tm tm;

    if (!gmtime_r(&now, &tm))
        return 0;
    switch (idx) {
    case RTC_SECONDS:
        return rtc_bcd(tm.tm_sec > 59 ? 59 : tm.tm_sec);
    case RTC_MINUTES:
        return rtc_bcd(tm.tm_min);
    case RTC_HOURS:
        return rtc_bcd(tm.tm_hour);
    case RTC_WEEKDAY:
        return rtc_bcd(tm.tm_wday + 1); /* 1 = Sunday */
    case RTC_DAY:
        return rtc_bcd(tm.tm_mday);
    case RTC_MONTH:
        return rtc_bcd(tm.tm_mon + 1);
    case RTC_YEAR:
        return rtc_bcd(tm.tm_year % 100);
    default: /* RTC_CENTURY */
        return rtc_bcd((tm.tm_year + 1900) / 100);
    }
}

static bool rtc_is_clock(uint8_t idx)
{
    switch (idx) {
    case RTC_SECONDS: case RTC_MINUTES: case RTC_HOURS: case RTC_WEEKDAY:
    case RTC_DAY: case RTC_MONTH: case RTC_YEAR: case RTC_CENTURY:
        return true;
    default:
        return false;
    }
}

static uint8_t rtc_read_locked(uint8_t idx)
{
    if (rtc_is_clock(idx))
        return rtc_clock_read(idx);
    switch (idx) {
    case RTC_STATUS_A:
        return RTC_STATUS_A_VALUE;
    case RTC_STATUS_B:
        return RTC_STATUS_B_VALUE;
    case RTC_STATUS_C:
        return 0; /* no interrupt flags */
    case RTC_STATUS_D:
        return RTC_STATUS_D_VALUE;
    default:
        return rtc.ram[idx];
    }
}

static void rtc_write_locked(uint8_t idx, uint8_t v)
{
    if (rtc_is_clock(idx))
        return;
    switch (idx) {
    case RTC_STATUS_A: case RTC_STATUS_B: case RTC_STATUS_C: case RTC_STATUS_D:
        return;
    default:
        rtc.ram[idx] = v;
    }
}

/* Port 0x70 (offset 0) is the index, 0x71 (offset 1) the data; a wider access is handled
 * byte by byte, as the two ports would see it. */
static void rtc_io(void *opaque, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
    pthread_mutex_lock(&rtc.lock);
    for (unsigned i = 0; i < len; i++) {
        uint64_t port = off + i;
        if (port == 0) {
            if (is_write)
                rtc.index = data[i] & RTC_INDEX_MASK;
            else
                data[i] = 0xff; /* the index port is write-only */
        } else if (port == 1) {
            if (is_write)
                rtc_write_locked(rtc.index, data[i]);
            else
                data[i] = rtc_read_locked(rtc.index);
        } else if (!is_write) {
            data[i] = 0xff;
        }
    }
    pthread_mutex_unlock(&rtc.lock);
}

static void rtc_put16(uint8_t lo, uint8_t hi, uint64_t v)
{
    if (v > 0xffff)
        v = 0xffff;
    rtc.ram[lo] = (uint8_t)v;
    rtc.ram[hi] = (uint8_t)(v >> 8);
}

int vmm_rtc_attach(struct vmm_bus *pio, uint64_t ram_bytes, struct p2v_err *err)
{
    const uint64_t mib = 1ull << 20;
    uint64_t ext_kib = ram_bytes > mib ? (ram_bytes - mib) >> 10 : 0;
    uint64_t high_64k = ram_bytes > 16 * mib ? (ram_bytes - 16 * mib) >> 16 : 0;

    pthread_mutex_lock(&rtc.lock);
    memset(rtc.ram, 0, sizeof(rtc.ram));
    rtc.index = 0;
    rtc.ram[RTC_SHUTDOWN] = 0;
    rtc.ram[RTC_FLOPPY] = 0;
    rtc.ram[RTC_EQUIPMENT] = RTC_EQUIPMENT_VALUE;
    rtc_put16(RTC_BASE_LO, RTC_BASE_HI, RTC_BASE_KIB);
    rtc_put16(RTC_EXT_LO, RTC_EXT_HI, ext_kib);
    rtc_put16(RTC_EXT2_LO, RTC_EXT2_HI, ext_kib);
    rtc_put16(RTC_HIGH_LO, RTC_HIGH_HI, high_64k);
    pthread_mutex_unlock(&rtc.lock);

    return vmm_bus_register(pio, 0x70, 2, rtc_io, NULL, "rtc", err);
}
