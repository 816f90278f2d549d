/* bus.c: the port-I/O and MMIO buses: a short table of non-overlapping regions per bus,
 * looked up on every exit.
 *
 * vCPU threads dispatch concurrently while a PCI BAR write (itself a port access from some
 * vCPU) may move a region, so the table is read under a read lock and changed under a write
 * lock. struct vmm_bus has no room for a lock, so one lock serves every bus in the process;
 * it is never held while a device runs, so devices may move regions from their handlers.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "vmm-int.h"

static pthread_rwlock_t bus_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Unclaimed accesses are logged, but a guest polling an absent port would flood the log:
 * the first VMM_BUS_LOG_FIRST are logged, then one in every VMM_BUS_LOG_EVERY. */
#define VMM_BUS_LOG_FIRST 32
#define VMM_BUS_LOG_EVERY 1000

static const char *bus_name(const struct vmm_bus *bus)
{
    return bus->name ? bus->name : "bus";
}

/* True when [a, a + alen) and [b, b + blen) share a byte; both ranges are known not to
 * wrap. */
static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* The index of the region other than @skip that overlaps [base, base + len), or -1. */
static int bus_find_overlap_locked(const struct vmm_bus *bus, uint64_t base, uint64_t len,
                                   int skip)
{
    for (unsigned i = 0; i < bus->n; i++) {
        if ((int)i != skip && ranges_overlap(base, len, bus->r[i].base, bus->r[i].len))
            return (int)i;
    }
    return -1;
}

int vmm_bus_register(struct vmm_bus *bus, uint64_t base, uint64_t len, vmm_io_fn *fn,
                     void *opaque, const char *name, struct p2v_err *err)
{
    uint64_t end;
    int r = -1, o;

    if (!fn)
        return p2v_err_set(err, EINVAL, "%s region '%s' has no handler", bus_name(bus),
                           name ? name : "?");
    if (len == 0)
        return p2v_err_set(err, EINVAL, "%s region '%s' at 0x%" PRIx64 " has length 0",
                           bus_name(bus), name ? name : "?", base);
    if (P2V_ADD_OVERFLOW(base, len, &end))
        return p2v_err_set(err, EINVAL,
                           "%s region '%s' at 0x%" PRIx64 " length 0x%" PRIx64
                           " wraps the address space",
                           bus_name(bus), name ? name : "?", base, len);

    pthread_rwlock_wrlock(&bus_lock);
    if (bus->n >= VMM_BUS_MAX_REGIONS) {
        p2v_err_set(err, ENOSPC, "%s bus is full (%d regions), cannot add '%s'",
                    bus_name(bus), VMM_BUS_MAX_REGIONS, name ? name : "?");
        goto out;
    }
    o = bus_find_overlap_locked(bus, base, len, -1);
    if (o >= 0) {
        p2v_err_set(err, EEXIST,
                    "%s region '%s' [0x%" PRIx64 ", 0x%" PRIx64
                    ") overlaps '%s' [0x%" PRIx64 ", 0x%" PRIx64 ")",
                    bus_name(bus), name ? name : "?", base, end,
                    bus->r[o].name ? bus->r[o].name : "?", bus->r[o].base,
                    bus->r[o].base + bus->r[o].len);
        goto out;
    }
    bus->r[bus->n] = (struct vmm_bus_region){
        .base = base, .len = len, .fn = fn, .opaque = opaque, .name = name,
    };
    bus->n++;
    r = 0;
out:
    pthread_rwlock_unlock(&bus_lock);
    return r;
}

int vmm_bus_move(struct vmm_bus *bus, void *opaque, uint64_t old_base, uint64_t new_base)
{
    uint64_t end;
    int r = -1, idx = -1;

    pthread_rwlock_wrlock(&bus_lock);
    for (unsigned i = 0; i < bus->n; i++) {
        if (bus->r[i].opaque == opaque && bus->r[i].base == old_base) {
            idx = (int)i;
            break;
        }
    }
    if (idx < 0)
        goto out;
    if (P2V_ADD_OVERFLOW(new_base, bus->r[idx].len, &end))
        goto out;
    if (bus_find_overlap_locked(bus, new_base, bus->r[idx].len, idx) >= 0)
        goto out;
    bus->r[idx].base = new_base;
    r = 0;
out:
    pthread_rwlock_unlock(&bus_lock);
    return r;
}

void vmm_bus_access(struct vmm_bus *bus, uint64_t addr, uint8_t *data, unsigned len,
                    bool is_write)
{
    struct vmm_bus_region hit = { 0 };
    bool found = false;
    uint64_t count;

    if (len == 0)
        return;
    pthread_rwlock_rdlock(&bus_lock);
    for (unsigned i = 0; i < bus->n; i++) {
        const struct vmm_bus_region *reg = &bus->r[i];
        if (addr >= reg->base && addr - reg->base < reg->len) {
            /* Claimed only when the whole access lies in the region. */
            if (len <= reg->len - (addr - reg->base)) {
                hit = *reg;
                found = true;
            }
            break;
        }
    }
    pthread_rwlock_unlock(&bus_lock);

    if (found) {
        hit.fn(hit.opaque, addr - hit.base, data, len, is_write);
        return;
    }
    if (!is_write)
        memset(data, 0xff, len);
    count = __atomic_add_fetch(&bus->unclaimed, 1, __ATOMIC_RELAXED);
    if (count <= VMM_BUS_LOG_FIRST || count % VMM_BUS_LOG_EVERY == 0)
        p2v_log(P2V_LOG_DEBUG,
                "%s: unclaimed %u-byte %s at 0x%" PRIx64 " (%" PRIu64 " unclaimed so far)",
                bus_name(bus), len, is_write ? "write" : "read", addr, count);
}
