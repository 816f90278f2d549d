/* virtio-blk.c: a virtio 1.0 block device on PCI ("modern" only: device id 0x1042), over
 * the copy-on-write disk of disk.c. One memory BAR (BAR 0, 16 KiB) holds the four
 * structures that vendor-specific capabilities point the driver at (virtio 1.0 section
 * 4.1.4): the common configuration at 0x0000, the ISR status at 0x1000, the device
 * configuration (struct virtio_blk_config, section 5.2.4) at 0x2000 and the notification
 * area at 0x3000. Interrupts are INTx (no MSI-X capability): the ISR read returns the
 * pending causes, clears them and lowers the line.
 *
 * One split virtqueue (section 2.4) is served synchronously when the driver writes to the
 * notification area. Everything the guest hands us is untrusted: the ring addresses, the
 * ring indices, every descriptor (index, chain length, flags, address and length) and the
 * request header are checked before use, and guest memory is reached only through
 * vmm_mem_ptr() over whole ranges. Descriptors are copied out of guest memory once, so a
 * guest that changes them behind our back cannot get a checked value swapped. A guest that
 * breaks the ring protocol gets DEVICE_NEEDS_RESET; a malformed request gets its used
 * element (and IOERR or UNSUPP in its status byte when it has a usable one).
 *
 * A mutex serializes the device: vCPU threads reach it concurrently through the BAR.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vmm-int.h"

/* BAR 0's layout. Each structure gets its own 4 KiB, as the capabilities describe. */
#define VBLK_BAR 0
#define VBLK_BAR_SIZE 0x4000u
#define VBLK_COMMON_OFF 0x0000u
#define VBLK_ISR_OFF 0x1000u
#define VBLK_DEVCFG_OFF 0x2000u
#define VBLK_NOTIFY_OFF 0x3000u
#define VBLK_REGION_SIZE 0x1000u
#define VBLK_NOTIFY_MULT 4u /* queue_notify_off * this = the queue's notify offset */

/* PCI configuration space (PCI 3.0 section 6.1, virtio 1.0 section 4.1.2). */
#define VBLK_PCI_VENDOR 0x1af4
#define VBLK_PCI_DEVICE 0x1042 /* 0x1040 + virtio device id 2 (block) */
#define VBLK_PCI_REVISION 1    /* non-transitional devices have revision >= 1 */
#define VBLK_PCI_CLASS 0x018000u
#define VBLK_PCI_SUBSYS_ID 2
#define VBLK_PCI_STATUS_CAPS 0x10
#define VBLK_PCI_CAP_VNDR 0x09
#define VBLK_CAP_FIRST 0x40

/* Capability types (virtio 1.0 section 4.1.4). */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

/* Device status bits (section 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER 0x02
#define VIRTIO_STATUS_DRIVER_OK 0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* Feature bits (sections 5.2.3 and 6). */
#define VIRTIO_BLK_F_SIZE_MAX (1ull << 1)
#define VIRTIO_BLK_F_SEG_MAX (1ull << 2)
#define VIRTIO_BLK_F_BLK_SIZE (1ull << 6)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)
#define VIRTIO_F_VERSION_1 (1ull << 32)
#define VBLK_FEATURES                                                                     \
    (VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX |                  \
     VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH)

#define VIRTIO_MSI_NO_VECTOR 0xffff
#define VIRTIO_ISR_QUEUE 0x01
#define VIRTIO_ISR_CONFIG 0x02

/* Split virtqueue (section 2.4). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4 /* VIRTIO_RING_F_INDIRECT_DESC is not offered */
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_DESC_SIZE 16u
#define VIRTQ_USED_ELEM_SIZE 8u

/* The queue's maximum size: also the longest chain we follow (a chain cannot be longer
 * than the table without a loop). Linux uses what the device offers, up to 1024. */
#define VBLK_QUEUE_MAX 256u

/* Requests (section 5.2.6). */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VBLK_REQ_HDR_SIZE 16u
#define VBLK_SECTOR 512u
#define VBLK_ID_LEN 20u /* VIRTIO_BLK_ID_BYTES */
#define VBLK_ID "p2vkit-vmm"

/* What we advertise in the device configuration: segments of at most 1 MiB, at most 126
 * of them per request. The cap on a request's data (whatever its segments) is a little
 * above their product, so that any request a driver honouring them sends is served while
 * one request cannot keep a vCPU in the device for long. */
#define VBLK_SIZE_MAX (1u << 20)
#define VBLK_SEG_MAX 126u
#define VBLK_REQ_DATA_MAX (128ull << 20)

/* struct virtio_blk_config (section 5.2.4): the fields up to write_zeroes_may_unmap. */
#define VBLK_CFG_SIZE 60u
#define VBLK_CFG_CAPACITY 0
#define VBLK_CFG_SIZE_MAX 8
#define VBLK_CFG_SEG_MAX 12
#define VBLK_CFG_BLK_SIZE 20

/* The common configuration's fields (section 4.1.4.3). */
enum {
    CC_DFSELECT = 0x00,
    CC_DF = 0x04,
    CC_GFSELECT = 0x08,
    CC_GF = 0x0c,
    CC_MSIX = 0x10,
    CC_NUMQ = 0x12,
    CC_STATUS = 0x14,
    CC_CFGGEN = 0x15,
    CC_Q_SELECT = 0x16,
    CC_Q_SIZE = 0x18,
    CC_Q_MSIX = 0x1a,
    CC_Q_ENABLE = 0x1c,
    CC_Q_NOFF = 0x1e,
    CC_Q_DESC = 0x20,
    CC_Q_AVAIL = 0x28,
    CC_Q_USED = 0x30,
    CC_END = 0x38,
};

struct vblk_queue {
    uint16_t size; /* a power of two, <= VBLK_QUEUE_MAX */
    bool enabled;
    uint64_t desc, avail, used;
    uint16_t last_avail; /* the next avail ring entry to take */
    uint16_t used_idx;   /* our copy of used->idx */
};

/* One descriptor of the chain being served, copied and checked. */
struct vblk_seg {
    uint8_t *p;   /* host pointer to the whole buffer */
    uint32_t len;
    bool writable;
};

struct vmm_virtio_blk {
    struct vmm_pci_dev pci;
    pthread_mutex_t lock;
    struct vmm_disk *disk;
    struct vmm_mem mem;
    struct vmm_irq irq;
    uint64_t capacity; /* in 512-byte sectors */
    uint8_t config[VBLK_CFG_SIZE];
    uint32_t dfselect, gfselect;
    uint64_t guest_features;
    uint8_t status, isr;
    bool irq_level;
    uint16_t queue_select;
    struct vblk_queue q;
    struct vblk_seg segs[VBLK_QUEUE_MAX];
    unsigned nsegs;
    struct vmm_virtio_blk_stats st;
};

/* ------------------------------------------------------------------- interrupts */

static void vblk_irq_raise_locked(struct vmm_virtio_blk *b, uint8_t cause)
{
    b->isr |= cause;
    if (!b->irq_level) {
        b->irq_level = true;
        vmm_irq_set(&b->irq, b->pci.gsi, 1);
    }
}

static void vblk_irq_lower_locked(struct vmm_virtio_blk *b)
{
    if (b->irq_level) {
        b->irq_level = false;
        vmm_irq_set(&b->irq, b->pci.gsi, 0);
    }
}

/* The driver broke the ring protocol: stop serving until it resets us (section 2.1.2). */
static void vblk_broken_locked(struct vmm_virtio_blk *b, const char *why)
{
    p2v_debug("virtio-blk: device needs reset: %s", why);
    b->status |= VIRTIO_STATUS_NEEDS_RESET;
    vblk_irq_raise_locked(b, VIRTIO_ISR_CONFIG);
}

static void vblk_reset_locked(struct vmm_virtio_blk *b)
{
    b->dfselect = b->gfselect = 0;
    b->guest_features = 0;
    b->status = 0;
    b->isr = 0;
    b->queue_select = 0;
    memset(&b->q, 0, sizeof b->q);
    b->q.size = VBLK_QUEUE_MAX;
    vblk_irq_lower_locked(b);
}

/* ------------------------------------------------------------------- requests */

/* Walk the chain at @head into b->segs. Returns NULL on success, else why it is bad. */
static const char *vblk_chain_load_locked(struct vmm_virtio_blk *b, const uint8_t *desc,
                                          uint16_t head)
{
    uint16_t idx = head;
    bool seen_writable = false;
    b->nsegs = 0;
    for (;;) {
        if (idx >= b->q.size)
            return "descriptor index beyond the queue size";
        if (b->nsegs >= b->q.size)
            return "descriptor chain longer than the queue (a loop)";
        const uint8_t *d = desc + (size_t)idx * VIRTQ_DESC_SIZE;
        uint64_t addr = p2v_get_u64le(d);
        uint32_t len = p2v_get_u32le(d + 8);
        uint16_t flags = p2v_get_u16le(d + 12);
        uint16_t next = p2v_get_u16le(d + 14);
        if (flags & VIRTQ_DESC_F_INDIRECT)
            return "indirect descriptor (not negotiated)";
        uint8_t *p = vmm_mem_ptr(&b->mem, addr, len);
        if (!p)
            return "descriptor buffer outside guest memory";
        bool w = flags & VIRTQ_DESC_F_WRITE;
        /* Section 2.4.4.2: device-writable descriptors follow the readable ones. */
        if (!w && seen_writable)
            return "device-readable descriptor after a device-writable one";
        seen_writable |= w;
        b->segs[b->nsegs++] = (struct vblk_seg){p, len, w};
        if (!(flags & VIRTQ_DESC_F_NEXT))
            return NULL;
        idx = next;
    }
}

enum vblk_op { VBLK_GATHER, VBLK_SCATTER, VBLK_DISK_READ, VBLK_DISK_WRITE };

/* Move @len bytes between the chain's readable (or writable) buffers, from @skip bytes
 * into them, and @buf (gather, scatter) or the disk at @off. 0, or -1 when the buffers
 * are too short or the disk failed. */
static int vblk_xfer_locked(struct vmm_virtio_blk *b, bool writable, uint64_t skip,
                            uint64_t len, enum vblk_op op, uint8_t *buf, uint64_t off)
{
    struct p2v_err err;
    for (unsigned i = 0; i < b->nsegs && len; i++) {
        const struct vblk_seg *s = &b->segs[i];
        if (s->writable != writable)
            continue;
        if (skip >= s->len) {
            skip -= s->len;
            continue;
        }
        uint8_t *p = s->p + skip;
        size_t n = (size_t)P2V_MIN((uint64_t)s->len - skip, len);
        skip = 0;
        int r = 0;
        switch (op) {
        case VBLK_GATHER:
            memcpy(buf, p, n);
            buf += n;
            break;
        case VBLK_SCATTER:
            memcpy(p, buf, n);
            buf += n;
            break;
        case VBLK_DISK_READ:
            r = vmm_disk_read(b->disk, p, n, off, &err);
            break;
        case VBLK_DISK_WRITE:
            r = vmm_disk_write(b->disk, p, n, off, &err);
            break;
        }
        if (r < 0) {
            p2v_debug("virtio-blk: %s", err.msg);
            return -1;
        }
        off += n;
        len -= n;
    }
    return len ? -1 : 0;
}

/* Serve the request whose chain starts at @head; returns the used length (the bytes
 * written into the guest's buffers). */
static uint32_t vblk_request_locked(struct vmm_virtio_blk *b, const uint8_t *desc,
                                    uint16_t head)
{
    uint64_t rlen = 0, wlen = 0;
    uint32_t used = 0;
    uint8_t st = VIRTIO_BLK_S_IOERR;
    const char *bad = vblk_chain_load_locked(b, desc, head);
    b->st.requests++;
    if (bad) {
        p2v_debug("virtio-blk: request at descriptor %u: %s", head, bad);
        b->st.bad_requests++;
        return 0;
    }
    for (unsigned i = 0; i < b->nsegs; i++)
        *(b->segs[i].writable ? &wlen : &rlen) += b->segs[i].len;
    const struct vblk_seg *last = &b->segs[b->nsegs - 1];
    if (!last->writable || last->len == 0) {
        p2v_debug("virtio-blk: request at descriptor %u has no writable status byte", head);
        b->st.bad_requests++;
        return 0;
    }
    uint8_t *status = last->p + last->len - 1;
    uint64_t wdata = wlen - 1; /* the writable bytes before the status byte */

    uint8_t hdr[VBLK_REQ_HDR_SIZE];
    if (rlen < VBLK_REQ_HDR_SIZE ||
        vblk_xfer_locked(b, false, 0, sizeof hdr, VBLK_GATHER, hdr, 0) < 0) {
        p2v_debug("virtio-blk: request at descriptor %u: header of %llu bytes, want %u",
                  head, (unsigned long long)rlen, VBLK_REQ_HDR_SIZE);
        goto out;
    }
    uint32_t type = p2v_get_u32le(hdr);
    uint64_t sector = p2v_get_u64le(hdr + 8);
    switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
        bool in = type == VIRTIO_BLK_T_IN;
        uint64_t dlen = in ? wdata : rlen - VBLK_REQ_HDR_SIZE;
        if (dlen % VBLK_SECTOR || dlen > VBLK_REQ_DATA_MAX) {
            p2v_debug("virtio-blk: %s of %llu bytes: not a multiple of %u or over %llu",
                      in ? "read" : "write", (unsigned long long)dlen, VBLK_SECTOR,
                      (unsigned long long)VBLK_REQ_DATA_MAX);
            goto out;
        }
        if (sector > b->capacity || dlen / VBLK_SECTOR > b->capacity - sector) {
            p2v_debug("virtio-blk: %s of %llu bytes at sector %llu: beyond the capacity "
                      "(%llu sectors)",
                      in ? "read" : "write", (unsigned long long)dlen,
                      (unsigned long long)sector, (unsigned long long)b->capacity);
            goto out;
        }
        uint64_t off = sector * VBLK_SECTOR;
        if (in) {
            if (vblk_xfer_locked(b, true, 0, dlen, VBLK_DISK_READ, NULL, off) < 0)
                goto out;
            used = (uint32_t)dlen; /* <= VBLK_REQ_DATA_MAX */
            b->st.read_bytes += dlen;
        } else {
            if (vblk_xfer_locked(b, false, VBLK_REQ_HDR_SIZE, dlen, VBLK_DISK_WRITE, NULL,
                                 off) < 0)
                goto out;
            b->st.write_bytes += dlen;
        }
        st = VIRTIO_BLK_S_OK;
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        /* Writes live in the in-memory overlay: there is nothing to make durable. */
        b->st.flushes++;
        st = VIRTIO_BLK_S_OK;
        break;
    case VIRTIO_BLK_T_GET_ID: {
        uint8_t id[VBLK_ID_LEN] = {0}; /* NUL-padded, not terminated when 20 long */
        memcpy(id, VBLK_ID, sizeof VBLK_ID - 1);
        uint64_t n = P2V_MIN(wdata, (uint64_t)VBLK_ID_LEN);
        vblk_xfer_locked(b, true, 0, n, VBLK_SCATTER, id, 0);
        used = (uint32_t)n;
        st = VIRTIO_BLK_S_OK;
        break;
    }
    default:
        p2v_debug("virtio-blk: request type %u is not supported", type);
        st = VIRTIO_BLK_S_UNSUPP;
        break;
    }
out:
    if (st != VIRTIO_BLK_S_OK)
        b->st.bad_requests++;
    *status = st;
    return used + 1;
}

/* Serve what the driver made available on the queue (section 2.4.7 and 3.2.2). */
static void vblk_queue_notify_locked(struct vmm_virtio_blk *b)
{
    struct vblk_queue *q = &b->q;
    if (!(b->status & VIRTIO_STATUS_DRIVER_OK) || (b->status & VIRTIO_STATUS_NEEDS_RESET) ||
        !q->enabled)
        return;
    uint64_t n = q->size;
    uint8_t *desc = vmm_mem_ptr(&b->mem, q->desc, n * VIRTQ_DESC_SIZE);
    uint8_t *avail = vmm_mem_ptr(&b->mem, q->avail, 6 + 2 * n);
    uint8_t *used = vmm_mem_ptr(&b->mem, q->used, 6 + VIRTQ_USED_ELEM_SIZE * n);
    /* Section 2.4: alignments 16, 2 and 4. The index words are accessed atomically, so
     * they must be naturally aligned. */
    if (!desc || !avail || !used || q->desc % 16 || q->avail % 2 || q->used % 4) {
        char why[160];
        snprintf(why, sizeof why,
                 "queue 0's rings (desc 0x%llx, avail 0x%llx, used 0x%llx, size %u) are "
                 "outside guest memory or misaligned",
                 (unsigned long long)q->desc, (unsigned long long)q->avail,
                 (unsigned long long)q->used, q->size);
        vblk_broken_locked(b, why);
        return;
    }
    /* Acquire: the ring entries and descriptors the driver wrote before publishing idx. */
    uint16_t avail_idx = __atomic_load_n((uint16_t *)(avail + 2), __ATOMIC_ACQUIRE);
    uint16_t pending = (uint16_t)(avail_idx - q->last_avail);
    if (pending > q->size) {
        char why[96];
        snprintf(why, sizeof why, "avail idx %u is %u entries ahead of %u (queue size %u)",
                 avail_idx, pending, q->last_avail, q->size);
        vblk_broken_locked(b, why);
        return;
    }
    if (!pending)
        return;
    for (; q->last_avail != avail_idx; q->last_avail++) {
        uint16_t head = p2v_get_u16le(avail + 4 + 2 * (q->last_avail & (q->size - 1)));
        uint32_t len = vblk_request_locked(b, desc, head);
        uint8_t *e = used + 4 + VIRTQ_USED_ELEM_SIZE * (q->used_idx & (q->size - 1));
        p2v_put_u32le(e, head);
        p2v_put_u32le(e + 4, len);
        q->used_idx++;
        /* Release: the element (and the data) are visible before the new idx. */
        __atomic_store_n((uint16_t *)(used + 2), q->used_idx, __ATOMIC_RELEASE);
    }
    /* Order the idx store before reading the driver's suppression flag (section 2.4.7.2). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t flags = __atomic_load_n((uint16_t *)avail, __ATOMIC_RELAXED);
    if (!(flags & VIRTQ_AVAIL_F_NO_INTERRUPT))
        vblk_irq_raise_locked(b, VIRTIO_ISR_QUEUE);
}

/* ------------------------------------------------------------------- the BAR */

static uint64_t vblk_le(const uint8_t *data, unsigned len)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < len && i < 8; i++)
        v |= (uint64_t)data[i] << (8 * i);
    return v;
}

static void vblk_put_le(uint8_t *data, unsigned len, uint64_t v)
{
    for (unsigned i = 0; i < len && i < 8; i++)
        data[i] = (uint8_t)(v >> (8 * i));
}

/* The width of the common configuration field at @off (4 for each half of a 64-bit
 * field, 8 for a 64-bit field as a whole is checked separately); 0 for no field. */
static unsigned vblk_common_width(uint64_t off)
{
    switch (off) {
    case CC_DFSELECT:
    case CC_DF:
    case CC_GFSELECT:
    case CC_GF:
        return 4;
    case CC_MSIX:
    case CC_NUMQ:
    case CC_Q_SELECT:
    case CC_Q_SIZE:
    case CC_Q_MSIX:
    case CC_Q_ENABLE:
    case CC_Q_NOFF:
        return 2;
    case CC_STATUS:
    case CC_CFGGEN:
        return 1;
    default:
        return off >= CC_Q_DESC && off < CC_END && off % 4 == 0 ? 4 : 0;
    }
}

/* Word @sel (0: bits 0-31, 1: bits 32-63, others 0) of a feature set. */
static uint64_t vblk_feature_word(uint64_t features, uint32_t sel)
{
    return sel < 2 ? (features >> (32 * sel)) & 0xffffffffull : 0;
}

/* The 64-bit queue address at common config offset @base (CC_Q_DESC, ...). */
static uint64_t *vblk_queue_addr(struct vmm_virtio_blk *b, uint64_t base)
{
    return base == CC_Q_DESC ? &b->q.desc : base == CC_Q_AVAIL ? &b->q.avail : &b->q.used;
}

static void vblk_status_write_locked(struct vmm_virtio_blk *b, uint8_t v)
{
    if (v == 0) {
        vblk_reset_locked(b);
        return;
    }
    /* Section 2.2.2: FEATURES_OK stays clear when the features are not acceptable. */
    if ((v & VIRTIO_STATUS_FEATURES_OK) && !(b->status & VIRTIO_STATUS_FEATURES_OK)) {
        if (!(b->guest_features & VIRTIO_F_VERSION_1) ||
            (b->guest_features & ~VBLK_FEATURES)) {
            p2v_debug("virtio-blk: refusing features 0x%llx (offered 0x%llx)",
                      (unsigned long long)b->guest_features,
                      (unsigned long long)VBLK_FEATURES);
            v &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
        }
    }
    b->status = (uint8_t)(v | (b->status & VIRTIO_STATUS_NEEDS_RESET));
}

static void vblk_common_access_locked(struct vmm_virtio_blk *b, uint64_t off, uint8_t *data,
                                      unsigned len, bool is_write)
{
    bool q0 = b->queue_select == 0;
    uint64_t v = is_write ? vblk_le(data, len) : 0;
    bool whole64 = len == 8 && (off == CC_Q_DESC || off == CC_Q_AVAIL || off == CC_Q_USED);
    if (!whole64 && vblk_common_width(off) != len) {
        p2v_debug("virtio-blk: %u-byte %s at common config offset 0x%llx ignored", len,
                  is_write ? "write" : "read", (unsigned long long)off);
        if (!is_write)
            memset(data, 0, len);
        return;
    }
    if (off >= CC_Q_DESC) {
        uint64_t base = off & ~7ull;
        uint64_t *a = vblk_queue_addr(b, base);
        unsigned shift = (off & 4) ? 32 : 0;
        uint64_t mask = len == 8 ? ~0ull : 0xffffffffull << shift;
        if (!is_write) {
            vblk_put_le(data, len, q0 ? (*a & mask) >> shift : 0);
        } else if (q0 && !b->q.enabled) {
            *a = (*a & ~mask) | ((v << shift) & mask);
        }
        return;
    }
    if (!is_write) {
        switch (off) {
        case CC_DFSELECT: v = b->dfselect; break;
        case CC_DF: v = vblk_feature_word(VBLK_FEATURES, b->dfselect); break;
        case CC_GFSELECT: v = b->gfselect; break;
        case CC_GF: v = vblk_feature_word(b->guest_features, b->gfselect); break;
        case CC_MSIX: v = VIRTIO_MSI_NO_VECTOR; break;
        case CC_NUMQ: v = 1; break;
        case CC_STATUS: v = b->status; break;
        case CC_CFGGEN: v = 0; break; /* the device configuration never changes */
        case CC_Q_SELECT: v = b->queue_select; break;
        case CC_Q_SIZE: v = q0 ? b->q.size : 0; break;
        case CC_Q_MSIX: v = VIRTIO_MSI_NO_VECTOR; break;
        case CC_Q_ENABLE: v = q0 ? b->q.enabled : 0; break;
        case CC_Q_NOFF: v = 0; break;
        }
        vblk_put_le(data, len, v);
        return;
    }
    switch (off) {
    case CC_DFSELECT: b->dfselect = (uint32_t)v; break;
    case CC_GFSELECT: b->gfselect = (uint32_t)v; break;
    case CC_GF:
        if (b->gfselect < 2 && !(b->status & VIRTIO_STATUS_FEATURES_OK)) {
            unsigned sh = 32 * b->gfselect;
            b->guest_features = (b->guest_features & ~(0xffffffffull << sh)) | (v << sh);
        }
        break;
    case CC_STATUS: vblk_status_write_locked(b, (uint8_t)v); break;
    case CC_Q_SELECT: b->queue_select = (uint16_t)v; break;
    case CC_Q_SIZE:
        /* Section 4.1.4.3.2: the driver may pick a smaller size; a power of two for the
         * split ring (section 2.4). */
        if (q0 && !b->q.enabled && p2v_is_pow2(v) && v <= VBLK_QUEUE_MAX)
            b->q.size = (uint16_t)v;
        else
            p2v_debug("virtio-blk: queue size %llu refused", (unsigned long long)v);
        break;
    case CC_Q_ENABLE:
        /* The rings are checked at each notification, as the guest could not be trusted
         * to leave them alone anyway; 0 is not a valid write (section 4.1.4.3.2). */
        if (q0 && v == 1)
            b->q.enabled = true;
        break;
    default: /* msix_config, queue_msix_vector (no MSI-X) and read-only fields */
        break;
    }
}

static void vblk_bar_access(void *opaque, int bar, uint64_t off, uint8_t *data, unsigned len,
                            bool is_write)
{
    struct vmm_virtio_blk *b = opaque;
    /* Accesses that straddle two of the BAR's structures are nobody's. */
    if (bar != VBLK_BAR || len == 0 || len > 8 || off >= VBLK_BAR_SIZE ||
        len > VBLK_BAR_SIZE - off ||
        off / VBLK_REGION_SIZE != (off + len - 1) / VBLK_REGION_SIZE) {
        if (!is_write)
            memset(data, 0xff, len > 8 ? 8 : len);
        return;
    }
    uint64_t region = off & ~(uint64_t)(VBLK_REGION_SIZE - 1);
    uint64_t roff = off - region;
    pthread_mutex_lock(&b->lock);
    switch (region) {
    case VBLK_COMMON_OFF:
        if (roff < CC_END)
            vblk_common_access_locked(b, roff, data, len, is_write);
        else if (!is_write)
            memset(data, 0, len);
        break;
    case VBLK_ISR_OFF:
        if (is_write)
            break;
        memset(data, 0, len);
        if (roff == 0) {
            /* Section 4.1.4.5: reading the ISR clears it and deasserts the interrupt. */
            data[0] = b->isr;
            b->isr = 0;
            vblk_irq_lower_locked(b);
        }
        break;
    case VBLK_DEVCFG_OFF:
        /* Read-only: writeback is writable only with VIRTIO_BLK_F_CONFIG_WCE. */
        if (!is_write)
            for (unsigned i = 0; i < len; i++)
                data[i] = roff + i < VBLK_CFG_SIZE ? b->config[roff + i] : 0;
        break;
    case VBLK_NOTIFY_OFF:
        if (is_write) {
            b->st.notifies++;
            /* The value written is the queue's index (section 4.1.5.2); ours is 0. */
            if (roff < VBLK_NOTIFY_MULT && len >= 2 && vblk_le(data, 2) == 0)
                vblk_queue_notify_locked(b);
        } else {
            memset(data, 0, len);
        }
        break;
    }
    pthread_mutex_unlock(&b->lock);
}

/* ------------------------------------------------------------------- setup */

/* Write a virtio capability (struct virtio_pci_cap, section 4.1.4) at @at. */
static void vblk_cap_put(uint8_t *cfg, uint8_t at, uint8_t next, uint8_t len, uint8_t type,
                         uint32_t offset, uint32_t length)
{
    cfg[at] = VBLK_PCI_CAP_VNDR;
    cfg[at + 1] = next;
    cfg[at + 2] = len;
    cfg[at + 3] = type;
    cfg[at + 4] = VBLK_BAR;
    p2v_put_u32le(cfg + at + 8, offset);
    p2v_put_u32le(cfg + at + 12, length);
}

static void vblk_pci_setup(struct vmm_virtio_blk *b)
{
    uint8_t *cfg = b->pci.cfg;
    p2v_put_u16le(cfg + 0x00, VBLK_PCI_VENDOR);
    p2v_put_u16le(cfg + 0x02, VBLK_PCI_DEVICE);
    p2v_put_u16le(cfg + 0x06, VBLK_PCI_STATUS_CAPS);
    cfg[0x08] = VBLK_PCI_REVISION;
    cfg[0x09] = VBLK_PCI_CLASS & 0xff;
    cfg[0x0a] = (VBLK_PCI_CLASS >> 8) & 0xff;
    cfg[0x0b] = (VBLK_PCI_CLASS >> 16) & 0xff;
    cfg[0x0e] = 0x00; /* header type 0 */
    p2v_put_u16le(cfg + 0x2c, VBLK_PCI_VENDOR);
    p2v_put_u16le(cfg + 0x2e, VBLK_PCI_SUBSYS_ID);
    cfg[0x34] = VBLK_CAP_FIRST;
    /* common 0x40 (16 bytes), notify 0x50 (20), ISR 0x64 (16), device 0x74 (16) */
    vblk_cap_put(cfg, 0x40, 0x50, 16, VIRTIO_PCI_CAP_COMMON_CFG, VBLK_COMMON_OFF,
                 VBLK_REGION_SIZE);
    vblk_cap_put(cfg, 0x50, 0x64, 20, VIRTIO_PCI_CAP_NOTIFY_CFG, VBLK_NOTIFY_OFF,
                 VBLK_REGION_SIZE);
    p2v_put_u32le(cfg + 0x60, VBLK_NOTIFY_MULT);
    vblk_cap_put(cfg, 0x64, 0x74, 16, VIRTIO_PCI_CAP_ISR_CFG, VBLK_ISR_OFF, VBLK_REGION_SIZE);
    vblk_cap_put(cfg, 0x74, 0x00, 16, VIRTIO_PCI_CAP_DEVICE_CFG, VBLK_DEVCFG_OFF,
                 VBLK_REGION_SIZE);
    /* The guest may set memory space and bus master (command), and the interrupt line. */
    b->pci.cfg_wmask[0x04] = 0x06;
    b->pci.cfg_wmask[0x3c] = 0xff;
    b->pci.bar_size[VBLK_BAR] = VBLK_BAR_SIZE;
    b->pci.bar_access = vblk_bar_access;
    b->pci.opaque = b;
}

struct vmm_virtio_blk *vmm_virtio_blk_new(struct vmm_disk *disk, const struct vmm_mem *mem,
                                          const struct vmm_irq *irq, struct p2v_err *err)
{
    struct vmm_virtio_blk *b = calloc(1, sizeof *b);
    if (!b) {
        p2v_err_set(err, ENOMEM, "out of memory for the virtio-blk device");
        return NULL;
    }
    int r = pthread_mutex_init(&b->lock, NULL);
    if (r != 0) {
        free(b);
        p2v_err_set(err, r, "cannot initialise the virtio-blk device's lock");
        return NULL;
    }
    b->disk = disk;
    b->mem = *mem;
    if (irq)
        b->irq = *irq;
    b->capacity = vmm_disk_size(disk) / VBLK_SECTOR;
    p2v_put_u64le(b->config + VBLK_CFG_CAPACITY, b->capacity);
    p2v_put_u32le(b->config + VBLK_CFG_SIZE_MAX, VBLK_SIZE_MAX);
    p2v_put_u32le(b->config + VBLK_CFG_SEG_MAX, VBLK_SEG_MAX);
    p2v_put_u32le(b->config + VBLK_CFG_BLK_SIZE, VBLK_SECTOR);
    vblk_pci_setup(b);
    vblk_reset_locked(b);
    return b;
}

struct vmm_pci_dev *vmm_virtio_blk_pci(struct vmm_virtio_blk *b)
{
    return &b->pci;
}

void vmm_virtio_blk_stats(const struct vmm_virtio_blk *b, struct vmm_virtio_blk_stats *st)
{
    struct vmm_virtio_blk *mb = (struct vmm_virtio_blk *)b; /* the lock only */
    pthread_mutex_lock(&mb->lock);
    *st = b->st;
    pthread_mutex_unlock(&mb->lock);
}

void vmm_virtio_blk_free(struct vmm_virtio_blk *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b);
}
