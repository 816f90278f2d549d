/* uart.c: a 16550A UART (the PC's COM1) as Linux's 8250 driver expects it.
 *
 * Transmission is instantaneous: a byte written to THR goes to out() (or, in loopback mode,
 * back into the receive queue) and the transmitter is empty again at once, so LSR always
 * shows THRE|TEMT and the "THR empty" interrupt is pending again after every THR write.
 * That interrupt is also raised when IER.THRI is switched on, and cleared by reading IIR
 * while IIR reports it: the 8250 driver's start-up tests (UART_BUG_THRE, UART_BUG_TXEN) and
 * its interrupt-driven transmit rely on exactly that.
 *
 * Received bytes (vmm_uart_input, from the console thread) wait in a queue of
 * UART_RX_QUEUE bytes; what does not fit is dropped and counted.
 *
 * The interrupt line is the pending interrupts gated by MCR.OUT2 (a PC board's IRQ buffer);
 * in loopback mode the modem outputs, OUT2 with them, are inactive, so no IRQ is driven.
 * The line is set only when its level changes. Every register access, the input and the
 * line update happen under the UART's mutex.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vmm-int.h"

/* Register offsets. */
enum {
    UART_RBR_THR = 0, /* DLL when LCR.DLAB */
    UART_IER = 1,     /* DLM when LCR.DLAB */
    UART_IIR_FCR = 2,
    UART_LCR = 3,
    UART_MCR = 4,
    UART_LSR = 5,
    UART_MSR = 6,
    UART_SCR = 7,
    UART_NREGS = 8,
};

#define UART_IER_RDI 0x01  /* receive data available */
#define UART_IER_THRI 0x02 /* transmitter holding register empty */
#define UART_IER_MASK 0x0f /* 16550A: bits 4-7 read as 0 */

#define UART_IIR_NO_INT 0x01
#define UART_IIR_THRI 0x02
#define UART_IIR_RDI 0x04
#define UART_IIR_FIFO_ON 0xc0

#define UART_FCR_ENABLE 0x01
#define UART_FCR_CLEAR_RX 0x02

#define UART_LCR_DLAB 0x80

#define UART_MCR_DTR 0x01
#define UART_MCR_RTS 0x02
#define UART_MCR_OUT1 0x04
#define UART_MCR_OUT2 0x08
#define UART_MCR_LOOP 0x10
#define UART_MCR_MASK 0x1f

#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20
#define UART_LSR_TEMT 0x40

#define UART_MSR_CTS 0x10
#define UART_MSR_DSR 0x20
#define UART_MSR_RI 0x40
#define UART_MSR_DCD 0x80

/* Input waiting for the guest: a console line or a pasted command fits; a guest that does
 * not read its UART cannot make us hold more. */
#define UART_RX_QUEUE 1024

#define UART_DIVISOR_RESET 12 /* 9600 baud */

struct vmm_uart {
    pthread_mutex_t lock;
    uint16_t base;
    unsigned gsi;
    struct vmm_irq irq;
    void (*out)(void *opaque, const uint8_t *p, size_t n);
    void *out_opaque;

    uint8_t ier, lcr, mcr, scr, dll, dlm;
    bool fifo_enabled;
    bool thri_pending; /* the THR-empty interrupt is pending */
    int irq_level;     /* last level sent to the line */

    uint8_t rx[UART_RX_QUEUE];
    size_t rx_head, rx_count;
    uint64_t rx_dropped;
};

/* The IIR value for the pending interrupts, highest priority first; no side effects. */
static uint8_t uart_iir_locked(const struct vmm_uart *u)
{
    uint8_t iir = UART_IIR_NO_INT;

    if ((u->ier & UART_IER_RDI) && u->rx_count > 0)
        iir = UART_IIR_RDI;
    else if ((u->ier & UART_IER_THRI) && u->thri_pending)
        iir = UART_IIR_THRI;
    if (u->fifo_enabled)
        iir |= UART_IIR_FIFO_ON;
    return iir;
}

static void uart_update_irq_locked(struct vmm_uart *u)
{
    int level = !(uart_iir_locked(u) & UART_IIR_NO_INT) && (u->mcr & UART_MCR_OUT2) &&
                !(u->mcr & UART_MCR_LOOP);

    if (level != u->irq_level) {
        u->irq_level = level;
        vmm_irq_set(&u->irq, u->gsi, level);
    }
}

static void uart_rx_push_locked(struct vmm_uart *u, uint8_t b)
{
    if (u->rx_count >= UART_RX_QUEUE) {
        u->rx_dropped++;
        return;
    }
    u->rx[(u->rx_head + u->rx_count) % UART_RX_QUEUE] = b;
    u->rx_count++;
}

static uint8_t uart_rx_pop_locked(struct vmm_uart *u)
{
    uint8_t b;

    if (u->rx_count == 0)
        return 0;
    b = u->rx[u->rx_head];
    u->rx_head = (u->rx_head + 1) % UART_RX_QUEUE;
    u->rx_count--;
    return b;
}

static uint8_t uart_msr_locked(const struct vmm_uart *u)
{
    uint8_t msr = 0;

    if (!(u->mcr & UART_MCR_LOOP))
        return UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS; /* a terminal is attached */
    /* Loopback: the modem outputs feed the modem inputs. */
    if (u->mcr & UART_MCR_RTS)
        msr |= UART_MSR_CTS;
    if (u->mcr & UART_MCR_DTR)
        msr |= UART_MSR_DSR;
    if (u->mcr & UART_MCR_OUT1)
        msr |= UART_MSR_RI;
    if (u->mcr & UART_MCR_OUT2)
        msr |= UART_MSR_DCD;
    return msr;
}

static uint8_t uart_read_locked(struct vmm_uart *u, unsigned reg)
{
    uint8_t v = 0xff;

    switch (reg) {
    case UART_RBR_THR:
        v = (u->lcr & UART_LCR_DLAB) ? u->dll : uart_rx_pop_locked(u);
        break;
    case UART_IER:
        v = (u->lcr & UART_LCR_DLAB) ? u->dlm : u->ier;
        break;
    case UART_IIR_FCR:
        v = uart_iir_locked(u);
        if ((v & 0x0f) == UART_IIR_THRI)
            u->thri_pending = false;
        break;
    case UART_LCR:
        v = u->lcr;
        break;
    case UART_MCR:
        v = u->mcr;
        break;
    case UART_LSR:
        v = UART_LSR_THRE | UART_LSR_TEMT | (u->rx_count > 0 ? UART_LSR_DR : 0);
        break;
    case UART_MSR:
        v = uart_msr_locked(u);
        break;
    case UART_SCR:
        v = u->scr;
        break;
    }
    return v;
}

static void uart_write_locked(struct vmm_uart *u, unsigned reg, uint8_t v)
{
    switch (reg) {
    case UART_RBR_THR:
        if (u->lcr & UART_LCR_DLAB) {
            u->dll = v;
            break;
        }
        if (u->mcr & UART_MCR_LOOP)
            uart_rx_push_locked(u, v);
        else if (u->out)
            u->out(u->out_opaque, &v, 1);
        u->thri_pending = true; /* sent at once: THR is empty again */
        break;
    case UART_IER:
        if (u->lcr & UART_LCR_DLAB) {
            u->dlm = v;
            break;
        }
        v &= UART_IER_MASK;
        /* Enabling THRI with an empty THR raises the interrupt (8250 semantics). */
        if ((v & UART_IER_THRI) && !(u->ier & UART_IER_THRI))
            u->thri_pending = true;
        u->ier = v;
        break;
    case UART_IIR_FCR:
        u->fifo_enabled = (v & UART_FCR_ENABLE) != 0;
        if (v & UART_FCR_CLEAR_RX) {
            u->rx_head = 0;
            u->rx_count = 0;
        }
        break;
    case UART_LCR:
        u->lcr = v;
        break;
    case UART_MCR:
        u->mcr = v & UART_MCR_MASK;
        break;
    case UART_LSR:
    case UART_MSR:
        break; /* read-only */
    case UART_SCR:
        u->scr = v;
        break;
    }
}

/* Registers are bytes; a wider access is taken byte by byte, as consecutive ports. */
static void uart_io(void *opaque, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
    struct vmm_uart *u = opaque;

    pthread_mutex_lock(&u->lock);
    for (unsigned i = 0; i < len; i++) {
        uint64_t reg = off + i;
        if (reg >= UART_NREGS) {
            if (!is_write)
                data[i] = 0xff;
            continue;
        }
        if (is_write)
            uart_write_locked(u, (unsigned)reg, data[i]);
        else
            data[i] = uart_read_locked(u, (unsigned)reg);
    }
    uart_update_irq_locked(u);
    pthread_mutex_unlock(&u->lock);
}

struct vmm_uart *vmm_uart_new(uint16_t base, unsigned gsi, const struct vmm_irq *irq,
                              void (*out)(void *opaque, const uint8_t *p, size_t n),
                              void *out_opaque, struct p2v_err *err)
{
    struct vmm_uart *u = NULL;

    if ((uint32_t)base + UART_NREGS > 0x10000u) {
        p2v_err_set(err, EINVAL, "uart base port 0x%x leaves no room for its %d registers",
                    base, UART_NREGS);
        goto out;
    }
    if (gsi >= VMM_GSI_COUNT) {
        p2v_err_set(err, EINVAL, "uart gsi %u is not below %d", gsi, VMM_GSI_COUNT);
        goto out;
    }
    u = calloc(1, sizeof(*u));
    if (!u) {
        p2v_err_errno(err, "cannot allocate the uart");
        goto out;
    }
    if ((errno = pthread_mutex_init(&u->lock, NULL)) != 0) {
        p2v_err_errno(err, "cannot create the uart's mutex");
        free(u);
        u = NULL;
        goto out;
    }
    u->base = base;
    u->gsi = gsi;
    if (irq)
        u->irq = *irq;
    u->out = out;
    u->out_opaque = out_opaque;
    u->dll = UART_DIVISOR_RESET;
out:
    return u;
}

int vmm_uart_attach(struct vmm_uart *u, struct vmm_bus *pio, struct p2v_err *err)
{
    return vmm_bus_register(pio, u->base, UART_NREGS, uart_io, u, "uart", err);
}

void vmm_uart_input(struct vmm_uart *u, const uint8_t *p, size_t n)
{
    uint64_t dropped;

    if (!u || n == 0)
        return;
    pthread_mutex_lock(&u->lock);
    dropped = u->rx_dropped;
    for (size_t i = 0; i < n; i++)
        uart_rx_push_locked(u, p[i]);
    dropped = u->rx_dropped - dropped;
    uart_update_irq_locked(u);
    pthread_mutex_unlock(&u->lock);
    if (dropped)
        p2v_log(P2V_LOG_DEBUG, "uart: receive queue full, %llu input bytes dropped",
                (unsigned long long)dropped);
}

void vmm_uart_free(struct vmm_uart *u)
{
    if (!u)
        return;
    pthread_mutex_destroy(&u->lock);
    free(u);
}
